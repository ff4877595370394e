"""Positional encodings: sinusoidal ("Attention Is All You Need", §3.5), learned absolute
(GPT-2, ViT, Whisper decoder), rotary (Su et al., RoFormer, 2021; half-split layout of
GPT-NeoX/LLaMA) and T5's bucketed relative position bias (Raffel et al., 2020, §2.1).
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _host_table(build: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Compute a fixed table on the CPU, then move it to the default device. The values are the
    host's bit for bit on every device, and a meta-device build (the weights-header check before a
    load) never reaches the Python decompositions of factory ops, whose first call imports torch's
    compiler stack (~1.3 s of a command's start-up)."""
    @functools.wraps(build)
    def on_host(*args: object, **kwargs: object) -> Tensor:
        with torch.device("cpu"):
            table = build(*args, **kwargs)
        return table.to(torch.get_default_device())
    return on_host


@_host_table
def sinusoidal_positions(length: int, dim: int, max_timescale: float = 10000.0) -> Tensor:
    """PE[pos, 2i] = sin(pos / 10000^(2i/dim)), PE[pos, 2i+1] = cos(pos / 10000^(2i/dim)).

    Returns:
        (length, dim) float32 table, sin and cos interleaved exactly as in the paper.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal positions need an even dim, got {dim}")
    position = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    inv_freq = max_timescale ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table.float()


@_host_table
def sinusoidal_positions_halves(length: int, dim: int, max_timescale: float = 10000.0) -> Tensor:
    """The paper's frequencies laid out [sin | cos] instead of interleaved: Marian's (and so
    MarianMT's) static table. Returns (length, dim)."""
    table = sinusoidal_positions(length, dim, max_timescale)
    return torch.cat([table[:, 0::2], table[:, 1::2]], dim=1)


class LearnedPositions(nn.Module):
    """A learned (max_len, dim) table added to token embeddings, offset-aware for KV caching."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.init.normal_(torch.empty(max_len, dim), std=0.02))

    def forward(self, length: int, offset: int = 0, padding: Tensor | None = None) -> Tensor:
        """(length, dim) rows offset..offset + length - 1; with `padding` ((B,) left-padding positions per row,
        `KVCache.padding`), (B, length, dim): each row's positions counted from its first real token (padding
        positions get row 0; they are masked out)."""
        if padding is None:
            if offset + length > self.weight.shape[0]:
                raise ValueError(f"sequence of {offset + length} positions exceeds max_len {self.weight.shape[0]}")
            return self.weight[offset : offset + length]
        positions = torch.arange(offset, offset + length, device=padding.device)[None, :] - padding[:, None]
        if offset + length - int(padding.min()) > self.weight.shape[0]:
            raise ValueError(f"sequence of {offset + length - int(padding.min())} positions exceeds max_len "
                             f"{self.weight.shape[0]}")
        return self.weight[positions.clamp_(min=0)]


def resample_positions(
    pos: Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int], num_prefix_tokens: int
) -> Tensor:
    """Resize a (1, prefix + H*W, dim) 2-D position table to a new patch grid.

    Bicubic with antialiasing, in float32, prefix (class) tokens left untouched: the same
    recipe timm uses, so resampled checkpoints agree with timm's numbers.
    """
    if tuple(new_grid) == tuple(old_grid):
        return pos
    prefix, grid = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)  # (1, dim, H, W)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos.dtype)  # (1, H'*W', dim)
    return torch.cat([prefix, grid], dim=1)


class RotaryEmbedding(nn.Module):
    """Rotates query/key channel pairs (i, i + head_dim/2) by position-dependent angles."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head_dim, got {head_dim}")
        self.register_buffer("inv_freq", _inverse_frequencies(head_dim, base), persistent=False)

    def _cos_sin(self, length: int, offset: int, device: torch.device) -> tuple[Tensor, Tensor]:
        t = torch.arange(offset, offset + length, device=device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq.to(device))  # (T, head_dim/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (T, head_dim)
        return emb.cos(), emb.sin()

    @staticmethod
    def _rotate_half(x: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([-x2, x1], dim=-1)

    def forward(self, q: Tensor, k: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
        """q, k: (B, H, T, head_dim) at absolute positions offset..offset+T-1."""
        cos, sin = self._cos_sin(q.shape[2], offset, q.device)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        return q * cos + self._rotate_half(q) * sin, k * cos + self._rotate_half(k) * sin


@_host_table
def _inverse_frequencies(head_dim: int, base: float) -> Tensor:
    return base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def _log_timescales(dim: int, max_timescale: float) -> Tensor:
    # Whisper/tensor2tensor variant: sin and cos halves concatenated, not interleaved.
    increment = math.log(max_timescale) / (dim // 2 - 1)
    return torch.exp(-increment * torch.arange(dim // 2, dtype=torch.float32))


@_host_table
def sinusoidal_positions_concat(length: int, dim: int, max_timescale: float = 10000.0) -> Tensor:
    """[sin | cos] layout used by tensor2tensor and Whisper's encoder. Returns (length, dim)."""
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * _log_timescales(dim, max_timescale)[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


class RelativePositionBias(nn.Module):
    """T5's learned scalar bias per head and relative-distance bucket, added to attention scores.

    Distances up to num_buckets/2 (per direction when bidirectional) have a bucket each, longer
    ones share log-spaced buckets up to `max_distance`. `weight` is (num_buckets, num_heads),
    transformers' `relative_attention_bias.weight`.
    """

    def __init__(self, num_heads: int, num_buckets: int = 32, max_distance: int = 128,
                 bidirectional: bool = True) -> None:
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.weight = nn.Parameter(torch.zeros(num_buckets, num_heads))

    def bucket(self, relative: Tensor) -> Tensor:
        """(key position - query position) -> bucket index, as T5's `_relative_position_bucket`."""
        n, out = self.num_buckets, torch.zeros_like(relative)
        if self.bidirectional:
            n //= 2
            out += (relative > 0).long() * n
            relative = relative.abs()
        else:  # a decoder only looks back: future distances share bucket 0
            relative = -relative.clamp(max=0)
        exact = n // 2
        large = exact + (torch.log(relative.float() / exact) / math.log(self.max_distance / exact)
                         * (n - exact)).long()
        return out + torch.where(relative < exact, relative, large.clamp(max=n - 1))

    def forward(self, t_query: int, t_key: int, offset: int = 0) -> Tensor:
        """Bias (1, num_heads, t_query, t_key) for queries at offset..offset+t_query-1."""
        device = self.weight.device
        query = torch.arange(offset, offset + t_query, device=device)[:, None]
        relative = torch.arange(t_key, device=device)[None, :] - query  # (t_query, t_key)
        return F.embedding(self.bucket(relative), self.weight).permute(2, 0, 1).unsqueeze(0)
