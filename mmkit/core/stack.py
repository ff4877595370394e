"""Encoder and Decoder stacks: N blocks plus an optional final norm.

`Decoder` is `Encoder` with causal self-attention, optionally with cross-attention to an
encoder output (x-transformers' one-stack design). Both accept an explicit `KVCache`. LayerDrop
(Fan et al., 2019) skips whole blocks in training, drawn as transformers' BART family draws it.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from mmkit.core.blocks import MlpFactory, NormFactory, PreNormBlock
from mmkit.core.cache import KVCache
from mmkit.core.execution import run_block
from mmkit.core.mlp import Mlp
from mmkit.core.norms import LayerNorm


class TransformerStack(nn.Module):
    """`depth` blocks of type `block`; `norm` is the final norm (Identity when final_norm=False).

    Args:
        dim, depth, num_heads, mlp_ratio, qkv_bias: the usual (timm) sizes.
        cross_attention: give every block cross-attention to a context.
        block: PreNormBlock or PostNormBlock (or any block with the same signature).
        norm_layer, mlp_layer, act_layer: layer factories passed to every block.
        final_norm: apply `norm_layer` after the last block (pre-norm stacks need it).
        drop_path_rate: stochastic depth, increasing linearly to this value at the last block.
        init_values: LayerScale init (None = no LayerScale).
        layerdrop: LayerDrop rate: in training, each block is skipped (its input passed on unchanged) with this
            probability, drawn per block per call (MarianMT's encoder_layerdrop/decoder_layerdrop). 0: nothing drawn.
    """

    causal = False
    layerdrop = 0.0  # set per instance by the constructor; the class value serves stacks pickled before it existed
    grad_checkpointing = False  # recompute each block in the backward pass (`core.execution`)
    _compiled_run: Callable[..., Tensor] | None = None  # `compile_stack`: the whole stack
    _compiled_block: Callable[..., Tensor] | None = None  # `compile_stack`: one block (LayerDrop training)

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        cross_attention: bool = False,
        block: type[nn.Module] = PreNormBlock,
        norm_layer: NormFactory = LayerNorm,
        mlp_layer: MlpFactory = Mlp,
        act_layer: type[nn.Module] = nn.GELU,
        final_norm: bool = True,
        drop_path_rate: float = 0.0,
        init_values: float | None = None,
        layerdrop: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= layerdrop <= 1.0:
            raise ValueError(f"layerdrop must be in [0, 1], got {layerdrop}")
        self.layerdrop = layerdrop
        self.blocks = nn.ModuleList(
            block(
                dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, cross_attention=cross_attention,
                norm_layer=norm_layer, mlp_layer=mlp_layer, act_layer=act_layer, init_values=init_values,
                drop_path=drop_path_rate * i / max(depth - 1, 1),
            )
            for i in range(depth)
        )
        self.norm = norm_layer(dim) if final_norm else nn.Identity()

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        cache: KVCache | None = None,
        keep: int | None = None,
    ) -> Tensor:
        """
        Args:
            x: (B, T, dim).
            context: (B, S, dim) encoder output for cross-attention.
            mask: self-attention mask, bool broadcastable to (B, nh, T, T_key), True = attend.
            context_mask: cross-attention mask, broadcastable to (B, nh, T, S).
            cache: KV cache for incremental decoding (holds T_key - T earlier positions).
            keep: bidirectional stacks: only the first `keep` output positions are wanted (e.g. 1
                for class-token pooling), so the last block computes those alone. Exact; saves
                that block's projections, MLP and attention for the other positions.

        Returns:
            (B, T, dim), or (B, keep, dim).
        """
        if cache is not None or self._compiled_run is None:
            return self._run(x, context, mask, context_mask, cache, keep)
        if self.training and self.layerdrop > 0:  # blocks compiled one at a time, the draws between them eager
            return self._run(x, context, mask, context_mask, None, keep, self._compiled_block or run_block)
        return self._compiled_run(self, x, context, mask, context_mask, None, keep)

    def compile_stack(self, **options: Any) -> None:
        """`torch.compile(**options)` this stack's calls without a KV cache: training, encoders, scoring. Calls
        with a cache stay eager, since the cache grows at every decoding step and each new length would be a new
        graph. The parameters stay where they are (their names unchanged), unlike `torch.compile(model)`'s
        wrapper. The compiled function takes the stack as an argument, not bound to it: a copy of the model
        (`copy.deepcopy`, as EMA and SWA make) runs its own weights. Training calls with LayerDrop run the blocks
        compiled one at a time (one graph serves every block of the same shape: their parameters are the graph's
        inputs), the draws between them eager: whether a block runs is drawn between the previous block's dropout
        masks and its own, a branch on a random number that one graph of the whole stack cannot hold."""
        self._compiled_run = torch.compile(type(self)._run, **options)
        self._compiled_block = torch.compile(run_block, **options)

    def __getstate__(self) -> dict[str, Any]:
        # as nn.Module.compile's: a pickled or copied stack comes back uncompiled (a compiled function pickles not)
        state = super().__getstate__()
        state.pop("_compiled_run", None)
        state.pop("_compiled_block", None)
        return state

    def _run(self, x: Tensor, context: Tensor | None, mask: Tensor | None, context_mask: Tensor | None,
             cache: KVCache | None, keep: int | None, call: Callable[..., Tensor] = run_block) -> Tensor:
        # `call` runs one block (`run_block`, or its compiled twin for LayerDrop training)
        # LayerDrop draws as transformers' Marian/BART/Whisper stacks: `torch.rand([])` (torch's CPU generator, also
        # for a CUDA model) before each block, after the previous block's dropout masks, so one seed drops the same
        # blocks and masks. Not with a cache: a block skipped at one step would lack its keys at the next.
        layerdrop = self.training and self.layerdrop > 0 and cache is None
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            if layerdrop and torch.rand([]) < self.layerdrop:
                continue
            x = call(self.grad_checkpointing and cache is None, blk, x, context=context, mask=mask,
                     context_mask=context_mask, is_causal=self.causal,
                     cache=cache.layer(i) if cache is not None else None,
                     **({"keep": keep} if keep is not None and i == last else {}))
        if keep is not None:  # a no-op view after the last block's `keep`; not when it was skipped or absent
            x = x[:, :keep]
        return self.norm(x)


class Encoder(TransformerStack):
    """Bidirectional stack (ViT, CLIP image tower, BERT, Whisper encoder)."""

    causal = False


class Decoder(TransformerStack):
    """Causal stack (GPT, CLIP text tower, DALL·E-style, Whisper decoder); cross-attention optional."""

    causal = True
