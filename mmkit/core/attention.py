"""Multi-head attention ("Attention Is All You Need", §3.2) on `F.scaled_dot_product_attention`.

One module serves self-attention (fused `qkv` projection, timm's naming) and cross-attention
(`q` from the sequence, fused `kv` from the context). Masks are boolean with True = attend,
broadcastable to (B, num_heads, T_query, T_key), the SDPA convention, or an additive float bias
of that shape (T5's relative positions, with -inf/finfo.min where a key is masked). Attention maps for
visualisation come from `attention_maps`, which hooks the modules for one call (recording the calling
thread's passes only); the hot path never materialises the attention matrix.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmkit.core.cache import AttentionCache
from mmkit.core.positions import RotaryEmbedding


_NO_CONTEXT = contextlib.nullcontext()


class _WithoutCudnnAttention:
    """SDPA's GPU kernels for a cached decoding step without cuDNN's, which plans each new shape anew (a step's
    key length); the other backends stay as set. Fixed-shape encoders keep whichever SDPA picks. A flag flip,
    ~1 us, where `torch.nn.attention.sdpa_kernel` takes ~18 us a call on this project's CPUs."""

    def __enter__(self) -> None:
        self.was_enabled = torch.backends.cuda.cudnn_sdp_enabled()
        if self.was_enabled:
            torch.backends.cuda.enable_cudnn_sdp(False)

    def __exit__(self, *exc: object) -> None:
        if self.was_enabled:
            torch.backends.cuda.enable_cudnn_sdp(True)


def key_padding_mask(valid: Tensor) -> Tensor:
    """(B, T_key) bool, True for real tokens -> (B, 1, 1, T_key) attention mask."""
    return valid[:, None, None, :].bool()


def causal_mask(t_query: int, t_key: int, device: torch.device | None = None) -> Tensor:
    """(T_query, T_key) bool mask where query i (at absolute position t_key - t_query + i)
    attends to keys 0..its own position; bottom-right aligned so it is right with a cache."""
    return torch.ones(t_query, t_key, dtype=torch.bool, device=device).tril(diagonal=t_key - t_query)


