"""One autoregressive decoding loop for every decoder (GPT, DALL·E-style, Whisper-style).

Strategies are small objects (openai/whisper keeps decoding apart from the model the same
way): `Greedy`, `Sampling` (temperature, top-k, top-p) and `BeamSearch`. Logit filters are
callables `(tokens (B, T), logits (B, V)) -> logits` applied before selection. The model is
any callable `model(tokens, context=None, cache=None) -> logits (B, T, V)`; with a `KVCache`
only the new tokens are fed at each step. A model whose cross-attention takes a context of B rows for B·g token
rows (row b·g + j attending to context row b, as the core `Attention` does) says so with a true
`beams_share_context` attribute: beam search then hands it each row's context once instead of once a beam.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

from mmkit.core.beam import openai_beam_search, ranked_beam_search
from mmkit.core.cache import KVCache, context_rows
from mmkit.core.filters import (  # noqa: F401 - re-exported: the loop's filters
    LogitFilter, MinNewTokens, NoRepeatNGram, RepetitionGuard, RepetitionPenalty, SuppressAtBegin, SuppressTokens,
    Temperature, TopK, TopP, is_loop, loop_mask, repetition_filters,
)
from mmkit.limits import MAX_SEED, finite32


class DecoderModel(Protocol):
    def __call__(self, tokens: Tensor, context: Tensor | None = None, cache: KVCache | None = None) -> Tensor: ...


# The argument rules of the strategies and `GenerationOptions`, kept in one place so both refuse the same values
# with the same one-line message naming the argument (a float or a string used to fail steps later, inside torch).
def _check_int(name: str, value: object, low: int, high: int | None = None, rule: str = "") -> None:
    """TypeError unless `value` is an integer (a bool is not one), ValueError unless it is in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{rule or f'{name} must be >= {low}'}, got {value}")


def _check_number(name: str, value: object, ok: Callable[[float], bool], rule: str) -> None:
    """TypeError unless `value` is a real number, ValueError with `rule` unless `ok(value)`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not ok(value):  # `not ok` also catches NaN, which compares False
        raise ValueError(f"{rule}, got {value}")


def _check_early_stopping(value: object) -> None:
    if not (value is None or isinstance(value, bool) or value == "never"):  # 1.0 == True, yet acts as False
        raise ValueError(f"early_stopping must be None, True, False or 'never', got {value!r}")


def check_sampling(temperature: object, top_k: object, top_p: object, seed: object, beam_size: int) -> bool:
    """The sampling settings' rules, shared by the decoders' options (`GenerationOptions`, the translator's):
    temperature >= 0 and finite in float32, top_k None or >= 1, top_p None or in (0, 1], seed None or in
    [0, 2**64 - 1], and no sampling with beams. Returns whether they sample (a temperature > 0, or top_k / top_p
    given); TypeError or ValueError of one line naming the setting otherwise."""
    _check_number("temperature", temperature, lambda t: t >= 0 and finite32(t),
                  "temperature must be >= 0 and finite in float32 (at most 3.4e38)")
    _check_top(top_k, top_p)
    if seed is not None:
        _check_int("seed", seed, 0, MAX_SEED, "seed must be in [0, 2**64 - 1]")
    sampling = is_sampling(temperature, top_k, top_p)  # type: ignore[arg-type]
    if beam_size > 1 and sampling:
        raise ValueError("beam search is deterministic: drop temperature/top_k/top_p or use beam_size 1")
    return sampling


def is_sampling(temperature: float, top_k: int | None, top_p: float | None) -> bool:
    """Whether checked settings (`check_sampling`) sample: a temperature > 0, or top_k / top_p given (which sample
    at temperature 1)."""
    return temperature > 0 or top_k is not None or top_p is not None


def decoding_strategy(beam_size: int, length_penalty: float, early_stopping: bool | str | None, temperature: float,
                      top_k: int | None, top_p: float | None, device: str | torch.device = "cpu",
                      seed: int | None = None, row_seeds: Sequence[int] | None = None, n_best: int = 1,
                      ) -> "Greedy | Sampling | BeamSearch":
    """The strategy of checked decoding settings (the decoders' options'): beam search (returning its `n_best`
    best hypotheses), greedy, or sampling, each row from its own generator with `row_seeds` (one seed per row,
    `RowSampling`: a row's tokens do not depend on its batch), else from one generator seeded by `seed` (None:
    torch's global one)."""
    if beam_size > 1:
        return BeamSearch(beam_size, length_penalty, early_stopping, n_best=n_best)
    if not is_sampling(temperature, top_k, top_p):
        return Greedy()
    if row_seeds is not None:
        return RowSampling(temperature, row_seeds, device, top_k, top_p)
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    return Sampling(temperature or 1.0, top_k, top_p, generator)


def _check_top(top_k: object, top_p: object) -> None:
    """top_k None or >= 1 (0 used to switch top-k off silently); top_p None or in (0, 1]."""
    if top_k is not None:
        _check_int("top_k", top_k, 1)
    if top_p is not None:
        _check_number("top_p", top_p, lambda p: 0 < p <= 1, "top_p must be in (0, 1]")


@dataclass
class Greedy:
    def select(self, logits: Tensor) -> Tensor:
        return logits.argmax(dim=-1)


@dataclass
class Sampling:
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature, lambda t: t > 0 and finite32(t),
                      "temperature must be > 0 and finite in float32 (at most 3.4e38); use Greedy() for argmax "
                      "decoding")
        _check_top(self.top_k, self.top_p)

    def filters(self) -> list[LogitFilter]:
        out: list[LogitFilter] = [Temperature(self.temperature)]
        if self.top_k is not None:
            out.append(TopK(self.top_k))
        if self.top_p is not None and self.top_p < 1.0:
            out.append(TopP(self.top_p))
        return out

    def select(self, logits: Tensor) -> Tensor:
        probs = logits.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)


