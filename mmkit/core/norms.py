"""Normalisation layers: LayerNorm (Ba et al., 2016) and RMSNorm (Zhang & Sennrich, 2019).

Both are thin wrappers over torch's fused kernels; the subclasses exist so that configs and
blocks can name them and so that eps defaults are explicit at the call site.
"""
from __future__ import annotations

from torch import nn


class LayerNorm(nn.LayerNorm):
    """LayerNorm with parameter names `weight`/`bias` (timm, open_clip, HF all agree)."""

    def __init__(self, dim: int, eps: float = 1e-6, bias: bool = True) -> None:
        super().__init__(dim, eps=eps, bias=bias)


class RMSNorm(nn.RMSNorm):
    """Root-mean-square norm without mean centring (LLaMA-style)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__(dim, eps=eps)
