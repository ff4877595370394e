"""Transformer blocks: pre-norm (GPT-2, ViT, CLIP, Whisper) and post-norm (the 2017
Transformer, BERT). A block optionally carries cross-attention, so one class serves encoder
and decoder (openai/whisper's ResidualAttentionBlock does the same).

Parameter names follow timm: norm1/attn/ls1, norm2/mlp/ls2; cross-attention adds
norm_cross/cross_attn/ls_cross.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import Tensor, nn

from mmkit.core.attention import Attention
from mmkit.core.cache import BlockCache
from mmkit.core.mlp import Mlp
from mmkit.core.norms import LayerNorm
from mmkit.core.positions import RotaryEmbedding

NormFactory = Callable[[int], nn.Module]
MlpFactory = Callable[..., nn.Module]


class LayerScale(nn.Module):
    """Per-channel residual scaling (CaiT, Touvron et al. 2021); `gamma` as in timm."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample during training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class _Block(nn.Module):
    """Shared construction; subclasses define where the norms sit."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        cross_attention: bool = False,
        norm_layer: NormFactory = LayerNorm,
        mlp_layer: MlpFactory = Mlp,
        act_layer: type[nn.Module] = nn.GELU,
        init_values: float | None = None,
        drop_path: float = 0.0,
        rope: RotaryEmbedding | None = None,
    ) -> None:
        super().__init__()
        scale = (lambda: LayerScale(dim, init_values)) if init_values else nn.Identity
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, rope=rope)
        self.ls1 = scale()
        if cross_attention:
            self.norm_cross = norm_layer(dim)
            self.cross_attn = Attention(dim, num_heads, qkv_bias=qkv_bias, cross=True)
            self.ls_cross = scale()
        else:
            self.cross_attn = None
        self.norm2 = norm_layer(dim)
        self.mlp = mlp_layer(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.ls2 = scale()
        self.drop_path = DropPath(drop_path)
        self.layer_scale = bool(init_values)  # a plain attribute: read without nn.Module's __getattr__

    def _branch(self, y: Tensor, ls: nn.Module) -> Tensor:
        """A residual branch after its LayerScale and stochastic depth. In inference the no-op calls
        (Identity, DropPath) are skipped: at batch 1 a small decoder's step is mostly Python overhead,
        and module calls were ~40% of it (GPT at dim 256, 4 layers)."""
        if self.layer_scale:
            y = ls(y)
        return self.drop_path(y) if self.training else y


class PreNormBlock(_Block):
    """x + attn(norm(x)); [x + cross_attn(norm(x), context)]; x + mlp(norm(x)).

    `keep=n` returns the first n positions only, computing nothing else after the attention's
    keys/values (exact: positions interact only through attention)."""

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: BlockCache | None = None,
        keep: int | None = None,
    ) -> Tensor:
        attn = self.attn(self.norm1(x), mask=mask, is_causal=is_causal, cache=cache.self_attn if cache else None,
                         keep=keep)
        x = (x if keep is None else x[:, :keep]) + self._branch(attn, self.ls1)
        if self.cross_attn is not None:
            x = x + self._branch(self.cross_attn(self.norm_cross(x), context=context, mask=context_mask,
                                                 cache=cache.cross_attn if cache else None), self.ls_cross)
        return x + self._branch(self.mlp(self.norm2(x)), self.ls2)


class PostNormBlock(_Block):
    """norm(x + attn(x)); [norm(x + cross_attn(x, context))]; norm(x + mlp(x)). `keep` as in
    `PreNormBlock`."""

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: BlockCache | None = None,
        keep: int | None = None,
    ) -> Tensor:
        attn = self.attn(x, mask=mask, is_causal=is_causal, cache=cache.self_attn if cache else None,
                         keep=keep)
        x = self.norm1((x if keep is None else x[:, :keep]) + self._branch(attn, self.ls1))
        if self.cross_attn is not None:
            x = self.norm_cross(x + self._branch(self.cross_attn(
                x, context=context, mask=context_mask, cache=cache.cross_attn if cache else None), self.ls_cross))
        return self.norm2(x + self._branch(self.mlp(x), self.ls2))


def layer_norm(eps: float) -> NormFactory:
    """A LayerNorm factory with a fixed eps (timm ViT uses 1e-6, CLIP/BERT/Whisper 1e-5/1e-12)."""
    return partial(LayerNorm, eps=eps)
