"""Text generation with GPT-style models (Radford et al., 2019) on the shared decoding loop
(`mmkit.core.generate`: greedy, sampling, beam search, KV cache), streaming text as tokens come.
`--model DIR` means an mmkit export (`save_text_generator`) or a transformers GPT-2 checkpoint
directory (config.json + weights + tokenizer files); `load_text_generator` tells them apart.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from mmkit.core import GenerationOptions, KVCache, generate, left_padded
from mmkit.data.gpt_tokenizer import EOS_TOKEN, ByteBPETokenizer
from mmkit.inference.generation_config import (
    SAMPLING, checked_settings, defaults_for, sampling_fallbacks, say_unapplied, shared_settings, with_top_k_off,
)
from mmkit.inference.inputs import as_items, check_count, text_items
from mmkit.inference.model_dir import export_folder, read_model_dir
from mmkit.inference.quantize import check_exportable, prepare_arithmetic
from mmkit.inference.seeds import sample_seed
from mmkit.inference.thread_stream import ThreadStream
from mmkit.limits import MAX_SAMPLES
from mmkit.models.gpt import GPT
from mmkit.weights.config_check import read_json_object
from mmkit.weights.native import WeightsError

log = logging.getLogger(__name__)
# The `GenerationOptions` fields a transformers generation config may give (`hf_decoding_defaults`), those of them
# that only a beam search uses, and the config's settings mmkit does not apply to a decoder-only model (with their
# values that leave them off), besides `generation_config.UNAPPLIED`.
GPT_DEFAULTS = ("beam_size", "length_penalty", "early_stopping", "repetition_penalty", "no_repeat_ngram_size",
                "min_new_tokens", "max_new_tokens", "temperature", "top_k", "top_p")
GPT_BEAM_ONLY = ("length_penalty", "early_stopping")
GPT_UNAPPLIED = {"min_length": (0, None), "max_length": (20, None), "bad_words_ids": (None,),
                 "renormalize_logits": (False, None), "encoder_repetition_penalty": (1.0, None),
                 "encoder_no_repeat_ngram_size": (0, None), "forced_eos_token_id": (None,)}


def save_text_generator(model: GPT, tokenizer: ByteBPETokenizer, directory: str | Path,
                        decoding: dict[str, Any] | None = None,
                        sampling_fallbacks: dict[str, Any] | None = None) -> Path:
    """Native checkpoint (config.json + model.safetensors) with the tokenizer files beside it. `decoding`: the
    model's own decoding settings (`GenerationOptions` fields among `GPT_DEFAULTS`: beam_size, temperature, top_k,
    top_p, the repetition rules, max_new_tokens, ...), which `mmkit generate-text` and
    `TextGenerator.default_options` use where no option is given, as a transformers generation config;
    `sampling_fallbacks`: what a sampling run takes where not given (an imported GPT-2's top_k 50). Both are
    checked first (a ValueError of one line naming the setting: nothing written). Generation ends at the
    tokenizer's end-of-text token (`eos_token`; None: at none)."""
    decoding = checked_decoding(decoding or {}, "decoding")
    fallbacks = checked_decoding(sampling_fallbacks or {}, "sampling_fallbacks", SAMPLING)
    directory = model.save_pretrained(directory, metadata={"tokenizer": "byte_bpe", "eos_token": tokenizer.eos_token,
                                                           "decoding": decoding, "sampling_fallbacks": fallbacks})
    tokenizer.save(directory)
    return directory


def checked_decoding(settings: dict[str, Any], where: str, fields: tuple[str, ...] = GPT_DEFAULTS,
                     error: type[Exception] = ValueError) -> dict[str, Any]:
    """A model's own decoding settings (or, `fields` `SAMPLING`, its sampling fallbacks) as the `GenerationOptions`
    fields that are set, checked as the options check them (`generation_config.checked_settings`): an `error` of
    one line naming `where`, not a failure at the first prompt."""
    return checked_settings(settings, fields, GenerationOptions, where, error)


def load_text_generator(directory: str | Path, device: str | torch.device = "cpu",
                        quantize: str = "none", precision: str = "fp32") -> "TextGenerator":
    """A `TextGenerator` for an mmkit GPT export or a transformers GPT-2 checkpoint directory;
    `quantize` "int8" gives every Linear and the tied output projection int8 weights (CPU only);
    `precision` as `TextGenerator`'s.

    Raises:
        FileNotFoundError: no such directory, or no tokenizer files in it.
        NotADirectoryError: a file given where a model directory is expected.
        WeightsError: not a GPT checkpoint, or unreadable weights (one-line message).
        ValueError: int8 asked for on a device other than the CPU, or with bf16/fp16.
    """
    directory, doc = read_model_dir(directory)
    if doc.get("architecture") == GPT.architecture_name():
        model = GPT.from_pretrained(directory)
        eos_token = doc.get("metadata", {}).get("eos_token", EOS_TOKEN)
        tokenizer = ByteBPETokenizer.from_dir(directory, eos_token)
        eos_id = tokenizer.eos_id
        meta = doc.get("metadata", {})  # the export's decoding settings (none before they were saved)
        where = f"{directory / 'config.json'}: metadata"
        defaults = checked_decoding(meta.get("decoding", {}), f"{where} decoding", GPT_DEFAULTS, WeightsError)
        fallbacks = checked_decoding(meta.get("sampling_fallbacks", {}), f"{where} sampling_fallbacks", SAMPLING,
                                     WeightsError)
    elif doc.get("model_type") == "gpt2":
        model = GPT.from_hf(directory)
        tokenizer = ByteBPETokenizer.from_dir(directory)
        eos_id = doc.get("eos_token_id", tokenizer.eos_id)
        eos_id = eos_id[0] if isinstance(eos_id, list) and eos_id else eos_id  # some configs list several
        defaults, fallbacks = hf_decoding_defaults(directory, doc)
    else:
        kind = doc.get("architecture") or doc.get("model_type") or "unknown"
        raise WeightsError(f"{directory}: holds a {kind!r} model, not a GPT (mmkit export or transformers GPT-2)")
    if tokenizer.vocab_size > model.vocab_size:
        raise WeightsError(f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens, the model "
                           f"{model.vocab_size}: they do not belong together")
    generator = TextGenerator(model, tokenizer, eos_id, device, quantize, precision)
    generator.defaults, generator.sampling_fallbacks = defaults, fallbacks
    return generator


def hf_decoding_defaults(directory: Path, config: dict) -> tuple[dict, dict]:
    """The decoding settings of a transformers GPT-2 directory (its generation_config.json, else config.json, as
    transformers reads them) as `GenerationOptions` fields: num_beams, length_penalty, early_stopping,
    repetition_penalty, no_repeat_ngram_size, min_new_tokens, max_new_tokens and do_sample's temperature / top_k /
    top_p (`generation_config.shared_settings`). Those mmkit does not apply are named at load (min_length and
    max_length count the prompt in a decoder-only model: one limit a prompt, where mmkit's are new tokens; bad
    words, renormalize_logits, the encoder's rules; a max_length beside a max_new_tokens, which transformers
    overrides too, or of transformers' own 20 is not named). A
    value the options refuse is a WeightsError of one line naming the file. Returns (the settings, what a sampling
    run takes where not given: `generation_config.sampling_fallbacks`)."""
    path = directory / "generation_config.json"
    where = str(path if path.is_file() else directory / "config.json")
    decoding = read_json_object(path) if path.is_file() else config
    # a max_new_tokens set wins over max_length in transformers too: only a max_length alone goes unapplied
    length_given = decoding.get("max_new_tokens") is not None
    say_unapplied({k: v for k, v in decoding.items() if not (k == "max_length" and length_given)}, None, where,
                  also=GPT_UNAPPLIED)
    given = {**shared_settings(decoding, where), "min_new_tokens": decoding.get("min_new_tokens"),
             "max_new_tokens": decoding.get("max_new_tokens")}
    return (checked_decoding(given, where, GPT_DEFAULTS, WeightsError),
            checked_decoding(sampling_fallbacks(decoding), where, SAMPLING, WeightsError))


class TextGenerator:
    """Prompt -> continuation. `generate` calls `on_text(piece)` with each new piece of text
    (whole characters only: a piece never ends inside a multi-byte character or a stop string
    that may still complete); `stream` yields the same pieces.

    Args:
        model: a GPT (any decoder with `max_len`/`vocab_size` and the decoding contract).
        tokenizer: the model's `ByteBPETokenizer`.
        eos_id: generation ends at this token (None: only at max_new_tokens or a stop string).
        device: where the model runs.
        quantize: "none" (fp32, exact) or "int8" (`mmkit.inference.quantize`: int8 Linear weights and
            output projection, CPU only; its tokens may differ from fp32's: measured in `bench text`).
        precision: "fp32" (exact, the default), "bf16", "fp16" or "auto" (autocast around the decoder,
            whose logits stay fp32: `mmkit.core.heads.output_logits`).
    """

    def __init__(self, model: GPT, tokenizer: ByteBPETokenizer, eos_id: int | None = None,
                 device: str | torch.device = "cpu", quantize: str = "none", precision: str = "fp32") -> None:
        self.defaults: dict = {}  # the model's own decoding settings (`load_text_generator`: a generation config's)
        self.sampling_fallbacks: dict = {}  # what a sampling run takes where not given (`sampling_fallbacks`)
        self.model = model.to(device).eval()
        self.precision, self._autocast = prepare_arithmetic(self.model, precision, quantize, "text generator",
                                                            pack=True)
        self.tokenizer, self.eos_id, self.device = tokenizer, eos_id, torch.device(device)
        # Characters of the longest token (a byte-level token's string has one character per byte; added
        # tokens such as <|endoftext|> included): the prompt tail that surely holds a context of tokens.
        self._longest_token = max(map(len, tokenizer.hf.get_vocab(with_added_tokens=True)), default=1)

    def default_options(self, **given: Any) -> GenerationOptions:
        """`GenerationOptions` of the model's own decoding settings (`defaults`: a transformers directory's generation
        config) with `given`'s over them (a None is not given), as `generate(...)` arguments override a generation
        config: a sampling setting given drops the model's beams, a beam count given its sampling
        (`defaults_for`). `generate`, `stream` and `generate_many` without options use them."""
        given = {k: v for k, v in given.items() if v is not None}
        return GenerationOptions(**with_top_k_off({**self.defaults_for(given), **given}))

    def defaults_for(self, given: dict[str, Any]) -> dict[str, Any]:
        """The model's own settings that options `given` leave in force (`generation_config.defaults_for`), a
        sampling run's fallbacks included (transformers' top_k 50 for a transformers directory; a top_k of 0 given
        switches top-k off)."""
        return defaults_for(self.defaults, given, GPT_BEAM_ONLY, self.sampling_fallbacks)

    def export(self, directory: str | Path) -> Path:
        """Save as an mmkit export (config.json + model.safetensors + the tokenizer files, the end-of-text token
        and the model's own decoding settings in the metadata: `defaults`, `sampling_fallbacks`) that
        `load_text_generator` reads back with the same outputs: how an imported GPT-2 becomes a native model
        directory. `directory` must be new or empty: the export never overwrites another model's files, and is
        there whole or not at all (`model_dir.export_folder`).

        Raises:
            WeightsError: a folder that holds files, or an int8 model (export the fp32 one: int8 is applied at
                load).
            OSError: a folder that cannot be written (one line).
        """
        check_exportable(self.model, WeightsError)
        # the end-of-text token generation stops at (a GPT-2 config's eos_token_id), named in the export
        eos = self.tokenizer.hf.id_to_token(self.eos_id) if self.eos_id is not None else None
        tokenizer = ByteBPETokenizer(self.tokenizer.hf, eos)
        with export_folder(directory) as stage:  # whole or not at all
            save_text_generator(self.model, tokenizer, stage, self.defaults, self.sampling_fallbacks)
        return Path(directory).expanduser()

    def prepare_prompt(self, prompt: str, max_new_tokens: int) -> PromptTokens:
        """The prompt as the model reads it: its last `max_len - max_new_tokens` tokens at most, and a note
        when more were dropped. Only the prompt's end is tokenized (`_prompt_tail`): a prompt of megabytes
        costs what a prompt of a few thousand characters does.

        Raises:
            ValueError: an empty prompt, one with no known token, or no room left for it.
        """
        if not prompt.strip():
            raise ValueError("the prompt is empty")
        room = self.model.max_len - max_new_tokens
        if room < 1:
            raise ValueError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's "
                             f"context of {self.model.max_len} tokens")
        tail = _prompt_tail(prompt, self.model.max_len * self._longest_token)
        ids = [i for i in self.tokenizer.encode(tail) if i < self.model.vocab_size]
        if not ids:
            raise ValueError("the prompt has no token this model knows")
        if len(ids) <= room:
            return PromptTokens(ids)
        size = f"{len(ids)} tokens" if tail is prompt else f"{len(prompt)} characters (at least {len(ids)} tokens)"
        return PromptTokens(ids[-room:], f"the prompt has {size}; keeping its last {room} "
                                         f"(context {self.model.max_len} - {max_new_tokens} new tokens)")

    def encode_prompt(self, prompt: str, max_new_tokens: int, warn: bool = True) -> list[int]:
        """`prepare_prompt`'s ids, logging its note (what was cut) as a warning unless `warn` is False."""
        prepared = self.prepare_prompt(prompt, max_new_tokens)
        if prepared.note and warn:
            log.warning(prepared.note)
        return prepared.ids

    def _ids(self, prompt: str | PromptTokens, max_new_tokens: int) -> list[int]:
        if not isinstance(prompt, PromptTokens):
            if not isinstance(prompt, str):  # a list of prompts: one generation takes one
                raise TypeError(f"prompt must be a string (or PromptTokens), got {type(prompt).__name__}")
            return self.encode_prompt(text_items(prompt, "prompt")[0], max_new_tokens)
        if len(prompt.ids) + max_new_tokens > self.model.max_len:
            raise ValueError(f"{len(prompt.ids)} prompt tokens + max_new_tokens {max_new_tokens} exceed the "
                             f"model's context of {self.model.max_len}: prepare the prompt with the same setting")
        return prompt.ids

    def generate(self, prompt: str | PromptTokens, options: GenerationOptions | None = None,
                 stop: str | Sequence[str] = (), on_text: Callable[[str], None] | None = None) -> str:
        """The continuation of `prompt` (without the prompt), cut before the first stop string (`stop`: one
        string, or several; "END" is one stop string, not E, N or D). `prompt` is a text, or `prepare_prompt`'s
        result for the same max_new_tokens (tokenized once, its note not logged)."""
        options = options or self.default_options()
        stream = _TextStream([s for s in as_items(stop) if s], on_text)
        text = self._continuations(prompt, options, stop, stream.update if on_text else None)[0]
        stream.finish(text)
        return text

    def samples(self, prompt: str | PromptTokens, options: GenerationOptions, n: int,
                stop: str | Sequence[str] = ()) -> list[str]:
        """`n` continuations of `prompt` (transformers' `num_return_sequences`), decoded in one batch: `n` samples
        where `options` sample (temperature, top_k or top_p), sample j drawn from its own seed with
        `options.seed` (`sample_seed`: sample 0 is `generate`'s), or a beam search's `n` best, best first (n <=
        beam_size); greedy decoding has one to give. Each is cut before its first stop string, as `generate`'s."""
        return self.continuations([prompt], options, n, stop)[0]

    def generate_many(self, prompts: Sequence[str | PromptTokens], options: GenerationOptions | None = None,
                      stop: str | Sequence[str] = (), batch_size: int = 8) -> list[str]:
        """The continuation of each prompt, in order, each as `generate` gives it alone (transformers'
        `pipeline(prompts, batch_size=...)`): `batch_size` prompts decoded together, shortest first, each batch
        left-padded to its longest prompt (`KVCache.padding`: every row positioned from its first token, the
        padding masked out). Sampling with `options.seed` draws each prompt's tokens from its own generator so
        seeded, as alone; `repetition_penalty` and `no_repeat_ngram_size` read each row's own tokens, not its
        padding."""
        return [texts[0] for texts in self.continuations(prompts, options or self.default_options(), 1, stop,
                                                         batch_size)]

    def continuations(self, prompts: Sequence[str | PromptTokens], options: GenerationOptions, n: int = 1,
                      stop: str | Sequence[str] = (), batch_size: int = 8) -> list[list[str]]:
        """`n` continuations of each prompt, in order, each prompt's as `samples` gives them alone, `batch_size`
        prompts decoded together as in `generate_many` (n rows each where it samples)."""
        check_count("batch_size", batch_size)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SAMPLES:
            raise ValueError(f"the number of continuations must be an integer in [1, {MAX_SAMPLES}], got {n!r}")
        if n > options.beam_size > 1:
            raise ValueError(f"{n} continuations exceed the beam size {options.beam_size}: a beam search keeps "
                             "beam_size hypotheses")
        if n > 1 and options.beam_size == 1 and not options.sampling:
            raise ValueError("several continuations need sampling (a temperature, top_k or top_p) or a beam search "
                             "(beam_size >= n): greedy decoding gives the same one each time")
        if isinstance(prompts, (str, PromptTokens)):
            raise TypeError("prompts must be a list of prompts: give one prompt to generate()")
        ids = []
        for k, prompt in enumerate(prompts, 1):
            try:
                ids.append(self._ids(prompt, options.max_new_tokens))
            except ValueError as e:  # which of many prompts
                raise ValueError(f"prompt {k}: {e}" if len(prompts) > 1 else str(e)) from None
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        out: list[list[str]] = [[] for _ in ids]
        for rows in batches:
            texts = self._decode_rows([ids[i] for i in rows], options, stop, seeded=True, n=n)
            for k, i in enumerate(rows):
                out[i] = texts[k * n: (k + 1) * n]
        return out

    def _continuations(self, prompt: str | PromptTokens, options: GenerationOptions, stop: str | Sequence[str],
                       on_text: Callable[[str], None] | None = None) -> list[str]:
        """`prompt`'s continuation, one generator seeded by `options.seed` (`generate`); `on_text` follows its
        text as it grows."""
        return self._decode_rows([self._ids(prompt, options.max_new_tokens)], options, stop, on_text)

    def _decode_rows(self, rows: list[list[int]], options: GenerationOptions, stop: str | Sequence[str],
                     on_text: Callable[[str], None] | None = None, seeded: bool = False,
                     n: int = 1) -> list[str]:
        """`n` continuations of each of prompt ids `rows` (of any lengths: left-padded), decoded together, a row's
        after another's; `on_text` follows row 0's text as it grows. Sampling decodes n rows a prompt; `seeded`:
        a sampling seed seeds each row's own generator (`sample_seed(seed, j)` for sample j: each prompt draws as
        alone), else one generator draws for all rows. A beam search returns each prompt's `n` best."""
        repeats = n if options.sampling else 1
        rows = [row for row in rows for _ in range(repeats)]
        tokens, padding = left_padded(rows, self.eos_id or 0, self.device)
        P = tokens.shape[1]  # every row's prompt ends here
        cache = KVCache()
        cache.padding = padding if bool(padding.any()) else None
        stops = [s for s in as_items(stop) if s]
        seeds = ([sample_seed(options.seed, j) for _ in range(len(rows) // repeats) for j in range(repeats)]
                 if seeded and options.seed is not None else None)
        strategy = options.strategy(self.device, seeds, n)

        def text_of(row: Tensor) -> str:  # the generated text of a row, up to EOS
            new = row[P:].tolist()
            if self.eos_id is not None and self.eos_id in new:
                new = new[: new.index(self.eos_id)]
            return self.tokenizer.decode(new)

        def stop_rows(tokens: Tensor) -> Tensor:
            return torch.tensor([any(s in text_of(row) for s in stops) for row in tokens], device=tokens.device)

        with self._autocast():
            out = generate(self.model, tokens, options.max_new_tokens, strategy, eos_id=self.eos_id,
                           pad_id=self.eos_id or 0, logit_filters=options.filters(self.eos_id, P, cache.padding),
                           stop=stop_rows if stops else None, cache=cache,
                           on_step=(lambda tokens: on_text(text_of(tokens[0]))) if on_text else None)
        return [_cut_at_stop(text_of(row), stops) for row in out.sequences]

    def stream(self, prompt: str | PromptTokens, options: GenerationOptions | None = None,
               stop: str | Sequence[str] = ()) -> Iterator[str]:
        """`generate` as an iterator of text pieces (the decoding runs in a worker thread). The prompt is
        tokenized (and a bad one refused) here, in the caller's thread, before the iterator is returned.
        Closing the iterator early (`close()`, a `break`, a client gone) stops the decoding at its next piece:
        it ran on to `max_new_tokens` for nobody."""
        options = options or self.default_options()
        prepared = PromptTokens(self._ids(prompt, options.max_new_tokens))  # the worker neither re-encodes nor warns
        return self._pieces(prepared, options, stop)

    def _pieces(self, prompt: PromptTokens, options: GenerationOptions, stop: str | Sequence[str]) -> Iterator[str]:
        pieces: ThreadStream[str] = ThreadStream(lambda put: self.generate(prompt, options, stop, on_text=put))
        try:
            yield from pieces
        finally:
            pieces.close()


@dataclass(frozen=True)
class PromptTokens:
    """A prompt as the model reads it (`TextGenerator.prepare_prompt`): its token ids, and `note`, one
    sentence saying what was dropped to fit the context (None: nothing)."""

    ids: list[int]
    note: str | None = None


def _prompt_tail(prompt: str, chars: int) -> str:
    """The end of `prompt` that can reach the model, `prompt` itself unless it is over 2 * `chars` long.

    `chars` (context x the longest token's characters) always holds more tokens than the context, so the
    model's tokens are among the tail's. The tail starts at a whitespace within its first `chars`: the
    tokenizer splits words at whitespace before merging, so from the first word on the tail's tokens are the
    whole prompt's. Only a single run of whitespace or one "word" longer than `chars` characters at the
    cut may split differently there."""
    if len(prompt) <= 2 * chars:
        return prompt
    tail = prompt[-2 * chars:]
    space = re.search(r"\s", tail[:chars])
    return tail[space.start():] if space else tail


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cuts = [text.find(s) for s in stops if s in text]
    return text[: min(cuts)] if cuts else text


class _TextStream:
    """Emits the growing generated text piece by piece, holding back what could still change:
    an incomplete UTF-8 character (decoded as U+FFFD) and a tail that may begin a stop string."""

    def __init__(self, stops: Sequence[str], on_text: Callable[[str], None] | None) -> None:
        self.stops, self.on_text, self.sent = stops, on_text, ""

    def _emit(self, text: str) -> None:
        if self.on_text is not None and len(text) > len(self.sent) and text.startswith(self.sent):
            self.on_text(text[len(self.sent):])
            self.sent = text

    def update(self, text: str) -> None:
        text = _cut_at_stop(text, self.stops).rstrip("\ufffd")
        for k in range(min(len(text), max((len(s) for s in self.stops), default=1) - 1), 0, -1):
            if any(s.startswith(text[-k:]) for s in self.stops):
                text = text[:-k]
                break
        self._emit(text)

    def finish(self, text: str) -> None:
        self._emit(text)
