"""The optimiser every task shares: AdamW (Loshchilov & Hutter, 2019) without weight decay on
biases, norms, embeddings-like tables and tokens, and a per-step linear-warmup + cosine
schedule (the ViT/CLIP/Whisper training recipes all use this shape).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

NoDecay = Callable[[str, nn.Parameter], bool]


def default_no_decay(name: str, p: nn.Parameter) -> bool:
    """1-D tensors (biases, norm gains, logit scale) and learned tokens/positions."""
    return p.ndim <= 1 or name.endswith(("cls_token", "pos_embed", "pos_embed.weight"))


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier: linear from ~0 to 1 over `warmup` steps, then cosine to 0 at `total`."""

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - warmup, 1))))

    return schedule


def adamw_warmup_cosine(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    warmup_ratio: float,
    total_steps: int,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    no_decay: NoDecay = default_no_decay,
    lr_scale: Callable[[str], float] | None = None,
) -> dict[str, Any]:
    """`configure_optimizers` output for Lightning: AdamW + warmup/cosine stepped per batch.
    `lr_scale(name)` multiplies a parameter's learning rate (e.g. a pretrained encoder's vs a new head's)."""
    # (no decay, lr scale) -> parameters; the two unscaled groups first, as before, so that
    # optimiser states in older checkpoints still line up with their parameters
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {(False, 1.0): [], (True, 1.0): []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((no_decay(name, p), lr_scale(name) if lr_scale else 1.0), []).append(p)
    # Fused on CPU, where the default per-tensor loop is ~15x slower (a 49k-row token embedding
    # dominated a small CLIP's step). GPUs keep the default (foreach), which also leaves
    # Lightning's AMP gradient clipping usable.
    fused = all(p.device.type == "cpu" for ps in groups.values() for p in ps)
    opt = torch.optim.AdamW([{"params": ps, "weight_decay": 0.0 if skip_decay else weight_decay, "lr": lr * scale}
                             for (skip_decay, scale), ps in groups.items()], lr=lr, betas=betas, eps=eps,
                            fused=fused or None)
    total = max(int(total_steps), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(int(warmup_ratio * total), total))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
