"""Logit filters for the shared decoding loop (`mmkit.core.decoding.generate`): callables
`(tokens (B, T), logits (B, V)) -> logits` applied in order before a strategy selects the next
token. Every decoder's rules live here (suppressed tokens, repetition guards, sampling filters,
Whisper's timestamp rules), so GPT, Whisper, seq2seq and DALL·E-style decoders share them.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

LogitFilter = Callable[[Tensor, Tensor], Tensor]


def guided(logits: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance (DALL·E-style and dalle-mini's super-conditioning): `logits` holds 2B rows,
    the B conditional ones then their B unconditional twins; returns uncond + scale · (cond − uncond), (B, ..., V),
    in fp32 (under a bf16 autocast the logits are bf16, and the scale would magnify their rounding). A logit that
    is -inf in the conditional row (a token never sampled) stays -inf, not inf − inf. A row that overflows float32
    is returned shifted by its largest value (the same softmax, finite)."""
    cond, uncond = logits.float().chunk(2)
    never = torch.isinf(cond)
    out = torch.where(never, cond, uncond + scale * (cond - uncond))
    overflowed = ~(out.isfinite() | never)  # finite logits made +-inf, or NaN (inf - inf)
    if bool(overflowed.any()):
        # A huge scale (3e38) overflows finite logits to +-inf, and softmax of inf - inf is NaN. Softmax is
        # shift-invariant, so such rows are shifted by their best logit, found in units of `scale`, where
        # nothing overflows: the best goes to 0, the rest to at most 0 (-inf, probability 0, when far below).
        units = torch.where(never, cond, uncond / scale + (cond - uncond))
        shifted = scale * (units - units.amax(dim=-1, keepdim=True))
        out = torch.where(overflowed.any(dim=-1, keepdim=True), shifted, out)
    return out


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
        scaled = logits / self.temperature
        # A tiny temperature (1e-38, say) overflows finite logits to +-inf, and softmax of inf - inf is NaN.
        # Softmax is shift-invariant, so such rows are scaled from their best logit instead: the best goes
        # to 0 (0/0 where the temperature underflows to zero in the logits' dtype), the rest to at most 0.
        if self.temperature < 1.0 and bool((scaled.isinf() & logits.isfinite()).any()):
            shifted = (logits - logits.amax(dim=-1, keepdim=True)) / self.temperature
            scaled = shifted.nan_to_num(nan=0.0, posinf=0.0, neginf=float("-inf"))
        return scaled


