"""The N(0, 0.02) initialisation GPT-2, BERT, Whisper and DALL·E-style models share (GPT-2's
choice, kept by nanoGPT, transformers and DALLE-pytorch): normal weights, zero biases, unit norms."""
from __future__ import annotations

from torch import nn

from mmkit.core.norms import LayerNorm


def init_normal_(module: nn.Module, std: float = 0.02,
                 weighted: tuple[type[nn.Module], ...] = (nn.Linear, nn.Embedding)) -> None:
    """Initialise one module in place (use with `model.apply`): `weighted` layers get N(0, std)
    weights and zero biases (an embedding's padding row zero, as BERT's), LayerNorms unit
    weights and zero biases; other modules are left as they are."""
    if isinstance(module, weighted):
        nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
