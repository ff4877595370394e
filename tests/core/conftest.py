"""Shared helpers for core tests: a naive attention reference computed from a module's own
weights, and tiny decoder models built only from core parts (core tests never import models/)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmkit.core import Attention, Decoder, Encoder, KVCache, LearnedPositions


def naive_attention(attn: Attention, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None,
                    return_weights: bool = False) -> Tensor:
    """softmax(q kᵀ / sqrt(head_dim)) v with explicit loops over heads, from `attn`'s parameters.

    mask: bool broadcastable to (B, H, T, S), True = attend.
    """
    B, T, dim = x.shape
    H = attn.num_heads
    hd = dim // H
    if attn.cross:
        q = F.linear(x, attn.q.weight, attn.q.bias)
        kv = F.linear(context, attn.kv.weight, attn.kv.bias)
        k, v = kv[..., :dim], kv[..., dim:]
    else:
        qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias)
        q, k, v = qkv[..., :dim], qkv[..., dim:2 * dim], qkv[..., 2 * dim:]
    S = k.shape[1]
    full_mask = (torch.ones(B, H, T, S, dtype=torch.bool) if mask is None
                 else mask.expand(B, H, T, S))
    heads, weights = [], []
    for h in range(H):
        sl = slice(h * hd, (h + 1) * hd)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(hd)  # (B, T, S)
        scores = scores.masked_fill(~full_mask[:, h], float("-inf"))
        p = scores.softmax(-1)
        weights.append(p)
        heads.append(p @ v[..., sl])
    out = F.linear(torch.cat(heads, dim=-1), attn.proj.weight, attn.proj.bias)
    return (out, torch.stack(weights, dim=1)) if return_weights else out


class TinyLM(nn.Module):
    """Token + learned positions -> causal Decoder -> linear head: `forward(tokens, context, cache)`."""

    def __init__(self, vocab: int = 37, dim: int = 32, depth: int = 2, heads: int = 4, max_len: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = LearnedPositions(max_len, dim)
        self.decoder = Decoder(dim, depth, heads)
        self.head = nn.Linear(dim, vocab)  # untied: a tied head on a random model just echoes its input

    def forward(self, tokens: Tensor, context: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        offset = cache.length if cache is not None else 0
        x = self.embed(tokens) + self.pos(tokens.shape[1], offset)
        return self.head(self.decoder(x, cache=cache))


class TinySeq2Seq(nn.Module):
    """Encoder over continuous source features; Decoder with cross-attention over its output."""

    def __init__(self, vocab: int = 29, dim: int = 32, heads: int = 4, max_len: int = 64) -> None:
        super().__init__()
        self.encoder = Encoder(dim, 1, heads)
        self.embed = nn.Embedding(vocab, dim)
        self.pos = LearnedPositions(max_len, dim)
        self.decoder = Decoder(dim, 2, heads, cross_attention=True)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: Tensor, context: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        offset = cache.length if cache is not None else 0
        x = self.embed(tokens) + self.pos(tokens.shape[1], offset)
        return self.head(self.decoder(x, context=context, cache=cache))


@pytest.fixture
def naive():
    return naive_attention


@pytest.fixture
def tiny_lm() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM().eval()


@pytest.fixture
def tiny_seq2seq() -> TinySeq2Seq:
    torch.manual_seed(0)
    return TinySeq2Seq().eval()