class TopK:
    """Keep the k most likely tokens."""

    def __init__(self, k: int) -> None:
        if not k >= 1:  # topk(0) fails deep inside with "selected index k out of range"
            raise ValueError(f"top_k must be >= 1, got {k}")
        self.k = k

    def __call__(self, tokens: Tensor, logits: Tensor) -> Tensor:
        k = min(self.k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[:, -1:]
        return logits.masked_fill(logits < kth, float("-inf"))


class TopP:
    """Nucleus sampling (Holtzman et al., 2020): keep the smallest set with mass >= p, and always
    the likeliest token (transformers' min_tokens_to_keep=1): p <= 0 is greedy, not all -inf and NaN."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, tokens: Tensor, logits: Tensor) -> Tensor:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) >= self.p  # mass before this token already >= p
        drop[..., 0] = False
        drop = drop.scatter(-1, order, drop)
        return logits.masked_fill(drop, float("-inf"))


class RepetitionPenalty:
    """CTRL's repetition penalty (Keskar et al., 2019), as transformers applies it: the logit of
    every token already in the row (prompt included) is divided by `penalty` when positive and
    multiplied by it when negative, so > 1 discourages repeats. `padding`: (B,) left-padding tokens per row
    (`KVCache.padding`), which are not the row's text and count for nothing."""

    def __init__(self, penalty: float, padding: Tensor | None = None) -> None:
        if not penalty > 0:
            raise ValueError(f"repetition penalty must be > 0, got {penalty}")
        self.penalty, self.padding = penalty, padding

    def __call__(self, tokens: Tensor, logits: Tensor) -> Tensor:
        tokens = _padding_as_first_token(tokens, self.padding)
        seen = logits.gather(1, tokens)
        seen = torch.where(seen > 0, seen / self.penalty, seen * self.penalty)
        return logits.scatter(1, tokens, seen)


class NoRepeatNGram:
    """Never complete an n-gram the row already holds (prompt included), as transformers'
    `no_repeat_ngram_size`: the tokens that followed the row's last n - 1 tokens wherever those occurred
    before are banned (n = 1: every token seen). `padding`: (B,) left-padding tokens per row
    (`KVCache.padding`): no n-gram starts in them."""

    def __init__(self, n: int, padding: Tensor | None = None) -> None:
        if not n >= 1:
            raise ValueError(f"no_repeat_ngram_size must be >= 1, got {n}")
        self.n, self.padding = n, padding

    def __call__(self, tokens: Tensor, logits: Tensor) -> Tensor:
        if tokens.shape[1] < self.n:
            return logits
        grams = tokens.unfold(1, self.n, 1)  # (B, windows, n)
        last = tokens[:, tokens.shape[1] - self.n + 1:]  # (B, n - 1)
        found = (grams[:, :, :-1] == last[:, None, :]).all(dim=-1)  # (B, windows)
        if self.padding is not None:  # a window starting in a row's padding is not its text
            starts = torch.arange(grams.shape[1], device=tokens.device)
            found &= starts >= _per_row(self.padding, tokens)[:, None]
        rows, at = found.nonzero(as_tuple=True)
        logits[rows, grams[rows, at, -1]] = float("-inf")
        return logits


def _per_row(values: Tensor, rows: Tensor) -> Tensor:
    """(B,) per-row values of the prompts' rows (padding, a timestamp cap) for the rows of `rows` (tokens or
    logits): beam search's B·K rows share their row's."""
    values = values.to(rows.device)
    return values.repeat_interleave(rows.shape[0] // values.shape[0])


def _padding_as_first_token(tokens: Tensor, padding: Tensor | None) -> Tensor:
    """`tokens` with each row's left padding replaced by its first real token: a token the row holds anyway,
    so whatever reads the tokens as a set of seen ids sees only the row's own."""
    if padding is None:
        return tokens
    pad = _per_row(padding, tokens)
    first = tokens.gather(1, pad.clamp(max=tokens.shape[1] - 1)[:, None])
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    return torch.where(positions < pad[:, None], first, tokens)


def repetition_filters(repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0, min_new_tokens: int = 0,
                       eos_id: int | None = None, prompt_length: int = 0,
                       padding: Tensor | None = None) -> list[LogitFilter]:
    """transformers' `repetition_penalty`, `no_repeat_ngram_size` and `min_new_tokens` as logit filters, in that
    order, each only where set (1.0, 0, 0 are off): the rules every decoder's options share. `min_new_tokens`
    counts after the `prompt_length` prompt tokens and needs `eos_id` (none without one); `padding`: (B,) left
    padding per row (`KVCache.padding`), which the repetition rules skip."""
    out: list[LogitFilter] = []
    if repetition_penalty != 1.0:
        out.append(RepetitionPenalty(repetition_penalty, padding))
    if no_repeat_ngram_size:
        out.append(NoRepeatNGram(no_repeat_ngram_size, padding))
    if min_new_tokens and eos_id is not None:
        out.append(MinNewTokens(eos_id, prompt_length, min_new_tokens))
    return out


class SourceTokens:
    """The source ids of a batch of encoder-decoder rows, for the rules that read them (`SourceRepetitionPenalty`,
    `SourceNoRepeatNGram`): `sources` (B, S) right-padded, `lengths` (B,) real tokens per row (>= 1). A rule sees
    each row's own tokens only, never its padding, so a row decodes as it would alone. Beams or samples of a row
    (B·K rows of `tokens`) share its source."""

    def __init__(self, sources: Tensor, lengths: Tensor) -> None:
        self.lengths = lengths.to(sources.device)
        positions = torch.arange(sources.shape[1], device=sources.device)
        # the padding as each row's first token: a token the row holds anyway (gather and scatter see its own only)
        self.sources = torch.where(positions < self.lengths[:, None], sources, sources[:, :1])

    def rows(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(sources, lengths) repeated for the B·K rows of `tokens`."""
        k = tokens.shape[0] // self.sources.shape[0]
        return self.sources.repeat_interleave(k, dim=0), self.lengths.repeat_interleave(k)


class SourceRepetitionPenalty:
    """transformers' `encoder_repetition_penalty` (its `EncoderRepetitionPenaltyLogitsProcessor`, a "hallucination
    penalty" for input-grounded text, summaries): the logit of every token of the row's source is multiplied by
    `penalty` when positive and divided by it when negative, so > 1 favours the source's tokens, < 1 avoids them."""

    def __init__(self, penalty: float, source: SourceTokens) -> None:
        if not penalty > 0:
            raise ValueError(f"encoder repetition penalty must be > 0, got {penalty}")
        self.penalty, self.source = penalty, source

    def __call__(self, tokens: Tensor, logits: Tensor) -> Tensor:
        ids = self.source.rows(tokens)[0]
        seen = logits.gather(1, ids)
        seen = torch.where(seen < 0, seen / self.penalty, seen * self.penalty)
        return logits.scatter(1, ids, seen)


class SourceNoRepeatNGram:
    """transformers' `encoder_no_repeat_ngram_size` (`EncoderNoRepeatNGramLogitsProcessor`): never complete an
    n-gram of the row's source, i.e. ban the tokens that followed the row's last n - 1 tokens wherever those occur
    in its source (n = 1: every source token), from the step the row holds n - 1 tokens (its start token counts)."""

    def __init__(self, n: int, source: SourceTokens) -> None:
        if not n >= 1:
            raise ValueError(f"encoder_no_repeat_ngram_size must be >= 1, got {n}")
        self.n, self.source = n, source

    def __call__(self, tokens: Tensor, logits: Tensor) -> Tensor:
        sources, lengths = self.source.rows(tokens)
        if tokens.shape[1] < self.n - 1 or sources.shape[1] < self.n:
            return logits
        grams = sources.unfold(1, self.n, 1)  # (R, windows, n)
        last = tokens[:, tokens.shape[1] - self.n + 1:]  # (R, n - 1)
        found = (grams[:, :, :-1] == last[:, None, :]).all(dim=-1)  # (R, windows)
        found &= torch.arange(grams.shape[1], device=tokens.device)[None] + self.n <= lengths[:, None]
        rows, at = found.nonzero(as_tuple=True)
        logits[rows, grams[rows, at, -1]] = float("-inf")
        return logits


class MinNewTokens:
    """No `eos_id` before `min_new_tokens` tokens follow the prompt (`begin_index` tokens), as transformers'
    `min_new_tokens`."""

    def __init__(self, eos_id: int, begin_index: int, min_new_tokens: int) -> None:
        self.eos_id, self.begin_index, self.min_new_tokens = eos_id, begin_index, min_new_tokens

    def __call__(self, tokens: Tensor, logits: Tensor) -> Tensor:
        if tokens.shape[1] - self.begin_index < self.min_new_tokens:
            logits[:, self.eos_id] = float("-inf")
        return logits


class LogitNormalization:
    """transformers' `renormalize_logits` (`LogitNormalization`, which `generate` puts after every other processor):
    each row log-softmaxed again, so that the scores a beam search adds up are log-probabilities over the tokens the
    filters before it left (a banned <pad>'s mass shared out among them), not the model's unrenormalised ones. Last
    in a filter list: a filter after it would unnormalise the rows again. In float32, as transformers' processors
    see the logits (its `generate` casts them first), whatever the model's precision."""

    def __call__(self, tokens: Tensor, logits: Tensor) -> Tensor:
        return logits.float().log_softmax(dim=-1)


class TimestampVocabulary(Protocol):
    """What `TimestampRules` needs of a tokenizer (a `WhisperTokenizer`, say)."""

    eot: int
    no_timestamps: int
    timestamp_begin: int


class TimestampRules:
    """openai/whisper's `ApplyTimestampRules` as a logit filter, vectorised over rows.

    Timestamps come in pairs (end of one segment, start of the next) except right before
    <|endoftext|>; they never decrease and a segment has a non-zero length; the first generated
    token is a timestamp no later than `max_initial_index`; and a timestamp is forced when the
    timestamps' total probability beats every single text token. Beyond openai/whisper, a
    timestamp never passes the end of its window's audio (`max_index`, per row), so segments of a
    short last window stay inside the audio.

    Args:
        tokenizer: supplies `eot`, `no_timestamps`, `timestamp_begin`.
        begin_index: prompt length (index of the first generated token).
        max_initial_index: last allowed first timestamp (50 = 1.0 s); None: no limit.
        max_index: (B,) last allowed timestamp index per row; beam rows (B·K) share their row's.
    """

    def __init__(self, tokenizer: TimestampVocabulary, begin_index: int, max_initial_index: int | None = 50,
                 max_index: Tensor | None = None) -> None:
        self.eot, self.no_timestamps, self.ts = tokenizer.eot, tokenizer.no_timestamps, tokenizer.timestamp_begin
        self.begin_index, self.max_initial_index, self.max_index = begin_index, max_initial_index, max_index

    def __call__(self, tokens: Tensor, logits: Tensor) -> Tensor:
        ts, inf = self.ts, float("-inf")
        B, V = logits.shape
        vocab = torch.arange(V, device=logits.device)
        logits[:, self.no_timestamps] = inf
        gen = tokens[:, self.begin_index:]  # (B, n) generated so far
        if gen.shape[1] == 0:
            logits[:, :ts] = inf  # start with a timestamp
            if self.max_initial_index is not None:
                logits[:, ts + self.max_initial_index + 1:] = inf
        else:
            is_ts = gen >= ts
            last = is_ts[:, -1]
            penultimate = is_ts[:, -2] if gen.shape[1] >= 2 else torch.ones_like(last)
            logits[last & penultimate, ts:] = inf  # after a pair: text (or EOT)
            logits[last & ~penultimate, : self.eot] = inf  # after a single one: a timestamp or EOT
            last_ts = torch.where(is_ts, gen, -1).amax(dim=1)  # (B,) latest timestamp id, -1 if none
            floor = torch.where(last & ~penultimate, last_ts, last_ts + 1)  # never back, no empty segment
            banned = (last_ts >= 0)[:, None] & (vocab >= ts) & (vocab < floor[:, None])
            logits.masked_fill_(banned, inf)
        if self.max_index is not None:
            cap = _per_row(self.max_index, logits)
            logits.masked_fill_(vocab > (ts + cap)[:, None], inf)
        logprobs = logits.float().log_softmax(dim=-1)
        timestamp_wins = logprobs[:, ts:].logsumexp(dim=-1) > logprobs[:, :ts].amax(dim=-1)
        logits[timestamp_wins, :ts] = inf
        return logits
