"""GPT-2-style decoder-only language model (Radford et al., "Language Models are Unsupervised
Multitask Learners", 2019), laid out like karpathy's nanoGPT: token + learned positions, a
pre-norm causal `Decoder` with a final norm, and an LM head tied to the token embedding.
Numerically identical to transformers' `GPT2LMHeadModel` (import: `mmkit.weights.from_hf`).
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mmkit.core import Decoder, KVCache, LearnedPositions, output_logits
from mmkit.core.blocks import layer_norm
from mmkit.core.init import init_normal_
from mmkit.core.mlp import Mlp
from mmkit.weights.native import PretrainedMixin


class GPT(PretrainedMixin, nn.Module):
    """Decoder-only LM following the decoding contract `forward(tokens, context, cache) -> logits`.

    Args:
        vocab_size: token ids are in [0, vocab_size) (GPT-2: 50257).
        max_len: longest sequence, prompt + generated (GPT-2: 1024).
        dim, depth, num_heads, mlp_ratio, qkv_bias: transformer sizes (timm's names;
            GPT-2 small is 768 / 12 / 12 / 4.0 / True).
        dropout: dropout on the summed embeddings (GPT-2's embd_pdrop).
        attn_dropout: dropout on the attention probabilities (GPT-2's attn_pdrop).
        resid_dropout: dropout on each residual branch's output, after the attention's and the MLP's output
            projections (GPT-2's resid_pdrop). The three are 0.1 in GPT-2's config, which `from_hf` reads:
            an imported model fine-tunes as transformers' does.
        norm_eps: LayerNorm epsilon (GPT-2: 1e-5).
        drop_path_rate: stochastic depth for training (not in GPT-2; 0 keeps it exact).
    """

    def __init__(
        self,
        vocab_size: int = 50257,
        max_len: int = 1024,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
        drop_path_rate: float = 0.0,
        attn_dropout: float = 0.0,
        resid_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.vocab_size, self.max_len = vocab_size, max_len
        self.tok_embed = nn.Embedding(vocab_size, dim)
        self.head: nn.Module | None = None  # None: tied to tok_embed (core.heads.output_logits)
        self.pos_embed = LearnedPositions(max_len, dim)
        self.drop = nn.Dropout(dropout)
        # GPT-2 was trained with the tanh approximation of GELU ("gelu_new" in transformers).
        self.decoder = Decoder(dim, depth, num_heads, mlp_ratio, qkv_bias, norm_layer=layer_norm(norm_eps),
                               act_layer=partial(nn.GELU, approximate="tanh"), final_norm=True,
                               drop_path_rate=drop_path_rate, mlp_layer=partial(Mlp, drop=(0.0, resid_dropout)))
        for blk in self.decoder.blocks:  # the blocks build Attention without dropout
            blk.attn.attn_drop = attn_dropout
            blk.attn.proj_drop.p = resid_dropout
        self.apply(init_normal_)
        # GPT-2 §2.3: residual projections scaled by 1/sqrt(N) with N = 2 residual branches per block.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.fc2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * depth))

    def forward(self, tokens: Tensor, context: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """
        Args:
            tokens: (B, T) int64 ids; with a `cache`, only the tokens after the cached prefix.
            context: must be None (decoder-only; the argument exists for the decoding contract).
            cache: KV cache for incremental decoding, updated in place.

        Returns:
            (B, T, vocab_size) logits.
        """
        if context is not None:
            raise ValueError("GPT is decoder-only and takes no context")
        offset = cache.length if cache is not None else 0
        # left-padded prompts of different lengths (`KVCache.padding`): each row positioned and attending as alone
        padding, mask = (cache.padding, cache.padding_mask(tokens.shape[1])) if cache is not None else (None, None)
        x = self.tok_embed(tokens) + self.pos_embed(tokens.shape[1], offset, padding)  # (B, T, dim)
        x = self.decoder(self.drop(x) if self.training else x, mask=mask, cache=cache)
        return output_logits(x, self.tok_embed, self.head)  # (B, T, vocab_size)

    @classmethod
    def from_hf(cls, model_or_dir: nn.Module | str | Path) -> "GPT":
        """Import a transformers `GPT2LMHeadModel` instance, or a local Hugging Face checkpoint
        directory (config.json + model.safetensors / pytorch_model.bin); never the network."""
        from mmkit.weights.from_hf import gpt2_from_hf

        return cls.from_converted(gpt2_from_hf(model_or_dir))