class Attention(nn.Module):
    """Multi-head scaled dot-product attention.

    Args:
        dim: model width.
        num_heads: heads; dim must divide evenly.
        qkv_bias: bias on the q/k/v projections.
        cross: cross-attention (queries from x, keys/values from `context`).
        context_dim: width of the context for cross-attention (default dim).
        proj_bias: bias on the output projection.
        attn_drop: dropout on attention probabilities (training only).
        proj_drop: dropout after the output projection.
        rope: optional rotary embedding applied to q and k (self-attention only).
        head_dim: per-head width when num_heads * head_dim != dim (T5 v1.1: 512 wide, 6 x 64).
        scale: score scale (default head_dim ** -0.5; T5 folds it into its init and uses 1.0).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        cross: bool = False,
        context_dim: int | None = None,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rope: RotaryEmbedding | None = None,
        head_dim: int | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if head_dim is None and dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if cross and rope is not None:
            raise ValueError("rotary embeddings apply to self-attention only")
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        self.scale = self.head_dim**-0.5 if scale is None else scale
        self.cross = cross
        inner = num_heads * self.head_dim
        if cross:
            self.q = nn.Linear(dim, inner, bias=qkv_bias)
            self.kv = nn.Linear(context_dim or dim, 2 * inner, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(inner, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rope = rope

    def _heads(self, x: Tensor, n: int) -> tuple[Tensor, ...]:
        B, T, _ = x.shape
        x = x.view(B, T, n, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (n, B, nh, T, hs)
        return x.unbind(0)

    def project_qkv(
        self, x: Tensor, context: Tensor | None = None, cache: AttentionCache | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values (B, nh, T, hs), reading and updating `cache`."""
        if self.cross:
            (q,) = self._heads(self.q(x), 1)
            if cache is not None and not cache.is_empty:
                return q, cache.keys, cache.values  # context is fixed: projected once per sequence
            if context is None:
                raise ValueError("cross-attention needs a context (or a filled cache)")
            k, v = self._heads(self.kv(context), 2)
            if cache is not None:
                cache.set(k, v)
            return q, k, v
        q, k, v = self._heads(self.qkv(x), 3)
        if self.rope is not None:
            q, k = self.rope(q, k, offset=cache.length if cache is not None else 0)
        if cache is not None:
            k, v = cache.append(k, v)
        return q, k, v

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        is_causal: bool = False,
        cache: AttentionCache | None = None,
        keep: int | None = None,
    ) -> Tensor:
        """
        Args:
            x: (B, T, dim) queries (and keys/values for self-attention).
            context: (B, S, context_dim) for cross-attention.
            mask: bool, broadcastable to (B, nh, T, T_key), True = attend; or a float bias
                added to the scores.
            is_causal: causal self-attention (bottom-right aligned when a cache holds a prefix).
            cache: this module's cache for incremental decoding.
            keep: bidirectional self-attention only: the outputs of the first `keep` positions
                alone (every position still serves as a key/value), e.g. 1 for a class token.

        Returns:
            (B, T, dim), or (B, keep, dim).
        """
        if x.shape[1] == 0:  # a shape check (compiles): every transformer meets it, whatever its embeddings
            raise ValueError(f"empty sequence: attention needs at least one position, got shape {tuple(x.shape)}")
        q, k, v = self.project_qkv(x, context, cache)
        if keep is not None:
            if self.cross or is_causal or cache is not None:
                raise ValueError("keep= is for bidirectional self-attention without a cache")
            q = q[:, :, :keep]
            if mask is not None and mask.shape[-2] > 1:
                mask = mask[..., :keep, :]
        mask, is_causal = _combine_masks(mask, is_causal, q.shape[2], k.shape[2], q.device)
        T = q.shape[2]
        group = _context_group(q, k) if self.cross else 1
        if group > 1 and not _per_context(mask, k.shape[0]):  # a mask per query: keys and values for every row
            if mask.ndim == 4 and mask.shape[0] == k.shape[0]:
                mask = mask.repeat_interleave(group, dim=0)
            k, v, group = k.repeat_interleave(group, dim=0), v.repeat_interleave(group, dim=0), 1
        if group > 1:  # the queries of `group` rows as one context row's: (B·g, nh, T, hs) -> (B, nh, g·T, hs)
            q = q.unflatten(0, (k.shape[0], group)).transpose(1, 2).flatten(2, 3)
        # a cached bf16 decoding step on the CPU (not ViT's one-query last block: its bf16 result stays SDPA's), or
        # grouped rows' step (SDPA's CPU kernel is 2.5x slower for a beam's 4 queries on 24 keys than 4x the rows)
        if (cache is not None and T == 1 and (q.dtype == torch.bfloat16 or group > 1) and q.device.type == "cpu"
                and not self.training):
            out = _one_query_attention(q, k, v, mask, self.scale)
        else:
            # a cached step on a GPU: not cuDNN's kernel, which builds a plan for every new key length (a decoding
            # step's), measured on an H200 as a bf16 whisper-tiny transcription 2.3x slower than fp32's
            with _WithoutCudnnAttention() if cache is not None and q.device.type == "cuda" else _NO_CONTEXT:
                out = F.scaled_dot_product_attention(
                    q, k, v, attn_mask=mask, is_causal=is_causal,
                    dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale,
                )  # (B, nh, T, hs), or (B, nh, g·T, hs) for grouped rows
        # (B, T, nh, hs); grouped: (B, nh, g·T, hs) -> (B, g, T, nh, hs), row b·g + j's queries
        out = out.unflatten(2, (group, T)).permute(0, 2, 3, 1, 4) if group > 1 else out.transpose(1, 2)
        # the explicit inner width, not -1: with B = 0 a -1 is ambiguous, and an empty batch gives an empty result
        out = out.reshape(x.shape[0], T, self.num_heads * self.head_dim)  # (B, T, nh·hs)
        out = self.proj(out)  # (B, T, dim)
        return self.proj_drop(out) if self.training else out  # Dropout is the identity in eval: no call

    def attention_weights(
        self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        """Explicit softmax(q kᵀ · scale) (B, nh, T, T_key), for visualisation only (no cache)."""
        q, k, _ = self.project_qkv(x, context, None)
        if self.cross and k.shape[0] and q.shape[0] != k.shape[0]:  # a context row for each group of rows
            k = k.repeat_interleave(_context_group(q, k), dim=0)
        scores = (q @ k.transpose(-2, -1)) * self.scale
        mask, is_causal = _combine_masks(mask, is_causal, q.shape[2], k.shape[2], q.device)
        if is_causal:
            mask = causal_mask(q.shape[2], k.shape[2], q.device)
        return _masked(scores, mask).softmax(dim=-1)


def _context_group(q: Tensor, k: Tensor) -> int:
    """How many query rows share each context row: 1, or g where a context of B rows serves B·g query rows (row
    b·g + j attends to context row b): the beams of a beam search, whose rows share their source. Each context
    row's keys and values are then read once for its g rows instead of once a row (a 4-beam translation step's
    cross-attention reads a quarter of the memory).

    Raises:
        ValueError: query rows that are not a multiple of the context's."""
    rows, contexts = q.shape[0], k.shape[0]
    if rows == contexts or contexts == 1:  # equal, or one context broadcast (SDPA's rule)
        return 1
    if contexts == 0 or rows % contexts:
        raise ValueError(f"cross-attention of {rows} rows to a context of {contexts}: the rows must be a "
                         f"multiple of the context's")
    return rows // contexts


def _per_context(mask: Tensor | None, contexts: int) -> bool:
    """Whether `mask` applies to grouped queries as it is: none, or one mask row per context row (or for all)
    that is the same for every query (a key-padding mask, (B, 1, 1, S))."""
    if mask is None:
        return True
    return mask.shape[-2] == 1 and (mask.ndim < 4 or mask.shape[0] in (1, contexts))


def _one_query_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """A decoding step's attention on the CPU as two matrix products: one query per row in bf16, or the few
    queries of a group of rows on one context row (`_context_group`: a beam search's) in any dtype.

    PyTorch's CPU flash-attention kernel is slow for a single bf16 query: 2.7-8x slower than this at
    64-1,500 keys (Whisper's cross-attention, 8 windows x 6 heads x 1,500 keys: 3.6 ms against 1.2 ms),
    while in fp32 the two are even for one query a row, so that stays on SDPA; a beam's 4 queries a row on
    24 keys take it 2.5x longer than this. The scores are computed in fp32 from the
    bf16 inputs, as the flash kernel accumulates them (bf16 scores would double the error against
    fp32); the probabilities go back to bf16 for the product with the values."""
    with torch.autocast("cpu", enabled=False):
        scores = _masked(torch.matmul(q.float(), k.float().transpose(-2, -1)).mul_(scale), mask)
        return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)