class RowSampling(Sampling):
    """Sampling with one generator per row, seeded from `seeds` (one per row): a row's draws depend on its own seed
    only, never on the other rows of the batch (one shared generator hands each row different numbers depending on
    its companions and position). A temperature of 0 samples at 1 (top_k / top_p alone ask for sampling)."""

    def __init__(self, temperature: float, seeds: Sequence[int], device: torch.device | str = "cpu",
                 top_k: int | None = None, top_p: float | None = None) -> None:
        super().__init__(temperature or 1.0, top_k, top_p)
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def select(self, logits: Tensor) -> Tensor:  # (B, V) -> (B,)
        probs = logits.softmax(dim=-1)
        return torch.cat([torch.multinomial(probs[i: i + 1], 1, generator=g)[:, 0]
                          for i, g in enumerate(self.generators)])


@dataclass
class BeamSearch:
    """Beam search. With `early_stopping` None (the default), openai-whisper's candidate rule:
    candidates are taken best first until K beams run, the EOS ones among them finish, and the
    search ends once K have finished. With True, False or "never", GNMT's ranked search as
    transformers runs it (`mmkit.core.beam`): only EOS among the K best finish, and a row stops
    at K finished (True) or when its best running beam, length-normalised at the current
    (False) or the maximum ("never") length, cannot beat its worst finished hypothesis.

    Args:
        beam_size: beams per row (K).
        length_penalty: final score = sum log p / lp(generated length) with lp(n) = n ** alpha,
            or GNMT's ((5 + n) / 6) ** alpha when `penalty_form` is "gnmt".
        early_stopping: None, True, False or "never" (above).
        penalty_form: "length" or "gnmt" (ranked search only).
        n_best: hypotheses returned per row, best first (1 to beam_size; transformers' `num_return_sequences`
            with beams): `generate` then returns B·n_best rows, row b's hypotheses at b·n_best, ...
    """

    beam_size: int = 4
    length_penalty: float = 1.0
    early_stopping: bool | str | None = None
    penalty_form: str = "length"
    n_best: int = 1

    def __post_init__(self) -> None:
        _check_int("beam_size", self.beam_size, 1)
        _check_int("n_best", self.n_best, 1, self.beam_size,
                   f"n_best must be in [1, beam_size {self.beam_size}] (a search keeps beam_size hypotheses)")
        _check_number("length_penalty", self.length_penalty, math.isfinite, "length_penalty must be finite")
        _check_early_stopping(self.early_stopping)
        if self.penalty_form not in ("length", "gnmt"):
            raise ValueError(f"penalty_form must be 'length' or 'gnmt', got {self.penalty_form!r}")


