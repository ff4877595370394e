"""Explicit key/value cache for incremental decoding.

The cache is an object passed into the model and mutated in place, never a forward hook
(openai/whisper's hook cache is the anti-pattern we avoid). Beam search reorders it with
`reorder`. Self-attention entries grow along time; cross-attention entries are computed once
from the encoder output and reused at every step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor


class AttentionCache:
    """Keys and values of one attention module, shape (B, num_heads, T, head_dim).

    Storage grows by doubling so that appending one token per step costs amortised O(1)
    copies instead of the O(T) of a `torch.cat` per step.
    """

    def __init__(self) -> None:
        self._k: Tensor | None = None
        self._v: Tensor | None = None
        self.length = 0

    @property
    def is_empty(self) -> bool:
        return self.length == 0

    @property
    def keys(self) -> Tensor:
        assert self._k is not None, "empty cache"
        return self._k.narrow(2, 0, self.length)

    @property
    def values(self) -> Tensor:
        assert self._v is not None, "empty cache"
        return self._v.narrow(2, 0, self.length)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append new keys/values (B, H, t, D) and return the full (B, H, T, D) pair."""
        t = k.shape[2]
        needed = self.length + t
        if self._k is None or needed > self._k.shape[2] or self._k.shape[0] != k.shape[0]:
            capacity = max(needed, 2 * (self._k.shape[2] if self._k is not None else 0), 16)
            new_k = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[3])
            new_v = v.new_empty(v.shape[0], v.shape[1], capacity, v.shape[3])
            if self._k is not None and self.length:
                new_k.narrow(2, 0, self.length).copy_(self.keys)
                new_v.narrow(2, 0, self.length).copy_(self.values)
            self._k, self._v = new_k, new_v
        # narrow + copy_: one dispatcher call each, cheaper than slice indexing at every decoding step.
        self._k.narrow(2, self.length, t).copy_(k)
        self._v.narrow(2, self.length, t).copy_(v)
        self.length = needed
        return self._k.narrow(2, 0, needed), self._v.narrow(2, 0, needed)

    def set(self, k: Tensor, v: Tensor) -> None:
        """Store static keys/values (cross-attention over a fixed context), contiguous: every decoding
        step reads them whole, and the heads' views of the fused projection are strided."""
        self._k, self._v, self.length = k.contiguous(), v.contiguous(), k.shape[2]

    def reorder(self, index: Tensor) -> None:
        if self._k is not None:
            self._k = self._k.index_select(0, index)
            self._v = self._v.index_select(0, index)


@dataclass
class BlockCache:
    """The caches of one transformer block: its self-attention and optional cross-attention."""

    self_attn: AttentionCache = field(default_factory=AttentionCache)
    cross_attn: AttentionCache = field(default_factory=AttentionCache)


