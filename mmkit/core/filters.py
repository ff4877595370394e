"""Logit filters for the shared decoding loop (`mmkit.core.decoding.generate`): callables
`(tokens (B, T), logits (B, V)) -> logits` applied in order before a strategy selects the next
token. Every decoder's rules live here (suppressed tokens, repetition guards, sampling filters,
Whisper's timestamp rules), so GPT, Whisper, seq2seq and DALL·E-style decoders share them.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

LogitFilter = Callable[[Tensor, Tensor], Tensor]


class SuppressTokens:
    """Never emit these token ids."""

    def __init__(self, token_ids: Sequence[int]) -> None:
        self.token_ids = list(token_ids)

    def __call__(self, tokens: Tensor, logits: Tensor) -> Tensor:
        logits[:, self.token_ids] = float("-inf")
        return logits


class SuppressAtBegin:
    """Suppress tokens only at the first generated position (e.g. Whisper's blank/EOT)."""

    def __init__(self, token_ids: Sequence[int], begin_index: int) -> None:
        self.token_ids, self.begin_index = list(token_ids), begin_index

    def __call__(self, tokens: Tensor, logits: Tensor) -> Tensor:
        if tokens.shape[1] == self.begin_index:
            logits[:, self.token_ids] = float("-inf")
        return logits


def loop_mask(tokens: Tensor, max_period: int = 32, min_repeats: int = 4, min_length: int = 16) -> Tensor:
    """(B, T) ids -> (B,) bool: True where the sequence ends in a loop, a span of 1..max_period
    tokens repeated back to back over the last max(min_repeats · period, min_length) tokens."""
    looped = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    for period in range(1, max_period + 1):
        span = max(min_repeats * period, min_length)
        if span > tokens.shape[1]:
            break
        tail = tokens[:, -span:]
        looped |= (tail[:, period:] == tail[:, :-period]).all(dim=1)
    return looped


def is_loop(tokens: Tensor, max_period: int = 32, min_repeats: int = 4, min_length: int = 16) -> bool:
    """`loop_mask` for one (T,) sequence."""
    return bool(loop_mask(tokens[None], max_period, min_repeats, min_length)[0])


class RepetitionGuard:
    """Force `eos_id` once the tokens generated after `begin_index` end in a loop (`loop_mask`):
    a decoder stuck repeating itself stops instead of running to the length limit."""

    def __init__(self, eos_id: int, begin_index: int, max_period: int = 32, min_repeats: int = 4,
                 min_length: int = 16) -> None:
        self.eos_id, self.begin_index = eos_id, begin_index
        self.max_period, self.min_repeats, self.min_length = max_period, min_repeats, min_length

    def __call__(self, tokens: Tensor, logits: Tensor) -> Tensor:
        if tokens.shape[1] - self.begin_index < self.min_length:
            return logits
        looped = loop_mask(tokens[:, self.begin_index :], self.max_period, self.min_repeats, self.min_length)
        if bool(looped.any()):
            logits[looped] = float("-inf")
            logits[looped, self.eos_id] = 0.0  # the only finite logit: every strategy picks EOS
        return logits


class Temperature:
    def __init__(self, temperature: float) -> None:
        if temperature <= 0:
            raise ValueError("temperature must be > 0; use Greedy() for argmax decoding")
        self.temperature = temperature

    def __call__(self, tokens: Tensor, logits: Tensor) -> Tensor:
        return logits / self.temperature


class TopK:
    """Keep the k most likely tokens."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, tokens: Tensor, logits: Tensor) -> Tensor:
        k = min(self.k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[:, -1:]
        return logits.masked_fill(logits < kth, float("-inf"))


class TopP:
    """Nucleus sampling (Holtzman et al., 2020): keep the smallest set with mass >= p."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, tokens: Tensor, logits: Tensor) -> Tensor:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) >= self.p  # mass before this token already >= p
        drop = drop.scatter(-1, order, drop)
        return logits.masked_fill(drop, float("-inf"))


class RepetitionPenalty:
    """CTRL's repetition penalty (Keskar et al., 2019), as transformers applies it: the logit of
    every token already in the row (prompt included) is divided by `penalty` when positive and
    multiplied by it when negative, so > 1 discourages repeats."""

    def __init__(self, penalty: float) -> None:
        if not penalty > 0:
            raise ValueError(f"repetition penalty must be > 0, got {penalty}")
        self.penalty = penalty

    def __call__(self, tokens: Tensor, logits: Tensor) -> Tensor:
        seen = logits.gather(1, tokens)
        seen = torch.where(seen > 0, seen / self.penalty, seen * self.penalty)
        return logits.scatter(1, tokens, seen)
