"""One batch of Whisper windows decoded (openai/whisper `decoding.py` / `transcribe.py`): the logit
filters of a window, one decoding pass at one rung of the temperature ladder (greedy or beam at 0,
best-of-N sampling above, seeded per window so that batching changes no draw), and the temperature
fallback that retries the windows whose text is too repetitive, too unlikely or looping. The
transcriber (`mmkit.inference.transcriber`) cuts audio into windows, batches and encodes them, and
hands each batch's encoder output and cache here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from mmkit.core import BeamSearch, KVCache, SuppressAtBegin, SuppressTokens, generate
from mmkit.core.decoding import shares_context
from mmkit.core.filters import LogitFilter, RepetitionGuard, TimestampRules, is_loop
from mmkit.inference.speech_checkpoints import SpeechTokenizer
from mmkit.inference.transcript import Decoded, DecodingOptions, window_seed
from mmkit.models.whisper import Whisper

log = logging.getLogger(__name__)


@dataclass
class Window:
    """One window of a file, as both long forms (`Transcriber`, `mmkit.inference.sequential`) hand it here."""

    file: int  # index into the batch of files
    index: int  # window number within the file
    audio: np.ndarray  # (N,) samples, N <= window length (sampling seeds come from them)
    offset: float  # seconds from the file's start


def previous_text_prompt(tokenizer: SpeechTokenizer, tokens: Sequence[int], n_text_ctx: int) -> list[int]:
    """<|startofprev|> and the last n_text_ctx // 2 - 1 of `tokens` (an initial prompt's, or the text decoded
    before), as openai/whisper's `_get_initial_tokens` slices them (`[-(n // 2 - 1):]`, so all of them where
    that is 0): what goes before a window's <|startoftranscript|>."""
    return [tokenizer.sot_prev, *list(tokens)[-(n_text_ctx // 2 - 1):]]


class WindowDecoder:
    """Decode batches of encoded windows with `model` and `tokenizer` under `options`."""

    def __init__(self, model: Whisper, tokenizer: SpeechTokenizer, options: DecodingOptions) -> None:
        self.model, self.tokenizer, self.options = model, tokenizer, options

    def decode(self, context: Tensor, cache: KVCache, prompts: Tensor, max_index: Tensor,
               no_speech: list[float], audios: list[np.ndarray]) -> list[Decoded]:
        """Each row decoded at the first temperature; rows that fail the checks (`needs_fallback`) again at
        the next one, until the last. `cache` holds the cross-attention keys/values and the
        pass over the initial prompt and <|startoftranscript|>: every attempt decodes on a fork of it."""
        o = self.options
        results: list[Decoded | None] = [None] * prompts.shape[0]
        rows = list(range(prompts.shape[0]))
        for attempt in range(len(o.temperatures)):
            last = attempt == len(o.temperatures) - 1
            index = torch.tensor(rows, device=context.device)
            # the cache holds the prompt up to <|startoftranscript|>; a prompt that ends there must be fed again,
            # so that the loop has a last position to read the first token's logits from
            fork = cache.fork(index, keep_prefix=prompts.shape[1] > cache.length)
            if cache.padding is not None:  # left-padded prompts: fed again without the prefix, laid out as before
                fork.padding = cache.padding.index_select(0, index.to(cache.padding.device))
            decoded = self.decode_once(context[index], fork, prompts[index], max_index[index.to(max_index.device)],
                                       attempt, [audios[r] for r in rows])
            retry = []
            for row, d in zip(rows, decoded):
                results[row] = d
                if not last and self.needs_fallback(d, no_speech[row]):
                    retry.append(row)
            if not retry:
                break
            log.debug("temperature %.1f: retrying %d window(s) at %.1f", o.temperatures[attempt], len(retry),
                      o.temperatures[attempt + 1])
            rows = retry
        return results  # type: ignore[return-value]

    def needs_fallback(self, d: Decoded, no_speech_prob: float) -> bool:
        """Whether a window is decoded again at the next temperature (openai/whisper's checks, plus a loop)."""
        o = self.options
        low_logprob = o.logprob_threshold is not None and d.avg_logprob < o.logprob_threshold
        if o.no_speech_threshold is not None and no_speech_prob > o.no_speech_threshold and low_logprob:
            return False  # silence: skipped afterwards, retrying would only hallucinate
        repetitive = o.compression_ratio_threshold is not None and d.compression_ratio > o.compression_ratio_threshold
        return repetitive or low_logprob or d.looped

    def filters(self, prompt_length: int, max_index: Tensor) -> list[LogitFilter]:
        """The logit filters of every decoding pass: suppressed tokens, timestamp rules, the repetition guard."""
        o, tok = self.options, self.tokenizer
        filters: list[LogitFilter] = [SuppressAtBegin(tok.begin_suppress_tokens, prompt_length),
                                      SuppressTokens(tok.suppress_tokens)]
        if not o.without_timestamps:
            filters.append(TimestampRules(tok, prompt_length, tok.max_initial_timestamp_index, max_index))
        if o.repetition_guard:
            filters.append(RepetitionGuard(tok.eot, prompt_length))
        return filters

    def decode_once(self, context: Tensor, cache: KVCache, prompts: Tensor, max_index: Tensor,
                    attempt: int, audios: list[np.ndarray]) -> list[Decoded]:
        """Decode each row once at the attempt's temperature (greedy/beam at 0, best-of-N sampling above)."""
        o, tok = self.options, self.tokenizer
        B, T = prompts.shape
        # + 1: the last token is chosen but never fed, so openai's loop (ending once the tokens exceed the context)
        # gives a long prompt (sequential decoding's previous text) one more token than the context holds. Each
        # row's own prompt length counts (left-padded prompts of different lengths: `KVCache.padding`).
        lengths = [T] * B if cache.padding is None else (T - cache.padding.cpu()).tolist()
        limits = [max(1, min(o.max_new_tokens or self.model.n_text_ctx // 2, self.model.n_text_ctx + 1 - n))
                  for n in lengths]
        generation = o.generation(attempt, max(limits))
        if len(set(limits)) > 1 and generation.beam_size > 1:  # openai's beam search runs all rows to one limit
            return self._by_limit(context, cache, prompts, max_index, attempt, audios, limits)
        max_new: int | Tensor = limits[0] if len(set(limits)) == 1 else torch.tensor(limits, device=prompts.device)
        temperature, n, seeds = generation.temperature, 1, None
        if generation.sampling:  # a generator per row, seeded from its window: batching changes no draw
            n = o.best_of
            seeds = [(window_seed(a, o.seed, attempt) + k) % 2**63 for a in audios for k in range(n)]
        strategy = generation.strategy(context.device, seeds)
        if n > 1:  # best-of-N: N rows per window, reading its context once where the model groups rows
            share = shares_context(self.model)
            rep = torch.arange(B, device=context.device).repeat_interleave(n)
            prompts, max_index = prompts[rep], max_index[rep.to(max_index.device)]
            context = context if share else context[rep]
            max_new = max_new if isinstance(max_new, int) else max_new[rep]
            cache.reorder(rep, cross=not share)
        g = generate(self.model, prompts, max_new, strategy, context=context, eos_id=tok.eot, pad_id=tok.eot,
                     logit_filters=[*self.filters(T, max_index), *generation.filters()], cache=cache)
        out = []
        for i, seq in enumerate(g.sequences):
            new = seq[T:]
            ended = len(new) > 0 and int(new[-1]) == tok.eot
            tokens = new[:-1] if ended else new
            # beam scores are length-normalised (sum / text tokens ** penalty, EOS not counted): undo it for the sum
            norm = max(len(tokens), 1) ** strategy.length_penalty if isinstance(strategy, BeamSearch) else 1
            total = float(g.scores[i]) * norm
            looped = o.repetition_guard and ended and is_loop(tokens)
            out.append(Decoded.scored(tokens.tolist(), total, temperature, looped, tok.decode(tokens.tolist())))
        if n > 1:  # keep the likeliest candidate of each window
            out = [max(out[b * n:(b + 1) * n], key=likelihood_rank) for b in range(B)]
        return out

    def _by_limit(self, context: Tensor, cache: KVCache, prompts: Tensor, max_index: Tensor, attempt: int,
                  audios: list[np.ndarray], limits: list[int]) -> list[Decoded]:
        """`decode_once` of the rows of each token limit apart (beam search, whose rows share one limit)."""
        out: list[Decoded | None] = [None] * len(limits)
        for limit in sorted(set(limits)):
            rows = [b for b, n in enumerate(limits) if n == limit]
            index = torch.tensor(rows, device=context.device)
            decoded = self.decode_once(context[index], cache.fork(index), prompts[index],
                                       max_index[index.to(max_index.device)], attempt, [audios[b] for b in rows])
            for b, d in zip(rows, decoded):
                out[b] = d
        return out  # type: ignore[return-value]


def likelihood_rank(d: Decoded) -> float:
    """openai/whisper's `MaximumLikelihoodRanker(length_penalty=None)`: sum log p / text tokens, EOS not counted
    (its `avg_logprob` counts it, the ranking does not; counting it favours short candidates). An empty
    candidate divides by 1 where openai would divide by zero (never reached there: SuppressBlank bans an
    immediate EOS)."""
    return d.sum_logprob / max(len(d.tokens), 1)