def _masked(scores: Tensor, mask: Tensor | None) -> Tensor:
    """`scores` with a mask applied: bool (True = attend; the rest to -inf) or an additive float bias."""
    if mask is None:
        return scores
    return scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask


def _combine_masks(
    mask: Tensor | None, is_causal: bool, t_query: int, t_key: int, device: torch.device
) -> tuple[Tensor | None, bool]:
    # SDPA's is_causal is top-left aligned, right only when queries and keys start together.
    if not is_causal:
        return mask, False
    if t_query == 1:
        return mask, False  # a single new token may see every cached key
    if mask is None and t_query == t_key:
        return None, True
    causal = causal_mask(t_query, t_key, device)
    if mask is not None and mask.dtype != torch.bool:  # additive bias: masked scores to the lowest float
        return mask.masked_fill(~causal, torch.finfo(mask.dtype).min), False
    return (causal if mask is None else mask & causal), False


def attention_maps(model: nn.Module, fn: Callable[[], object], cross: bool = False) -> tuple[object, list[Tensor]]:
    """Run `fn()` (typically `lambda: model(x)`) and collect every self-attention map (with `cross`, every
    cross-attention map instead: (B, num_heads, T, S) over the context each module was given).

    Only the forward passes `fn` runs in the calling thread (or asyncio task) are recorded: a model
    shared between threads (a Gradio app runs events concurrently) may run other inputs meanwhile,
    and their maps are not this call's.

    Returns:
        fn's result and a list, one entry per recorded module call in call order, of
        (B, num_heads, T, T) (or (B, num_heads, T, S)) attention probabilities.
    """
    maps: list[Tensor] = []

    # Registering or removing a hook is two dict writes (the hook, then its with_kwargs mark): a forward in
    # another thread between them calls the hook without kwargs, so it takes both signatures and returns
    # at once for any pass that is not this call's. This call's own passes run after registration is done.
    def hook(module: Attention, args: tuple, *rest: object) -> None:
        if _recording.get() is not maps:
            return
        kwargs: dict = rest[0]  # type: ignore[assignment]
        x = args[0] if args else kwargs["x"]
        with torch.no_grad():
            maps.append(
                module.attention_weights(x, kwargs.get("context"), kwargs.get("mask"), kwargs.get("is_causal", False))
            )

    handles = [
        m.register_forward_hook(hook, with_kwargs=True)
        for m in model.modules()
        if isinstance(m, Attention) and m.cross == cross
    ]
    token = _recording.set(maps)
    try:
        result = fn()
    finally:
        _recording.reset(token)
        for h in handles:
            h.remove()
    return result, maps


# The maps list of the `attention_maps` call running in this thread / task (None: not recording).
_recording: ContextVar[list[Tensor] | None] = ContextVar("attention_maps_recording", default=None)