class KVCache:
    """Per-layer caches for a whole stack; layers are created lazily on first use.

    `length` is the number of positions already processed, which decoders use as the
    position offset of the next tokens.

    `padding`: None, or (B,) int64, the positions at the start of each row that are padding: a batch of
    prompts of different lengths left-padded to one length (`left_padded`), each row's own prompt ending
    where the others' end, so that one decoding step serves them all. A decoder that reads it (Whisper, GPT:
    `padding_mask`) numbers a row's positions from its first real token and masks the padding out of
    self-attention, so each row decodes as it would alone. It follows the rows through
    `reorder` and `fork` (not a fork without the prefix: a new prompt there is laid out anew).
    """

    def __init__(self) -> None:
        self.layers: list[BlockCache] = []
        self.padding: Tensor | None = None

    def layer(self, index: int) -> BlockCache:
        while len(self.layers) <= index:
            self.layers.append(BlockCache())
        return self.layers[index]

    @property
    def length(self) -> int:
        return self.layers[0].self_attn.length if self.layers else 0

    def reorder(self, index: Tensor, cross: bool = True) -> None:
        """Select batch rows (beam search): row i of the new cache is row index[i] of the old; `cross` False leaves
        the cross-attention keys/values as they are (beams moving within their row, whose context they share)."""
        rows = self.batch_size
        for block in self.layers:
            block.self_attn.reorder(index)
            if cross and not block.cross_attn.is_empty:
                block.cross_attn.reorder(context_rows(index, rows, block.cross_attn.keys.shape[0]))
        if self.padding is not None:
            self.padding = self.padding.index_select(0, index.to(self.padding.device))

    @property
    def batch_size(self) -> int:
        """Rows held (0 when nothing is cached yet)."""
        for block in self.layers:
            for entry in (block.self_attn, block.cross_attn):
                if not entry.is_empty:
                    return entry.keys.shape[0]
        return 0

    def fork(self, rows: Tensor, keep_prefix: bool = True) -> "KVCache":
        """A new cache holding `rows` of this one, e.g. the windows a decoder retries at a
        higher temperature while the others are done.

        Cross-attention keys/values are static, so when `rows` keeps every row in order they are
        shared, not copied (one encoder output's, computed once); the self-attention prefix is
        always copied, so forks grow independently, or left out with `keep_prefix=False` (when
        the caller feeds the prompt again).

        Args:
            rows: (R,) int64 indices of the rows to keep.
            keep_prefix: copy the self-attention keys/values cached so far.
        """
        out = KVCache()
        batch = self.batch_size
        every = len(rows) == batch and bool((rows.cpu() == torch.arange(len(rows))).all())
        for i, block in enumerate(self.layers):
            layer = out.layer(i)
            if not block.cross_attn.is_empty:
                k, v = block.cross_attn.keys, block.cross_attn.values
                if not every or k.shape[0] != len(rows):  # grouped entries (a beam search's) are taken per row
                    index = context_rows(rows, batch, k.shape[0])
                    k, v = k.index_select(0, index), v.index_select(0, index)
                layer.cross_attn.set(k, v)
            if keep_prefix and not block.self_attn.is_empty:
                layer.self_attn.append(block.self_attn.keys.index_select(0, rows),
                                       block.self_attn.values.index_select(0, rows))
        if keep_prefix and self.padding is not None:
            out.padding = self.padding.index_select(0, rows.to(self.padding.device))
        return out

    def padding_mask(self, t_query: int) -> Tensor | None:
        """The self-attention mask of the next `t_query` positions of left-padded rows (`left_padding_mask`),
        None without padding: what a decoder that reads `padding` passes its stack."""
        return None if self.padding is None else left_padding_mask(self.padding, self.length, t_query)


def context_rows(index: Tensor, rows: int, contexts: int) -> Tensor:
    """`index` (over `rows` rows) as rows of a context or of cross-attention entries of `contexts` rows: the same,
    or, where they serve groups of rows (a beam search's or best-of-N's, `beams_share_context`: row b·g + j reads
    context row b), each row's context row."""
    if contexts == rows or not rows or not contexts or rows % contexts:
        return index
    return torch.div(index, rows // contexts, rounding_mode="floor")


def left_padding_mask(padding: Tensor, offset: int, t_query: int) -> Tensor:
    """(B, 1, T_query, offset + T_query) bool self-attention mask for left-padded rows (`KVCache.padding`: (B,)
    padding positions at each row's start; the queries are positions offset..offset + T_query - 1): a real
    token attends to real tokens alone; a padding one to the padding (its own output is never read, but a row
    with nothing to attend to would fill the cache with NaN, which a zero weight does not cancel). Causality is
    the caller's (`Attention`'s is_causal combines with it)."""
    keys = torch.arange(offset + t_query, device=padding.device)
    queries = keys[offset:]
    real_key = keys[None, :] >= padding[:, None]  # (B, T_key)
    padding_query = queries[None, :] < padding[:, None]  # (B, T_query)
    return (real_key[:, None, :] | padding_query[:, :, None])[:, None]


def left_padded(rows: Sequence[Sequence[int]], pad_id: int,
                device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Token rows of different lengths as one (B, T) batch, each row right-aligned after `pad_id`s, and the (B,)
    count of padding positions per row (a `KVCache.padding`)."""
    width = max(len(r) for r in rows)
    tokens = torch.tensor([[pad_id] * (width - len(r)) + list(r) for r in rows], dtype=torch.long, device=device)
    return tokens, torch.tensor([width - len(r) for r in rows], dtype=torch.long, device=device)