@dataclass
class GenerationOptions:
    """Decoding settings every decoder shares (GPT, seq2seq, DALL·E-style; Whisper's own options
    add its task/language/fallback rules on top). Greedy unless a sampling option or a beam is given.

    Args:
        max_new_tokens: tokens to generate at most.
        temperature: > 0 samples at that temperature; 0 (default) decodes greedily, unless
            top_k/top_p ask for sampling (then at temperature 1).
        top_k: sample among the k likeliest tokens.
        top_p: nucleus sampling: the smallest set of tokens with probability mass >= p.
        beam_size: > 1 runs beam search (deterministic; excludes sampling).
        length_penalty: beam search ranks by sum log p / length ** length_penalty.
        early_stopping: the beam search's stopping rule (`BeamSearch`): False (default), True or "never", the
            ranked search of transformers' `generate(num_beams=...)` with the same setting; None,
            openai-whisper's candidate rule (what Whisper's decoding uses).
        no_repeat_ngram_size: > 0 never completes an n-gram of that size already in the sequence (`NoRepeatNGram`).
        min_new_tokens: no end-of-sequence token before this many new tokens (`MinNewTokens`).
        repetition_penalty: > 1 discourages tokens already in the sequence (`RepetitionPenalty`).
        seed: seed of the sampling generator (None: not seeded).
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    beam_size: int = 1
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    early_stopping: bool | str | None = False
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, 1)
        _check_int("beam_size", self.beam_size, 1)
        check_sampling(self.temperature, self.top_k, self.top_p, self.seed, self.beam_size)
        _check_number("length_penalty", self.length_penalty, math.isfinite, "length_penalty must be finite")
        _check_number("repetition_penalty", self.repetition_penalty, lambda r: r > 0, "repetition_penalty must be > 0")
        _check_early_stopping(self.early_stopping)
        _check_int("no_repeat_ngram_size", self.no_repeat_ngram_size, 0)
        _check_int("min_new_tokens", self.min_new_tokens, 0)
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens {self.min_new_tokens} exceeds max_new_tokens {self.max_new_tokens}")

    @property
    def sampling(self) -> bool:
        return is_sampling(self.temperature, self.top_k, self.top_p)

    def strategy(self, device: str | torch.device = "cpu", row_seeds: Sequence[int] | None = None,
                 n_best: int = 1) -> "Greedy | Sampling | BeamSearch":
        """The decoding strategy of these options (`decoding_strategy`); sampling with `row_seeds` draws each row
        from its own seed, else from one generator seeded by `seed`; a beam search returns its `n_best` best."""
        return decoding_strategy(self.beam_size, self.length_penalty, self.early_stopping, self.temperature,
                                 self.top_k, self.top_p, device, self.seed, row_seeds, n_best)

    def filters(self, eos_id: int | None = None, prompt_length: int = 0,
                padding: Tensor | None = None) -> list[LogitFilter]:
        """Filters these options add before the strategy's own (sampling filters come from it); `min_new_tokens`
        needs the end-of-sequence id and the prompt's length (none without an id). `padding`: (B,) left-padding
        tokens per row of prompts of different lengths (`KVCache.padding`), which the repetition rules skip."""
        return repetition_filters(self.repetition_penalty, self.no_repeat_ngram_size, self.min_new_tokens, eos_id,
                                  prompt_length, padding)


@dataclass
class Generation:
    """tokens: (B, T_max) prompt + generated ids, right-padded with pad_id;
    lengths: (B,) valid lengths; scores: (B,) sum of log-probs of the generated tokens
    (beam search: the length-normalised score used to rank hypotheses; with `BeamSearch(n_best=n)`, B·n rows:
    row b's n best hypotheses at b·n, ..., best first)."""

    tokens: Tensor
    lengths: Tensor
    scores: Tensor
    sequences: list[Tensor] = field(default_factory=list)


def _next_logits(
    model: DecoderModel, tokens: Tensor, context: Tensor | None, cache: KVCache | None,
    context_mask: Tensor | None = None,
) -> Tensor:
    extra = {} if context_mask is None else {"context_mask": context_mask}  # decoders without one keep working
    if cache is not None:
        logits = model(tokens[:, cache.length :], context=context, cache=cache, **extra)
    else:
        logits = model(tokens, context=context, cache=None, **extra)
    return logits[:, -1].float()


@torch.no_grad()
def generate(
    model: DecoderModel,
    prompt: Tensor,
    max_new_tokens: int | Tensor,
    strategy: Greedy | Sampling | BeamSearch | None = None,
    context: Tensor | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
    logit_filters: Sequence[LogitFilter] = (),
    use_cache: bool = True,
    cache: KVCache | None = None,
    stop: Callable[[Tensor], Tensor] | None = None,
    on_step: Callable[[Tensor], None] | None = None,
    context_mask: Tensor | None = None,
) -> Generation:
    """Extend `prompt` (B, T) by up to `max_new_tokens`, stopping a row at `eos_id`.

    Args:
        model: `model(tokens, context=None, cache=None) -> (B, T, V)` logits.
        prompt: (B, T) int64 start tokens (equal length per row).
        max_new_tokens: tokens to generate at most, >= 0 (0: the prompt, score 0): one number, or (B,)
            per row (a row then ends at its own limit as it would alone; beam search: the ranked search only).
        strategy: Greedy() (default), Sampling(...) or BeamSearch(...).
        context: (B, S, D) encoder output for cross-attention models (a model whose cross-attention groups rows,
            `beams_share_context`, may take fewer: one for each group of rows, row b·g + j reading row b).
        logit_filters: applied in order before the strategy's own filters.
        use_cache: incremental decoding with a KVCache (same result as recomputation).
        cache: a KVCache to extend in place instead of a new one (ignored without `use_cache`):
            it may already hold a prefix of `prompt` and/or the cross-attention keys/values of
            `context`, e.g. one encoder output's, computed once and shared by several calls.
            Beam search expands its rows to B·beam_size (the cross-attention entries stay at B rows for a
            model whose beams share their context, `beams_share_context`).
        stop: `stop(tokens (B, T)) -> (B,) bool`, rows to end after the token just added (stop
            strings, say); greedy and sampling only.
        on_step: called with the tokens (B, T) after every step, e.g. to stream text as it comes;
            greedy and sampling only.
        context_mask: (B, S) bool, True for real context positions (padded sources of a
            seq2seq batch), passed to the model as `context_mask=` and kept row-aligned.
    """
    strategy = strategy or Greedy()
    limits = _check_generate_args(prompt, max_new_tokens)
    if prompt.shape[0] == 0:  # an empty batch: nothing to run (a sampler cannot draw from zero rows)
        return Generation(prompt, prompt.new_zeros(0), torch.zeros(0, device=prompt.device), [])
    cache = (cache if cache is not None else KVCache()) if use_cache else None
    if isinstance(strategy, BeamSearch):
        if limits is not None and strategy.early_stopping is None:
            raise ValueError("per-row max_new_tokens needs BeamSearch(early_stopping=True, False or 'never')")
        return _beam_search(model, prompt, max_new_tokens, strategy, context, eos_id, pad_id,
                            list(logit_filters), cache, context_mask)
    filters = list(logit_filters) + (strategy.filters() if isinstance(strategy, Sampling) else [])
    B, T = prompt.shape
    tokens = prompt
    finished = torch.zeros(B, dtype=torch.bool, device=prompt.device)
    if limits is not None:
        finished |= limits == 0  # done before the first step, which the limit check below only follows
    lengths = torch.full((B,), T, device=prompt.device)
    scores = torch.zeros(B, device=prompt.device)
    rows: Tensor | None = None  # rows the model still runs (None: all), see _drop_finished
    for _ in range(int(limits.max()) if limits is not None else max_new_tokens):
        if cache is not None and (eos_id is not None or stop is not None or limits is not None):
            rows, (context, context_mask) = _drop_finished(rows, finished, (context, context_mask), cache)
        if rows is None:
            logits = _next_logits(model, tokens, context, cache, context_mask)
        else:  # finished rows get dummy logits: filters and strategies still see all B rows
            live = _next_logits(model, tokens.index_select(0, rows), context, cache, context_mask)
            logits = live.new_zeros(B, live.shape[1]).index_copy_(0, rows, live)
        for f in filters:
            logits = f(tokens, logits)
        nxt = strategy.select(logits)
        logp = logits.log_softmax(dim=-1).gather(1, nxt[:, None]).squeeze(1)
        scores += torch.where(finished, 0.0, logp)
        lengths += (~finished).long()
        nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        if on_step is not None:
            on_step(tokens)
        if eos_id is not None:
            finished |= nxt == eos_id
        if stop is not None:
            finished |= stop(tokens)
        if limits is not None:
            finished |= lengths - T >= limits
        if bool(finished.all()):
            break
    return Generation(tokens, lengths, scores, [tokens[i, : lengths[i]] for i in range(B)])


def _check_generate_args(prompt: Tensor, max_new_tokens: int | Tensor) -> Tensor | None:
    """One-line errors for a prompt that is not (B, T >= 1) or a limit that is not a whole number >= 0 (a
    negative one used to cut the prompt); returns the per-row limits, or None for one limit for all rows."""
    if prompt.ndim != 2:
        raise ValueError(f"prompt must be (B, T) token ids, got shape {tuple(prompt.shape)}")
    if prompt.shape[1] == 0:
        raise ValueError("prompt must hold at least one token per row (a start token), got (B, 0)")
    if not isinstance(max_new_tokens, Tensor):
        _check_int("max_new_tokens", max_new_tokens, 0)
        return None
    if max_new_tokens.is_floating_point() or max_new_tokens.is_complex() or max_new_tokens.dtype == torch.bool:
        raise TypeError(f"max_new_tokens must be an integer tensor, got {max_new_tokens.dtype}")
    low = int(max_new_tokens.min()) if max_new_tokens.numel() else 0
    if low < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got a row limit of {low}")
    return max_new_tokens


def _drop_finished(
    rows: Tensor | None, finished: Tensor, context: tuple[Tensor | None, ...], cache: KVCache
) -> tuple[Tensor | None, tuple[Tensor | None, ...]]:
    """Stop running finished rows through the model once a quarter of the running rows are done:
    select the others in the cache and context (their tokens are unchanged). Rows of a batch
    finish at different steps; without this every row costs as much as the longest one."""
    running = ~finished if rows is None else ~finished.index_select(0, rows)
    n = running.shape[0]
    n_done = n - int(running.sum())
    if n_done == 0 or n_done < max(1, n // 4) or n_done == n:
        return rows, context
    keep = running.nonzero().squeeze(1)
    cache.reorder(keep)
    # a context of fewer rows serves groups of rows (`beams_share_context`): each kept row takes its group's
    context = tuple(c.index_select(0, context_rows(keep, n, c.shape[0])) if c is not None else None for c in context)
    return (keep if rows is None else rows.index_select(0, keep)), context


def _beam_search(
    model: DecoderModel, prompt: Tensor, max_new_tokens: int | Tensor, beam: BeamSearch, context: Tensor | None,
    eos_id: int | None, pad_id: int, filters: list[LogitFilter], cache: KVCache | None,
    context_mask: Tensor | None = None,
) -> Generation:
    B, T = prompt.shape
    K = beam.beam_size
    device = prompt.device
    # The beams of a row share its context. A model whose cross-attention groups rows (`beams_share_context`: the
    # core `Attention`'s, row b·K + j attending to context row b) takes it once a row, the keys and values too;
    # any other gets it repeated to B·K rows.
    share = shares_context(model)
    if context is not None and not share:
        context = context.repeat_interleave(K, dim=0)  # (B*K, S, D)
    if context_mask is not None and not share:
        context_mask = context_mask.repeat_interleave(K, dim=0)
    if cache is not None:  # a given cache holds B rows: one per beam (its cross-attention's once a row if shared)
        cache.reorder(torch.arange(B, device=device).repeat_interleave(K), cross=not share)
    if beam.early_stopping is not None:
        return _ranked_beam_search(model, prompt, max_new_tokens, beam, context, context_mask, eos_id, pad_id,
                                   filters, cache)

    def next_logits(tokens: Tensor) -> Tensor:
        logits = _next_logits(model, tokens, context, cache, context_mask)
        for f in filters:
            logits = f(tokens, logits)
        return logits

    seqs, scores = openai_beam_search(next_logits, _beam_reorder(cache), prompt, int(max_new_tokens), K,
                                      beam.length_penalty, eos_id, beam.n_best)
    out = torch.full((len(seqs), max(len(s) for s in seqs)), pad_id, dtype=prompt.dtype, device=device)
    for b, seq in enumerate(seqs):
        out[b, : len(seq)] = seq
    lengths = torch.tensor([len(seq) for seq in seqs], device=device)
    return Generation(out, lengths, scores, seqs)


def _ranked_beam_search(
    model: DecoderModel, prompt: Tensor, max_new_tokens: int | Tensor, beam: BeamSearch, context: Tensor | None,
    context_mask: Tensor | None, eos_id: int | None, pad_id: int, filters: list[LogitFilter], cache: KVCache | None,
) -> Generation:
    """`mmkit.core.beam.ranked_beam_search` on this loop's model call, filters and cache."""

    def next_logprobs(tokens: Tensor) -> Tensor:
        logp = _next_logits(model, tokens, context, cache, context_mask).log_softmax(dim=-1)
        for f in filters:  # on log-probabilities, unrenormalised, as transformers' processors
            logp = f(tokens, logp)
        return logp

    tokens, lengths, scores = ranked_beam_search(
        next_logprobs, _beam_reorder(cache), prompt, max_new_tokens, beam.beam_size, beam.length_penalty,
        beam.early_stopping, beam.penalty_form, eos_id, pad_id, beam.n_best)
    return Generation(tokens, lengths, scores, [tokens[b, : lengths[b]] for b in range(tokens.shape[0])])


def shares_context(model: object) -> bool:
    """Whether `model`'s cross-attention takes a context of B rows for B·g token rows (its true
    `beams_share_context`): the beam search and best-of-N sampling then give it each context row once."""
    return bool(getattr(model, "beams_share_context", False))


def _beam_reorder(cache: KVCache | None) -> Callable[[Tensor], None]:
    """The cache's reordering as beams move (`reorder(index)`, index (B·K,) the source row of every beam). Beams
    move within their row, whose beams share one context: the cross-attention keys/values are the same for all
    of them (or held once a row) and stay where they are."""
    if cache is None:
        return lambda index: None
    return lambda index: cache.reorder(index, cross=False)

