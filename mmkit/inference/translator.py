"""Batch translation with the encoder-decoders (Seq2Seq / MarianMT, T5) on the shared decoding
loop: sources sorted by length into batches, one encoder pass per batch, KV-cached greedy or
beam search, results back in input order. Empty sources give empty translations, over-long
ones are truncated with a warning, undecodable ones are reported per row: line N of the
output always answers line N of the input. `load_translator` says what `--model DIR` means.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from mmkit.core import (
    BeamSearch, Greedy, LogitNormalization, Sampling, SourceNoRepeatNGram, SourceRepetitionPenalty, SourceTokens,
    SuppressTokens, generate,
)
from mmkit.core.decoding import check_sampling, decoding_strategy, is_sampling
from mmkit.core.attention import attention_maps
from mmkit.core.filters import repetition_filters
from mmkit.inference.generation_config import (
    checked_settings, defaults_for, sampling_fallbacks, say_unapplied, shared_settings, with_top_k_off,
)
from mmkit.inference.inputs import check_types, text_items
from mmkit.inference.model_dir import export_folder
from mmkit.inference.seeds import indexed_seed, sample_seed
from mmkit.limits import MAX_SAMPLES
from mmkit.weights.config_check import check_fields, check_format_version, check_token_ids, read_json_object

log = logging.getLogger(__name__)
UNKNOWN_SHARE = 0.5  # a source whose tokens are mostly <unk> is in a language the vocabulary lacks
TRANSFORMERS_TOKENIZER = "transformers"  # export metadata: tokenizer files written by transformers
# The `TranslationOptions` fields a model's own settings may give (`Translator.defaults`), those of them that only a
# beam search uses, and those that ask for sampling.
DECODING_DEFAULTS = ("beam_size", "length_penalty", "early_stopping", "repetition_penalty", "no_repeat_ngram_size",
                     "min_new_tokens", "renormalize_logits", "temperature", "top_k", "top_p",
                     "encoder_repetition_penalty", "encoder_no_repeat_ngram_size")
BEAM_ONLY = ("length_penalty", "early_stopping", "renormalize_logits")  # greedy's argmax is the same renormalised


class TranslatorError(ValueError):
    """A model directory or input that cannot be translated; the message says why."""


@dataclass
class TranslationOptions:
    """beam_size 1 = greedy. Decoding stops at EOS or after max_new_tokens, by default
    length_ratio · source tokens + length_offset (capped by the model's positions).
    length_penalty as in `mmkit.core.BeamSearch`; early_stopping True, False (the default) or "never", the
    rules of transformers' beam search there. `BeamSearch`'s None (openai-whisper's rule) is refused: it has
    no per-row length limit, and each row stops at its own (its source's).
    repetition_penalty (> 1 discourages tokens already in the translation, 1 = off), no_repeat_ngram_size (never
    complete an n-gram the translation holds, 0 = off) and min_new_tokens (no EOS before that many tokens) are
    transformers' settings of the same names, applied as `generate` applies them to an encoder-decoder: to the
    decoder's tokens, its start token included (`filters`). A length limit of the default rule is raised to
    min_new_tokens; a max_new_tokens below it wins (the row ends there without EOS), as transformers' max_length.
    encoder_repetition_penalty (> 1 favours the source's tokens, < 1 avoids them, 1 = off) and
    encoder_no_repeat_ngram_size (never copy an n-gram of the source, 0 = off) are transformers' rules for
    input-grounded text (T5's "summarize: "), applied to each row's own source tokens, EOS included, as `generate`
    reads the encoder's input ids of one source (`SourceRepetitionPenalty`, `SourceNoRepeatNGram`).
    renormalize_logits: transformers' setting (opus-mt's generation configs set it): each step's scores are
    log-softmaxed again after every other rule (the banned <pad>, the forced EOS), so a beam search ranks beams by
    log-probabilities over the tokens left (`LogitNormalization`). Greedy decoding is the same either way.
    temperature (> 0), top_k and top_p sample instead (transformers' `do_sample`; top_k or top_p alone sample at
    temperature 1), after every rule above, as transformers' warpers follow its processors. With a `seed`, the
    source at row i (`Translator.plan`'s first_row + i) draws from its own generator, seeded from the seed and i
    alone (`indexed_seed`): the same translations whatever the batch size, the batches' order or the ranks
    sharing them; without one, torch's global generator draws. Sampling with beams is refused.
    num_return_sequences: translations per source (transformers' setting of that name): a beam search's n best
    (n <= beam_size), or n samples, sample j of row i from its own seed (sample 0's is the seed of a single
    sample, so a run with n samples begins with the one-sample run's); greedy decoding has one to give.

    Raises:
        TypeError: a count that is not an integer (a str, a float, a bool), a ratio or penalty that is
            not a number, or a renormalize_logits that is not a bool.
        TranslatorError: a value out of range, or an early_stopping other than True, False or "never".
    """

    beam_size: int = 1
    max_new_tokens: int | None = None
    length_ratio: float = 2.0
    length_offset: int = 10
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    batch_size: int = 16
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0
    renormalize_logits: bool = False
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    num_return_sequences: int = 1
    encoder_repetition_penalty: float = 1.0
    encoder_no_repeat_ngram_size: int = 0

    def __post_init__(self) -> None:
        check_types(self, ints=("beam_size", "max_new_tokens", "length_offset", "batch_size", "no_repeat_ngram_size",
                                "min_new_tokens", "num_return_sequences", "encoder_no_repeat_ngram_size"),
                    reals=("length_ratio", "length_penalty", "repetition_penalty", "encoder_repetition_penalty"))
        if not isinstance(self.renormalize_logits, bool):  # "yes" or 1 would read as set; transformers tests `is True`
            raise TypeError(f"TranslationOptions: renormalize_logits must be True or False, got "
                            f"{self.renormalize_logits!r}")
        if self.beam_size < 1 or self.batch_size < 1 or (self.max_new_tokens is not None and self.max_new_tokens < 1):
            raise TranslatorError("beam size, batch size and max length must be >= 1")
        if not (math.isfinite(self.length_ratio) and self.length_ratio >= 0 and math.isfinite(self.length_penalty)):
            raise TranslatorError(f"length_ratio must be a finite number >= 0 and length_penalty finite, got "
                                  f"{self.length_ratio} and {self.length_penalty}")
        # a bool, not any value equal to one: the beam search tests `early_stopping is True`, which 1 is not
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise TranslatorError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        for name in ("repetition_penalty", "encoder_repetition_penalty"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise TranslatorError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "min_new_tokens"):
            if getattr(self, name) < 0:
                raise TranslatorError(f"{name} must be >= 0, got {getattr(self, name)}")
        try:
            check_sampling(self.temperature, self.top_k, self.top_p, self.seed, self.beam_size)
        except ValueError as e:  # TypeError stays one: a value of the wrong type, as check_types'
            raise TranslatorError(str(e)) from None
        n = self.num_return_sequences
        if not 1 <= n <= MAX_SAMPLES:
            raise TranslatorError(f"num_return_sequences must be in [1, {MAX_SAMPLES}], got {n}")
        if n > 1 and self.beam_size == 1 and not self.sampling:
            raise TranslatorError(f"num_return_sequences {n} needs a beam search (beam_size >= {n}) or sampling: "
                                  "greedy decoding has one translation to give")
        if n > self.beam_size > 1:
            raise TranslatorError(f"num_return_sequences {n} exceeds beam_size {self.beam_size}: a beam search keeps "
                                  "beam_size hypotheses")

    @property
    def sampling(self) -> bool:
        return is_sampling(self.temperature, self.top_k, self.top_p)

    @property
    def repeats(self) -> int:
        """Decoder rows per source: num_return_sequences where it samples (n rows, one a sample), else 1 (a beam
        search returns its n best itself)."""
        return self.num_return_sequences if self.sampling else 1

    def strategy(self, device: torch.device, rows: Sequence[int]) -> BeamSearch | Greedy | Sampling:
        """How the sources at rows `rows` (their indices in the input) are decoded (`decoding_strategy`): beam
        search (its `num_return_sequences` best), greedy, or sampling, `repeats` decoder rows a source, each from
        its own seed (`sample_seed`) when a seed is given, else from torch's global generator."""
        row_seeds = None if self.seed is None else [sample_seed(indexed_seed(self.seed, row), j) for row in rows
                                                    for j in range(self.repeats)]
        return decoding_strategy(self.beam_size, self.length_penalty, self.early_stopping, self.temperature,
                                 self.top_k, self.top_p, device, row_seeds=row_seeds, n_best=self.num_return_sequences)

    def limit(self, n_source: int, cap: int) -> int:
        n = self.max_new_tokens or max(int(self.length_ratio * n_source) + self.length_offset, self.min_new_tokens)
        return max(1, min(n, cap))

    def filters(self, eos_id: int, source: SourceTokens) -> list[Callable[[Tensor, Tensor], Tensor]]:
        """The repetition rules and the minimum length as logit filters of a decoder prompted by its start token
        alone: the n-gram ban and the penalty read the start token too, and min_new_tokens counts after it, as
        transformers' `generate` runs an encoder-decoder (its decoder `input_ids` begin with the start token; its
        `min_length` counts that token, `min_new_tokens` does not). The source's rules read `source`, the batch's
        source ids; in transformers' order: the source's penalty first, its n-gram ban after the others."""
        out = repetition_filters(self.repetition_penalty, self.no_repeat_ngram_size, self.min_new_tokens, eos_id, 1)
        if self.encoder_repetition_penalty != 1.0:
            out.insert(0, SourceRepetitionPenalty(self.encoder_repetition_penalty, source))
        if self.encoder_no_repeat_ngram_size:
            out.append(SourceNoRepeatNGram(self.encoder_no_repeat_ngram_size, source))
        return out


@dataclass
class Candidate:
    """One of a source's translations: its text, token ids and score (beam search: the length-normalised score
    that ranks the hypotheses, transformers' `sequences_scores`; greedy and sampling: the sum of the chosen
    tokens' log-probabilities after the decoding rules, temperature and top-k/top-p included)."""

    text: str
    tokens: list[int]
    score: float = field(default=float("nan"), compare=False)  # float noise across batch sizes is not a change


@dataclass
class Translation:
    """A source's translation (`text`, `tokens`: the first of `candidates`), or the `error` that stopped it.
    `candidates`: the options' num_return_sequences translations: a beam search's best first, samples in the
    order drawn (empty for a source not translated: empty, or an error)."""

    source: str
    text: str = ""
    error: str | None = None
    tokens: list[int] | None = None
    candidates: list[Candidate] = field(default_factory=list)


@dataclass
class TranslationPlan:
    """`Translator.plan` of a list of texts: one Translation per text (its error set where the source cannot be
    encoded), the source ids of those to translate, their indices in length-sorted batches, and the input row of
    text 0 (a chunk of a file: its offset; a seeded sampling draws row `first_row + i` from its own seed)."""

    results: list[Translation]
    sources: dict[int, list[int]]
    batches: list[list[int]]
    first_row: int = 0

    @property
    def skipped(self) -> int:
        """Texts not translated (empty, or not encoded): done as soon as planned."""
        return len(self.results) - len(self.sources)


class TextCodec:
    """Tokenizer adapter: `encode(text) -> ids` (ending in EOS), `decode(ids) -> text`, special ids;
    `save(directory) -> name` writes the tokenizer files and names them for the export's metadata."""

    def __init__(self, encode: Callable[[str], list[int]], decode: Callable[[list[int]], str],
                 pieces: Callable[[list[int]], list[str]], start_id: int, eos_id: int, pad_id: int,
                 unk_id: int | None, suppress: Sequence[int] = (), save: Callable[[Path], str] | None = None) -> None:
        self.encode, self.decode, self.pieces, self.save = encode, decode, pieces, save
        self.start_id, self.eos_id, self.pad_id, self.unk_id = start_id, eos_id, pad_id, unk_id
        self.suppress = list(suppress)


class ForcedEos:
    """transformers' `forced_eos_token_id` (the opus-mt configs set it): the token a row makes at
    its own length limit is EOS. A logit filter of `generate` over B rows or B·K beams (tokens
    (R, T)); `limits` (B,) new tokens per row after a `prompt_length`-token prompt."""

    def __init__(self, eos_id: int, limits: Tensor, prompt_length: int = 1) -> None:
        self.eos_id, self.limits, self.prompt_length = eos_id, limits, prompt_length

    def __call__(self, tokens: Tensor, logits: Tensor) -> Tensor:
        limits = self.limits.repeat_interleave(tokens.shape[0] // self.limits.shape[0])  # beams of a row share it
        last = tokens.shape[1] - self.prompt_length == limits - 1
        if not bool(last.any()):
            return logits
        forced = torch.full_like(logits, float("-inf"))
        forced[:, self.eos_id] = 0.0
        return torch.where(last[:, None], forced, logits)


class Translator:
    """Translate lists of sentences with `model` (`encode` + `forward` contract) and `codec`.

    Args:
        model: Seq2Seq or T5 (eval mode is set).
        codec: its tokenizer.
        prefix: text put before every source (T5's task prefix, "translate English to German: ").
        max_source_tokens: longer sources are truncated (with a warning naming the row).
        max_target_tokens: cap on generated tokens (the model's positions).
        forced_eos_id: make this token (EOS) at each row's length limit (`ForcedEos`), as
            transformers does for configs with `forced_eos_token_id`.
        defaults: the model's own decoding settings (`TranslationOptions` fields, `DECODING_DEFAULTS`: beam_size,
            length_penalty, early_stopping, the repetition rules, min_new_tokens, renormalize_logits, sampling), as a
            transformers directory's generation_config.json gives them (opus-mt: 4 or 6 beams, renormalize_logits):
            `translate` without options and `default_options` use them, as `generate` does.
    """

    def __init__(self, model: nn.Module, codec: TextCodec, prefix: str = "", max_source_tokens: int = 512,
                 max_target_tokens: int = 512, forced_eos_id: int | None = None,
                 defaults: dict[str, Any] | None = None) -> None:
        self.model, self.codec, self.prefix = model.eval(), codec, prefix
        self.max_source_tokens, self.max_target_tokens = max_source_tokens, max_target_tokens
        self.forced_eos_id = forced_eos_id
        self.defaults = dict(defaults or {})
        # what a sampling run takes where not given (`generation_config.sampling_fallbacks`; an import's config)
        self.sampling_fallbacks: dict[str, Any] = {}
        # fp32 unless `load_translator` sets another precision (`prepare_arithmetic`)
        self.precision, self._autocast = "fp32", contextlib.nullcontext

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def export(self, directory: str | Path) -> Path:
        """Save as an mmkit export (config.json + model.safetensors + the tokenizer files, decoding
        settings in the metadata) that `load_translator` reads back with the same outputs: how an
        imported MarianMT or T5 becomes a native model directory. `directory` must be new or empty
        (`check_export_dir`): the export never overwrites another model's files, and is there whole or not at
        all (`export_folder`)."""
        from mmkit.inference.quantize import check_exportable

        check_exportable(self.model, TranslatorError)
        if self.codec.save is None:
            raise TranslatorError("this translator's tokenizer cannot be saved")
        c = self.codec
        meta = dict(task="translation", start_id=c.start_id, eos_id=c.eos_id, pad_id=c.pad_id, prefix=self.prefix,
                    suppress=c.suppress, forced_eos_id=self.forced_eos_id, max_source_tokens=self.max_source_tokens,
                    max_target_tokens=self.max_target_tokens, decoding=self.defaults,
                    sampling_fallbacks=self.sampling_fallbacks)
        with export_folder(directory, TranslatorError) as stage:  # whole or not at all
            self.model.save_pretrained(stage, metadata={**meta, "tokenizer": c.save(stage)})
        return Path(directory).expanduser()

    def encode_source(self, text: str, row: int | None = None) -> list[int]:
        """Source ids (truncated to max_source_tokens, EOS kept); TranslatorError when the
        vocabulary cannot encode most of it."""
        ids = self.codec.encode(self.prefix + text)
        where = f"line {row + 1}: " if row is not None else ""
        if self.codec.unk_id is not None and self.codec.unk_id in ids:
            # SentencePiece folds a run of unknown characters into one <unk>: count words instead
            words = text.split()
            unknown = [w for w in words if self.codec.unk_id in self.codec.encode(w)]
            if len(unknown) / len(words) > UNKNOWN_SHARE:
                raise TranslatorError(f"{where}the model's vocabulary cannot encode {len(unknown)} of {len(words)} "
                                      f"words (e.g. {unknown[0]!r}): another script or language?")
        if len(ids) > self.max_source_tokens:
            log.warning("%ssource of %d tokens truncated to %d", where, len(ids), self.max_source_tokens)
            ids = ids[: self.max_source_tokens - 1] + [self.codec.eos_id]
        return ids

    def plan(self, texts: str | Sequence[str], options: TranslationOptions, first_row: int = 0) -> TranslationPlan:
        """What `translate` does with `texts` (a lone str is one text, `as_items`): each source encoded (an error
        on the rows it cannot encode, messages naming text i as line `first_row + i + 1`), then the length-sorted
        batches. Ranks sharing a run (`mmkit translate` under torchrun) each make the whole plan and run some of
        its batches (`translate_batches`): one process's batches, so its translations."""
        texts = text_items(texts)
        results = [Translation(t) for t in texts]
        todo: list[tuple[int, list[int]]] = []
        for i, text in enumerate(texts):
            if not text.strip():
                continue  # empty line -> empty translation, so lines stay aligned
            try:
                todo.append((i, self.encode_source(text, first_row + i)))
            except TranslatorError as e:
                results[i].error = str(e)
        todo.sort(key=lambda item: len(item[1]))  # similar lengths share a batch: little padding
        batches = [[i for i, _ in todo[start : start + options.batch_size]]
                   for start in range(0, len(todo), options.batch_size)]
        return TranslationPlan(results, dict(todo), batches, first_row)

    def translate_batches(self, plan: TranslationPlan, batches: Sequence[list[int]], options: TranslationOptions,
                          on_batch: Callable[[int], None] | None = None) -> list[Translation]:
        """`plan.results` with the rows of `batches` (some of `plan.batches`) translated."""
        for rows in batches:
            for i, found in zip(rows, self._decode([plan.sources[i] for i in rows], options,
                                                   [plan.first_row + i for i in rows])):
                result = plan.results[i]
                result.candidates = [Candidate(self.codec.decode(ids), ids, score) for ids, score in found]
                result.tokens, result.text = result.candidates[0].tokens, result.candidates[0].text
            if on_batch is not None:
                on_batch(len(rows))
        return plan.results

    def default_options(self, **given: Any) -> TranslationOptions:
        """`TranslationOptions` of the model's own decoding settings (`defaults_for(given)`) with `given`'s over
        them (a None is not given)."""
        given = {k: v for k, v in given.items() if v is not None}
        return TranslationOptions(**with_top_k_off({**self.defaults_for(given), **given}))

    def defaults_for(self, given: dict[str, Any]) -> dict[str, Any]:
        """The model's own settings that options `given` leave in force (`generation_config.defaults_for`): a
        sampling setting given drops the model's beams, a beam count given its sampling, and a run that samples
        takes the sampling settings it is not given from `sampling_fallbacks` (transformers' top_k 50 for an
        imported model: a top_k of 0 given switches top-k off, `with_top_k_off`)."""
        return defaults_for(self.defaults, given, BEAM_ONLY, self.sampling_fallbacks)

    def translate(self, texts: str | Sequence[str], options: TranslationOptions | None = None,
                  on_batch: Callable[[int], None] | None = None, first_row: int = 0) -> list[Translation]:
        """One `Translation` per text, in order (a lone str is one text: a list of one); `on_batch(n)` after
        every n sources done. Messages name text i as line `first_row + i + 1`, and a seeded sampling draws it
        from row `first_row + i`'s seed (a file read in chunks passes each chunk's offset). Without `options`, the
        model's own settings; options given are used as they are (`default_options(batch_size=8)` starts from the
        model's)."""
        options = options or self.default_options()
        plan = self.plan(texts, options, first_row)
        if plan.skipped and on_batch is not None:
            on_batch(plan.skipped)
        return self.translate_batches(plan, plan.batches, options, on_batch)

    @torch.no_grad()
    def _decode(self, sources: list[list[int]], options: TranslationOptions,
                rows: Sequence[int]) -> list[list[tuple[list[int], float]]]:
        """Per source, its `options.num_return_sequences` translations: (token ids without start and EOS, score)."""
        c = self.codec
        src = torch.full((len(sources), max(map(len, sources))), c.pad_id, device=self.device)
        for r, ids in enumerate(sources):
            src[r, : len(ids)] = torch.tensor(ids)
        mask = src != c.pad_id
        mask[:, 0] = True  # a source that is only padding ids still attends somewhere
        # Each row stops at its own limit (relative to its own source), as it would alone.
        limits = torch.tensor([options.limit(len(ids), self.max_target_tokens) for ids in sources],
                              device=self.device)
        n, repeats = options.num_return_sequences, options.repeats
        strategy = options.strategy(self.device, rows)
        # repetition rules and minimum length, suppressed tokens, then the forced EOS, which overrides them all, as
        # in transformers' processors (the others ban tokens, in any order), and the renormalisation after them all
        source = SourceTokens(src, torch.tensor([len(ids) for ids in sources], device=self.device))
        filters = options.filters(c.eos_id, source) + ([SuppressTokens(c.suppress)] if c.suppress else [])
        with self._autocast():
            memory = self.model.encode(src, mask)
            if repeats > 1:  # n samples a source: its encoding once, its rows repeated (transformers' layout)
                memory, mask, limits = (t.repeat_interleave(repeats, dim=0) for t in (memory, mask, limits))
            if self.forced_eos_id is not None:  # the limits of the rows decoded
                filters.append(ForcedEos(self.forced_eos_id, limits))
            if options.renormalize_logits:
                filters.append(LogitNormalization())
            out = generate(self.model, torch.full((len(sources) * repeats, 1), c.start_id, device=self.device),
                           limits, strategy, context=memory, context_mask=mask, eos_id=c.eos_id, pad_id=c.pad_id,
                           logit_filters=filters)
        found = [([t for t in seq[1:].tolist() if t != c.eos_id], score)
                 for seq, score in zip(out.sequences, out.scores.tolist())]
        return [found[i * n: (i + 1) * n] for i in range(len(sources))]

    @torch.no_grad()
    def cross_attention(self, text: str, target: list[int]) -> tuple[list[str], list[str], Tensor]:
        """The decoder's cross-attention for `target` given `text`, averaged over layers and
        heads: (source pieces, target pieces, (T, S) weights), each row summing to 1."""
        src = torch.tensor([self.encode_source(text)], device=self.device)
        tokens = torch.tensor([[self.codec.start_id] + target], device=self.device)
        memory = self.model.encode(src)
        # Only this thread's forward passes are recorded: a demo runs requests on one model concurrently.
        _, maps = attention_maps(self.model, lambda: self.model(tokens, context=memory), cross=True)
        weights = torch.stack(maps).mean(dim=(0, 2))[0]  # (T, S): row t is what predicted target[t]
        return self.codec.pieces(src[0].tolist()), self.codec.pieces(target + [self.codec.eos_id]), weights


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, TranslatorError)


# What `Translator.export` writes in config.json's metadata (types and ranges as config_check's rules).
EXPORT_METADATA = {"task": str, "tokenizer": str, "start_id": int, "eos_id": int, "pad_id": int, "prefix": str,
                   "suppress": list[int], "forced_eos_id": Optional[int], "max_source_tokens": int,
                   "max_target_tokens": int, "decoding": dict, "sampling_fallbacks": dict}
_METADATA_IDS = ("start_id", "eos_id", "pad_id", "forced_eos_id", "suppress")


def load_translator(path: str | Path, prefix: str | None = None, device: str = "cpu",
                    quantize: str = "none", precision: str = "fp32") -> Translator:
    """`--model DIR`: an mmkit export (Seq2Seq or T5 with spm.model, from `mmkit fit` or
    `export_translator`), or a transformers MarianMT or T5 directory with its SentencePiece
    tokenizer files. `quantize` "int8": int8 Linear layers and vocabulary projection on the CPU
    (`mmkit.inference.quantize`; its agreement with fp32 is measured by `mmkit bench translate`).
    `precision`: "fp32" (exact, the default), "bf16", "fp16" or "auto", an autocast around the
    encoder and decoder (`resolve_precision`; the logits stay fp32)."""
    from mmkit.inference.precision import PRECISIONS
    from mmkit.inference.quantize import QUANTIZATIONS, prepare_arithmetic

    if quantize not in QUANTIZATIONS:
        raise TranslatorError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    if precision not in PRECISIONS:
        raise TranslatorError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    directory = Path(path).expanduser()
    if not (directory / "config.json").is_file():
        raise TranslatorError(f"{directory}: not a model directory (no config.json): give an mmkit translation "
                              "export or a MarianMT / T5 directory")
    cfg = _read_json(directory / "config.json")
    if "architecture" in cfg:
        check_format_version(cfg, str(directory / "config.json"))
        translator = _load_native(directory, cfg)
    else:
        translator = _load_hf(directory, cfg)
    if prefix is not None:
        translator.prefix = prefix
    translator.model.to(device)
    try:
        translator.precision, translator._autocast = prepare_arithmetic(translator.model, precision, quantize,
                                                                        str(directory), pack=True)
    except ValueError as e:  # bf16 with int8, fp16 on a CPU
        raise TranslatorError(str(e)) from None
    return translator


def _load_native(directory: Path, doc: dict[str, Any]) -> Translator:
    """An mmkit export: its config.json and metadata are checked (types, ids within the model's
    vocabulary, a tokenizer file inside `directory`) before the weights are read."""
    from mmkit.models import T5, Seq2Seq

    arch = doc.get("architecture")
    classes = {"Seq2Seq": Seq2Seq, "T5": T5}
    if arch not in classes:
        raise TranslatorError(f"{directory}: holds a {arch} checkpoint, not a translation model (Seq2Seq, T5, "
                              "MarianMT)")
    where = f"{directory / 'config.json'}: metadata"
    meta = check_fields(doc.get("metadata", {}), EXPORT_METADATA, where)
    vocab_size = classes[arch].read_config(directory)["config"].get("vocab_size")
    check_token_ids(meta, _METADATA_IDS, vocab_size, where)
    if meta.get("tokenizer") == TRANSFORMERS_TOKENIZER:  # an imported MarianMT/T5 saved by Translator.export
        check_fields(meta, {}, where, required=("start_id", "eos_id", "pad_id"))
        codec = _hf_codec(directory, meta["start_id"], meta["eos_id"], meta["pad_id"], meta.get("suppress", []))
    else:
        codec = _spm_codec(directory, meta, vocab_size)
    model = classes[arch].from_pretrained(directory)
    max_len = getattr(model, "max_len", 512)
    translator = Translator(model, codec, meta.get("prefix", ""), meta.get("max_source_tokens", max_len),
                            meta.get("max_target_tokens", max_len - 1), meta.get("forced_eos_id"),
                            checked_decoding(meta.get("decoding", {}), where))
    translator.sampling_fallbacks = checked_decoding(meta.get("sampling_fallbacks", {}), where)
    return translator


def _tokenizer_file(directory: Path, name: str, where: str) -> Path:
    """`directory / name` for a metadata `tokenizer` name that stays inside `directory` (a copied or
    downloaded export must not make mmkit read files elsewhere); symlinks placed in it are followed."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise TranslatorError(f"{where}: field 'tokenizer' must name a file inside the model directory, "
                              f"got {name!r}")
    return directory / relative


def _spm_codec(directory: Path, meta: dict[str, Any], vocab_size: int) -> TextCodec:
    from mmkit.data.spm_tokenizer import SentencePieceTokenizer

    spm_file = _tokenizer_file(directory, meta.get("tokenizer", "spm.model"), f"{directory / 'config.json'}: metadata")
    if not spm_file.is_file():
        raise TranslatorError(f"{directory}: no tokenizer ({spm_file.name}) next to the model")
    try:
        tok = SentencePieceTokenizer.load(spm_file)
    except ValueError as e:  # names the file
        raise TranslatorError(str(e)) from None
    if len(tok) > vocab_size:  # its ids would index past the embedding
        raise TranslatorError(f"{spm_file}: the tokenizer has {len(tok)} tokens, the model {vocab_size}: they do "
                              "not belong together")
    return TextCodec(tok.encode, tok.decode, lambda ids: [tok.sp.id_to_piece(i) for i in ids],
                     meta.get("start_id", tok.start_id), meta.get("eos_id", tok.eos_id),
                     meta.get("pad_id", tok.pad_id), tok.unk_id, save=lambda out: tok.save(out).name)


def _hf_codec(directory: Path, start_id: int, eos_id: int, pad_id: int, suppress: Sequence[int]) -> TextCodec:
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(directory))
    except Exception as e:  # noqa: BLE001 - missing/corrupt tokenizer files: one message
        raise TranslatorError(f"{directory}: cannot load its tokenizer ({type(e).__name__}: {e})") from None

    def save(out: Path) -> str:
        tok.save_pretrained(str(out))
        return TRANSFORMERS_TOKENIZER

    return TextCodec(lambda t: tok(t).input_ids, lambda ids: tok.decode(ids, skip_special_tokens=True),
                     tok.convert_ids_to_tokens, start_id, eos_id, pad_id, tok.unk_token_id, suppress, save)


def _load_hf(directory: Path, cfg: dict[str, Any]) -> Translator:
    from mmkit.models import T5, Seq2Seq

    kind = cfg.get("model_type")
    classes = {"marian": Seq2Seq, "t5": T5, "mt5": T5}
    if kind not in classes:
        raise TranslatorError(f"{directory}: holds a {kind or 'unknown'} model, not a translation model "
                              "(MarianMT, T5, or an mmkit Seq2Seq/T5 export)")
    model = classes[kind].from_hf(directory)
    generation = directory / "generation_config.json"  # where transformers >= 4.3x keeps generate()'s settings
    decoding = _read_json(generation) if generation.is_file() else cfg  # transformers reads one or the other
    settings = {**cfg, **decoding}
    bad_words, forced_eos = settings.get("bad_words_ids"), settings.get("forced_eos_token_id")
    where = f"{generation if generation.is_file() else directory / 'config.json'}"
    say_unapplied(decoding, bad_words, where)
    codec = _hf_codec(directory, int(cfg["decoder_start_token_id"]), int(cfg["eos_token_id"]),
                      int(cfg["pad_token_id"]), [w[0] for w in bad_words or [] if len(w) == 1])
    # Marian's sinusoid table bounds both sides; T5's relative positions do not (512 as its tokenizers).
    max_len = cfg.get("max_position_embeddings", 512)
    defaults = checked_decoding({**shared_settings(decoding, where),
                                 "min_new_tokens": _min_new_tokens(decoding, where),
                                 "renormalize_logits": decoding.get("renormalize_logits"),
                                 "encoder_repetition_penalty": decoding.get("encoder_repetition_penalty"),
                                 "encoder_no_repeat_ngram_size": decoding.get("encoder_no_repeat_ngram_size")},
                                where)
    translator = Translator(model, codec, "", max_len, max_len - 1, None if forced_eos is None else int(forced_eos),
                            defaults)
    translator.sampling_fallbacks = checked_decoding(sampling_fallbacks(decoding), where)
    return translator


def _min_new_tokens(decoding: dict[str, Any], where: str) -> Any:
    """min_new_tokens of a transformers generation config: its own, or else its min_length less the decoder's start
    token, which transformers' `MinLengthLogitsProcessor` counts in an encoder-decoder's length (decoder input_ids
    of 1 + new tokens): min_length L bans EOS before L - 1 new tokens. A min_new_tokens set wins, 0 included, as
    transformers' `_prepare_generated_length` makes min_length = min_new_tokens + 1 then. None: neither is set."""
    if decoding.get("min_new_tokens") is not None:
        return decoding["min_new_tokens"]
    min_length = decoding.get("min_length")
    if min_length is None:
        return None
    if isinstance(min_length, bool) or not isinstance(min_length, int) or min_length < 0:
        raise TranslatorError(f"{where}: a decoding setting mmkit cannot use (min_length must be an integer >= 0, "
                              f"got {min_length!r})")
    return max(min_length - 1, 0)


def checked_decoding(settings: dict[str, Any], where: str) -> dict[str, Any]:
    """The `TranslationOptions` fields among `settings` (`DECODING_DEFAULTS`; None: not set), checked as the options
    check them (`generation_config.checked_settings`): a TranslatorError of one line naming `where`, not a failure
    at the first sentence. transformers' defaults (1 beam, repetition_penalty 1.0, no_repeat_ngram_size and
    min_new_tokens 0, renormalize_logits false) are settings not made: save_pretrained writes some out."""
    return checked_settings(settings, DECODING_DEFAULTS, TranslationOptions, where, TranslatorError)
