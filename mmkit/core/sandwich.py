"""dalle-mini's transformer block (Dayma et al., DALL·E mini, 2021; the min-dalle port): pre-norm
residual sub-layers with an extra norm on each sub-layer's output ("sandwich" norms, as in
NormFormer, Shleifer et al. 2021), bias-free attention, and a GLU feed-forward (Shazeer, "GLU
Variants Improve Transformer", 2020) with a norm on its input and on its gated hidden state.
New small classes beside `PreNormBlock`/`Mlp`, which keep their behaviour.
"""
from __future__ import annotations

from torch import Tensor, nn

from mmkit.core.attention import Attention
from mmkit.core.blocks import DropPath, MlpFactory, NormFactory
from mmkit.core.cache import BlockCache
from mmkit.core.norms import LayerNorm


class NormedGLU(nn.Module):
    """fc2(norm_mid(act(fc1_g(x')) * fc1_x(x'))) with x' = norm_in(x); no biases."""

    def __init__(self, dim: int, hidden_dim: int, act_layer: type[nn.Module] = nn.GELU,
                 norm_layer: NormFactory = LayerNorm) -> None:
        super().__init__()
        self.norm_in = norm_layer(dim)
        self.fc1_g = nn.Linear(dim, hidden_dim, bias=False)
        self.fc1_x = nn.Linear(dim, hidden_dim, bias=False)
        self.act = act_layer()
        self.norm_mid = norm_layer(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm_in(x)
        return self.fc2(self.norm_mid(self.act(self.fc1_g(x)) * self.fc1_x(x)))


class SandwichBlock(nn.Module):
    """x + norm1_post(attn(norm1(x))); [x + norm_cross_post(cross_attn(norm_cross(x), context))];
    x + mlp(x), the MLP (`NormedGLU`) carrying its own norms. Same call signature as PreNormBlock,
    so `TransformerStack(block=SandwichBlock, ...)` builds dalle-mini's encoder and decoder.
    `mlp_layer` is ignored (the GLU is part of the block's definition); `mlp_ratio` sizes it."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        cross_attention: bool = False,
        norm_layer: NormFactory = LayerNorm,
        mlp_layer: MlpFactory | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        init_values: float | None = None,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if init_values:
            raise ValueError("SandwichBlock has no LayerScale")
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=False)
        self.norm1_post = norm_layer(dim)
        if cross_attention:
            self.norm_cross = norm_layer(dim)
            self.cross_attn = Attention(dim, num_heads, qkv_bias=qkv_bias, cross=True, proj_bias=False)
            self.norm_cross_post = norm_layer(dim)
        else:
            self.cross_attn = None
        # round, not int: dalle-mini's 2730 / 1024 must come back as 2730 from dim * ratio.
        self.mlp = NormedGLU(dim, round(dim * mlp_ratio), act_layer, norm_layer)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None,
                context_mask: Tensor | None = None, is_causal: bool = False, cache: BlockCache | None = None) -> Tensor:
        attn = self.attn(self.norm1(x), mask=mask, is_causal=is_causal, cache=cache.self_attn if cache else None)
        x = x + self.drop_path(self.norm1_post(attn))
        if self.cross_attn is not None:
            cross = self.cross_attn(self.norm_cross(x), context=context, mask=context_mask,
                                    cache=cache.cross_attn if cache else None)
            x = x + self.drop_path(self.norm_cross_post(cross))
        return x + self.drop_path(self.mlp(x))
