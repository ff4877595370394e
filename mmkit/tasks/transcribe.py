"""Speech recognition and translation with Whisper-style models (Radford et al., "Robust Speech
Recognition via Large-Scale Weak Supervision", 2022, §4.5 "Long-form transcription"), following
openai/whisper `decoding.py` / `transcribe.py`: task and language prompt, language detection,
suppressed tokens, timestamp rules, temperature fallback on compression-ratio / log-prob
thresholds, no-speech skip; plus a repetition guard that ends looping windows.

Differences from openai/whisper, on purpose: long audio is cut into fixed, consecutive windows of
the encoder's length (30 s) instead of seeking to the last predicted timestamp, and windows are
decoded without the previous window's text as a prompt; both make every window independent, so
the windows of many files are batched through the encoder and the decoder together. Timestamps
never pass the end of a window's audio; digitally silent windows (all samples 0) are not decoded.
The decoder runs on the shared loop (`mmkit.core.generate`) with one KV cache per batch whose
cross-attention keys/values are computed once per window and shared by language detection,
decoding and every fallback attempt.

Checkpoints (`--model`): a Hugging Face Whisper directory or an mmkit one (`save_checkpoint`),
each with the tokenizer files and generation_config.json next to the weights, or an openai-whisper
`.pt` file, whose tokenizer comes from the openai-whisper package's `.tiktoken` files.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TextIO

import numpy as np
import torch
from torch import Tensor

from mmkit.audio import HOP_LENGTH, SAMPLE_RATE, AudioLoadError, load_audio, log_mel_spectrogram, pad_or_trim
from mmkit.core import BeamSearch, Greedy, KVCache, Sampling, SuppressAtBegin, SuppressTokens, generate
from mmkit.core.decoding import RepetitionGuard, is_loop
from mmkit.data.whisper_tokenizer import TIME_PRECISION, WhisperTokenizer
from mmkit.models.whisper import Whisper

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("txt", "json", "srt", "vtt", "tsv")


@dataclass
class DecodingOptions:
    """How to decode each window (openai/whisper's defaults).

    Args:
        task: "transcribe" (speech -> text in its language) or "translate" (-> English).
        language: language code or name; None detects it on each file's first window
            (multilingual checkpoints; English-only ones always decode English).
        without_timestamps: decode with <|notimestamps|>: one segment per window.
        beam_size: 1 = greedy; > 1 = beam search at temperature 0.
        best_of: candidates sampled per window at temperatures > 0 (the likeliest is kept).
        temperatures: the first is used, each next one only for windows that fail the checks
            below (temperature fallback); (0.0,) disables the fallback.
        compression_ratio_threshold: gzip ratio of the text above which a window is retried
            (repetitive text).
        logprob_threshold: mean token log-probability below which a window is retried.
        no_speech_threshold: <|nospeech|> probability above which a window with a mean
            log-probability below `logprob_threshold` counts as silence (no segments).
        max_new_tokens: tokens per window (None: half the decoder context, 224).
        repetition_guard: end a window whose text loops (a span repeated back to back) and
            retry it at the next temperature.
        seed: seed of the sampling generator (reproducible fallbacks).
    """

    task: str = "transcribe"
    language: str | None = None
    without_timestamps: bool = False
    beam_size: int = 1
    best_of: int = 5
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    max_new_tokens: int | None = None
    repetition_guard: bool = True
    seed: int = 0


@dataclass
class Segment:
    """A span of speech: times in seconds from the start of the file; `tokens` are its text tokens."""

    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


@dataclass
class Transcript:
    """One input's result; `error` is set (and the rest empty) when it could not be transcribed."""

    path: str
    text: str = ""
    segments: list[Segment] = field(default_factory=list)
    language: str | None = None
    duration: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.path, "text": self.text, "language": self.language, "duration": self.duration,
                "segments": [{"id": i, **asdict(s)} for i, s in enumerate(self.segments)]}


# --- Whisper's timestamp rules ---------------------------------------------------------------------

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

    def __init__(self, tokenizer: WhisperTokenizer, begin_index: int, max_initial_index: int | None = 50,
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
            cap = self.max_index.to(logits.device).repeat_interleave(B // self.max_index.shape[0])
            logits.masked_fill_(vocab > (ts + cap)[:, None], inf)
        logprobs = logits.float().log_softmax(dim=-1)
        timestamp_wins = logprobs[:, ts:].logsumexp(dim=-1) > logprobs[:, :ts].amax(dim=-1)
        logits[timestamp_wins, :ts] = inf
        return logits


# --- checkpoints ---------------------------------------------------------------------------------

def load_checkpoint(path: str | Path, device: str | torch.device = "cpu",
                    tokenizer: str | Path | None = None) -> tuple[Whisper, WhisperTokenizer]:
    """Load a transcription checkpoint: a Hugging Face Whisper directory (config.json with
    model_type "whisper" + weights) or an mmkit one (`save_checkpoint`), each with its tokenizer
    files (and optionally generation_config.json) next to the weights; an mmkit model trained with
    a character/BPE tokenizer (`SpeechRecognizer`'s export: no language, task or timestamp
    tokens); or an openai-whisper checkpoint file (`.pt` / `.pth`), with openai's tokenizer for
    its vocabulary size.

    The format is read from the file name or config.json, where each declares itself; nothing
    else is guessed.

    Args:
        path: checkpoint directory or openai-whisper file.
        device: where the model goes.
        tokenizer: a tokenizer directory or `.tiktoken` file to use instead (None: the checkpoint's).

    Raises:
        mmkit.weights.WeightsError / mmkit.data.whisper_tokenizer.TokenizerError: unusable files.
    """
    from mmkit.weights import WeightsError

    path = Path(path).expanduser()
    if path.suffix in (".pt", ".pth"):  # openai-whisper's checkpoint files
        model = Whisper.from_openai(path)
        tok = (load_tokenizer(tokenizer, model.vocab_size) if tokenizer is not None
               else WhisperTokenizer.from_openai(model.vocab_size))
    else:
        model = _load_directory(path)
        if tokenizer is None and _data_tokenizer_kind(path):  # SpeechRecognizer's char/BPE exports
            from mmkit.data.char_tokenizer import CharTokenizer

            chars = CharTokenizer.from_dir(path)
            if chars.vocab_size != model.vocab_size:
                raise WeightsError(f"{path}: tokenizer.json has {chars.vocab_size} tokens, the model "
                                   f"{model.vocab_size}")
            return model.to(device).eval(), chars  # type: ignore[return-value]
        tok = WhisperTokenizer.from_dir(path) if tokenizer is None else load_tokenizer(tokenizer, model.vocab_size)
    if tok.timestamp_end > model.vocab_size:
        raise WeightsError(f"{path}: the tokenizer's ids reach {tok.timestamp_end - 1}, beyond the "
                           f"model's vocab_size {model.vocab_size}")
    return model.to(device).eval(), tok


def _data_tokenizer_kind(directory: Path) -> str | None:
    """"char" or "bpe" for a checkpoint trained with a tokenizer built from its transcripts
    (`mmkit.tasks.speech_recognizer.save_speech_checkpoint` records it in the metadata)."""
    try:
        meta = json.loads((directory / "config.json").read_text()).get("metadata", {})
    except (OSError, ValueError, AttributeError):
        return None
    kind = meta.get("tokenizer") if isinstance(meta, dict) else None
    return kind if kind in ("char", "bpe") else None


def _load_directory(directory: Path) -> Whisper:
    from mmkit.weights import WeightsError

    config_path = directory / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"{directory}: not a checkpoint directory (no config.json); --model takes a local "
                           "Hugging Face Whisper directory, an mmkit Whisper checkpoint or an openai-whisper .pt file")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{config_path}: invalid JSON ({e})") from None
    if "format_version" in config and "architecture" in config:  # mmkit's native layout
        return Whisper.from_pretrained(directory)
    return Whisper.from_hf(directory)


def load_tokenizer(source: str | Path, vocab_size: int) -> WhisperTokenizer:
    """A tokenizer directory (`WhisperTokenizer.from_dir`) or a `.tiktoken` file read openai's
    way for a model of `vocab_size` ids (`WhisperTokenizer.from_tiktoken`)."""
    source = Path(source).expanduser()
    if source.suffix == ".tiktoken":
        return WhisperTokenizer.from_tiktoken(source, vocab_size)
    return WhisperTokenizer.from_dir(source)


def save_checkpoint(model: Whisper, tokenizer: WhisperTokenizer, directory: str | Path) -> Path:
    """Write an mmkit transcription checkpoint: config.json + model.safetensors (native
    `save_pretrained`) plus the tokenizer files and generation_config.json, in one directory."""
    directory = model.save_pretrained(directory)
    tokenizer.save(directory)
    return directory


# --- the transcriber -----------------------------------------------------------------------------

@dataclass
class _Window:
    file: int  # index into the batch of files
    index: int  # window number within the file
    audio: np.ndarray  # (N,) samples, N <= window length
    offset: float  # seconds from the file's start


@dataclass
class _Decoded:
    tokens: list[int]  # generated tokens, without <|endoftext|>
    sum_logprob: float
    temperature: float
    looped: bool
    text: str = ""
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0


def compression_ratio(text: str) -> float:
    """len(utf-8 bytes) / len(zlib-compressed bytes): high for repetitive text (openai/whisper)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


class Transcriber:
    """Transcribe audio with a Whisper model: `transcribe(audio)` for one waveform,
    `transcribe_files(paths)` for many files, their windows batched `batch_size` at a time.

    Args:
        model: an eval-mode `Whisper`.
        tokenizer: the checkpoint's `WhisperTokenizer`.
        options: decoding options.
        batch_size: windows (of any files) per encoder/decoder batch.
    """

    def __init__(self, model: Whisper, tokenizer: WhisperTokenizer, options: DecodingOptions | None = None,
                 batch_size: int = 8) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.options = options or DecodingOptions()
        if tokenizer.timestamp_end <= tokenizer.timestamp_begin:  # no timestamp tokens (char/BPE tokenizers):
            # one segment per window, and room for a whole window's text (characters, not words)
            prompt = tokenizer.sot_sequence(without_timestamps=True)
            self.options = replace(self.options, without_timestamps=True,
                                   max_new_tokens=self.options.max_new_tokens or model.n_text_ctx - len(prompt))
        self.batch_size = max(1, batch_size)
        self.window_samples = 2 * model.n_audio_ctx * HOP_LENGTH  # 480_000 (30 s) for every Whisper
        self._check_options()

    @classmethod
    def from_checkpoint(cls, path: str | Path, options: DecodingOptions | None = None, batch_size: int = 8,
                        device: str | torch.device = "cpu", tokenizer: str | Path | None = None) -> "Transcriber":
        """A transcriber over `load_checkpoint(path, device, tokenizer)`."""
        model, tok = load_checkpoint(path, device, tokenizer)
        return cls(model, tok, options, batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _check_options(self) -> None:
        o, tok = self.options, self.tokenizer
        if o.task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', got {o.task!r}")
        if not tok.is_multilingual and (o.task == "translate" or (o.language or "en").lower() not in ("en", "english")):
            raise ValueError("this checkpoint is English-only: it cannot translate or decode other languages")
        if o.language is not None and tok.is_multilingual:
            tok.language_id(o.language)  # raises for unknown languages
        if not o.temperatures or any(t < 0 for t in o.temperatures):
            raise ValueError(f"temperatures must be >= 0, got {o.temperatures}")
        if o.beam_size < 1 or o.best_of < 1:
            raise ValueError("beam_size and best_of must be >= 1")

    # --- public API ------------------------------------------------------------------------

    def transcribe(self, audio: np.ndarray, name: str = "<audio>") -> Transcript:
        """Transcribe one (N,) float32 16 kHz mono waveform."""
        return next(self._transcribe_arrays([(name, audio)]))

    def transcribe_files(self, paths: Iterable[str | Path]) -> Iterator[Transcript]:
        """Yield one `Transcript` per path, in input order; files that cannot be loaded or decoded
        come back with `error` set instead of stopping the run."""

        def load() -> Iterator[tuple[str, np.ndarray | AudioLoadError]]:
            for path in paths:
                try:
                    yield str(path), load_audio(path)
                except AudioLoadError as e:
                    yield str(path), e

        return self._transcribe_arrays(load())

    # --- batching --------------------------------------------------------------------------

    def _transcribe_arrays(self, items: Iterable[tuple[str, np.ndarray | Exception]]) -> Iterator[Transcript]:
        transcripts: dict[int, Transcript] = {}
        windows: dict[int, list[list[Segment] | None]] = {}  # file -> segments per window (None: pending)
        languages: dict[int, str | None] = {}
        queue: list[_Window] = []

        def flush() -> None:
            batch = queue[: self.batch_size]
            del queue[: self.batch_size]
            try:
                results = self._decode_windows(batch, languages)
            except Exception as e:  # noqa: BLE001 - a failing batch fails its files, the run goes on
                log.debug("decoding failed", exc_info=True)
                for w in batch:
                    transcripts[w.file].error = f"decoding failed ({type(e).__name__}: {e})"
                    windows.pop(w.file, None)
                queue[:] = [w for w in queue if w.file in windows]  # their other windows are moot
                return
            for w, segments in zip(batch, results):
                if w.file in windows:
                    windows[w.file][w.index] = segments

        def finished(i: int) -> bool:
            return i in transcripts and (i not in windows or all(s is not None for s in windows[i]))

        def pop(i: int) -> Transcript:
            return self._finish(transcripts.pop(i), windows.pop(i, None), languages.pop(i, None))

        next_out = 0
        for i, (name, audio) in enumerate(items):
            transcripts[i] = Transcript(name)
            if isinstance(audio, Exception):
                transcripts[i].error = getattr(audio, "reason", str(audio))
            else:
                transcripts[i].duration = round(len(audio) / SAMPLE_RATE, 3)
                split = self._split(i, audio)
                windows[i] = [None] * len(split)
                languages[i] = self.options.language
                queue.extend(split)
            while len(queue) >= self.batch_size:
                flush()
            while finished(next_out):
                yield pop(next_out)
                next_out += 1
        while queue:
            flush()
        while next_out in transcripts:
            yield pop(next_out)
            next_out += 1

    def _split(self, file: int, audio: np.ndarray) -> list[_Window]:
        n = self.window_samples
        return [_Window(file, k, audio[start:start + n], start / SAMPLE_RATE)
                for k, start in enumerate(range(0, max(len(audio), 1), n))]

    def _finish(self, t: Transcript, windows: list[list[Segment] | None] | None, language: str | None) -> Transcript:
        if t.error is None and windows is not None:
            t.segments = [s for segments in windows for s in segments or ()]
            t.text = "".join(s.text for s in t.segments).strip()
            t.language = language if self.tokenizer.is_multilingual else "en"
        return t

    # --- one batch of windows --------------------------------------------------------------

    @torch.inference_mode()
    def _decode_windows(self, windows: Sequence[_Window], languages: dict[int, str | None]) -> list[list[Segment]]:
        """Segments of each window. Digitally silent windows (all samples 0) are not decoded."""
        o, tok, model = self.options, self.tokenizer, self.model
        audible = [k for k, w in enumerate(windows) if np.any(w.audio)]
        out: list[list[Segment]] = [[] for _ in windows]
        if not audible:
            return out
        ws = [windows[k] for k in audible]
        audio = torch.stack([torch.from_numpy(pad_or_trim(np.ascontiguousarray(w.audio), self.window_samples))
                             for w in ws]).to(self.device)
        mel = log_mel_spectrogram(audio, n_mels=model.n_mels)  # (B, n_mels, 2·n_audio_ctx)
        context = model.encode(mel)  # (B, n_audio_ctx, dim)
        # One pass over <|startoftranscript|> fills the cross-attention cache and gives the
        # language and no-speech probabilities (both read at that position, as openai/whisper).
        cache = KVCache()
        sot = torch.full((len(ws), 1), tok.sot, dtype=torch.long, device=self.device)
        first = model(sot, context, cache)[:, 0].float()  # (B, V)
        no_speech = first.softmax(dim=-1)[:, tok.no_speech].tolist()
        self._detect_languages(ws, first, languages)
        prompts = [tok.sot_sequence(languages[w.file] if tok.is_multilingual else None, o.task, o.without_timestamps)
                   for w in ws]
        max_index = torch.tensor([min(round(len(w.audio) / SAMPLE_RATE / TIME_PRECISION),
                                      model.n_audio_ctx) for w in ws])
        decoded = self._decode_with_fallback(context, cache, torch.tensor(prompts, device=self.device), max_index,
                                             no_speech)
        for k, w, d, p in zip(audible, ws, decoded, no_speech):
            silent = (o.no_speech_threshold is not None and p > o.no_speech_threshold
                      and not (o.logprob_threshold is not None and d.avg_logprob > o.logprob_threshold))
            if not silent:
                out[k] = self._segments(w, d, p)
        return out

    def _detect_languages(self, windows: Sequence[_Window], first_logits: Tensor,
                          languages: dict[int, str | None]) -> None:
        tok = self.tokenizer
        if not tok.is_multilingual:
            return
        lang_ids = torch.tensor(list(tok.language_ids.values()), device=first_logits.device)
        for row, w in enumerate(windows):
            if languages.get(w.file) is None:  # the file's first window in this run decides
                best = int(lang_ids[first_logits[row, lang_ids].argmax()])
                languages[w.file] = tok.language_code(best)

    def _decode_with_fallback(self, context: Tensor, cache: KVCache, prompts: Tensor, max_index: Tensor,
                              no_speech: list[float]) -> list[_Decoded]:
        o = self.options
        results: list[_Decoded | None] = [None] * prompts.shape[0]
        rows = list(range(prompts.shape[0]))
        for attempt, temperature in enumerate(o.temperatures):
            last = attempt == len(o.temperatures) - 1
            index = torch.tensor(rows, device=context.device)
            # the cache holds <|startoftranscript|>; a prompt of that token alone must be fed again
            fork = _fork(cache, index, len(results), keep_prefix=prompts.shape[1] > 1)
            decoded = self._decode(context[index], fork, prompts[index],
                                   max_index[index], temperature, o.seed + attempt)
            retry = []
            for row, d in zip(rows, decoded):
                results[row] = d
                if not last and self._needs_fallback(d, no_speech[row]):
                    retry.append(row)
            if not retry:
                break
            log.debug("temperature %.1f: retrying %d window(s) at %.1f", temperature, len(retry),
                      o.temperatures[attempt + 1])
            rows = retry
        return results  # type: ignore[return-value]

    def _needs_fallback(self, d: _Decoded, no_speech_prob: float) -> bool:
        o = self.options
        low_logprob = o.logprob_threshold is not None and d.avg_logprob < o.logprob_threshold
        if o.no_speech_threshold is not None and no_speech_prob > o.no_speech_threshold and low_logprob:
            return False  # silence: skipped afterwards, retrying would only hallucinate
        repetitive = o.compression_ratio_threshold is not None and d.compression_ratio > o.compression_ratio_threshold
        return repetitive or low_logprob or d.looped

    def _decode(self, context: Tensor, cache: KVCache, prompts: Tensor, max_index: Tensor, temperature: float,
                seed: int) -> list[_Decoded]:
        """Decode each row once at `temperature` (greedy/beam at 0, best-of-N sampling above)."""
        o, tok = self.options, self.tokenizer
        B, T = prompts.shape
        max_new = min(o.max_new_tokens or self.model.n_text_ctx // 2, self.model.n_text_ctx - T)
        n = 1
        if temperature == 0:
            strategy = BeamSearch(o.beam_size) if o.beam_size > 1 else Greedy()
        else:
            gen = torch.Generator(device=context.device).manual_seed(seed)
            strategy, n = Sampling(temperature=temperature, generator=gen), o.best_of
            if n > 1:  # best-of-N: N rows per window
                rep = torch.arange(B, device=context.device).repeat_interleave(n)
                context, prompts, max_index = context[rep], prompts[rep], max_index[rep.cpu()]
                cache.reorder(rep)
        filters: list[Callable[[Tensor, Tensor], Tensor]] = [
            SuppressAtBegin(tok.begin_suppress_tokens, T), SuppressTokens(tok.suppress_tokens)]
        if not o.without_timestamps:
            filters.append(TimestampRules(tok, T, tok.max_initial_timestamp_index, max_index))
        if o.repetition_guard:
            filters.append(RepetitionGuard(tok.eot, T))
        g = generate(self.model, prompts, max_new, strategy, context=context, eos_id=tok.eot, pad_id=tok.eot,
                     logit_filters=filters, cache=cache)
        out = []
        for i, seq in enumerate(g.sequences):
            new = seq[T:]
            ended = len(new) > 0 and int(new[-1]) == tok.eot
            tokens = new[:-1] if ended else new
            # beam scores are length-normalised (sum / generated length): undo it for the sum
            total = float(g.scores[i]) * (len(new) if isinstance(strategy, BeamSearch) else 1)
            looped = o.repetition_guard and ended and is_loop(tokens)
            out.append(self._scored(tokens.tolist(), total, temperature, looped))
        if n > 1:  # keep the likeliest candidate of each window (openai: length-normalised log-prob)
            out = [max(out[b * n:(b + 1) * n], key=lambda d: d.sum_logprob / (len(d.tokens) + 1)) for b in range(B)]
        return out

    def _scored(self, tokens: list[int], sum_logprob: float, temperature: float, looped: bool) -> _Decoded:
        d = _Decoded(tokens, sum_logprob, temperature, looped)
        d.text = self.tokenizer.decode(tokens)
        d.avg_logprob = sum_logprob / (len(tokens) + 1)  # + 1: <|endoftext|>, as openai/whisper
        d.compression_ratio = compression_ratio(d.text)
        return d

    def _segments(self, w: _Window, d: _Decoded, no_speech_prob: float) -> list[Segment]:
        """Split a window's tokens at timestamp tokens into segments with absolute times.
        Without timestamps the window is one segment (kept even if its text is blank, so that
        its tokens are reported); with them, spans without text are dropped."""
        tok, duration = self.tokenizer, len(w.audio) / SAMPLE_RATE
        stats = dict(temperature=d.temperature, avg_logprob=round(d.avg_logprob, 4),
                     compression_ratio=round(d.compression_ratio, 4), no_speech_prob=round(no_speech_prob, 4))
        if self.options.without_timestamps:
            spans = [(0.0, duration, d.tokens)] if d.tokens else []
        else:
            spans = [sp for sp in _timestamp_spans(d.tokens, tok.timestamp_begin, duration)
                     if tok.decode(sp[2]).strip()]
        segments = []
        for start, end, tokens in spans:
            start = min(start, duration)
            end = min(max(end, start), duration)
            segments.append(Segment(round(w.offset + start, 3), round(w.offset + end, 3), tok.decode(tokens),
                                    list(tokens), **stats))
        return segments


def _timestamp_spans(tokens: Sequence[int], timestamp_begin: int,
                     duration: float) -> list[tuple[float, float, list[int]]]:
    """(start, end, tokens) per segment: runs of non-timestamp tokens, with the timestamp tokens
    around them; text after the last timestamp ends at the window's end (openai/whisper would
    re-decode it in the next window instead)."""
    spans: list[tuple[float, float, list[int]]] = []
    current: list[int] = []  # tokens of the open segment, starting with its start timestamp if any
    start = last_time = 0.0
    for t in tokens:
        if t >= timestamp_begin:
            time = (t - timestamp_begin) * TIME_PRECISION
            if any(x < timestamp_begin for x in current):  # text is open: this timestamp ends it
                spans.append((start, time, current + [t]))
                current = []
            else:  # a segment's start (the second of a pair, or the very first timestamp)
                current, start = [t], time
            last_time = time
        else:
            if not current:
                start = last_time
            current.append(t)
    if any(x < timestamp_begin for x in current):
        spans.append((start, duration, current))
    return spans


def _fork(cache: KVCache, rows: Tensor, total: int, keep_prefix: bool = True) -> KVCache:
    """A new cache with `rows` of `cache`: the cross-attention keys/values are shared (not copied)
    when all rows are kept; the self-attention prefix is copied (so forks grow independently), or
    left out with `keep_prefix=False`."""
    out = KVCache()
    every = len(rows) == total
    for i, block in enumerate(cache.layers):
        layer = out.layer(i)
        if not block.cross_attn.is_empty:
            k, v = block.cross_attn.keys, block.cross_attn.values
            layer.cross_attn.set(k if every else k.index_select(0, rows), v if every else v.index_select(0, rows))
        if keep_prefix and not block.self_attn.is_empty:
            layer.self_attn.append(block.self_attn.keys.index_select(0, rows),
                                   block.self_attn.values.index_select(0, rows))
    return out


# --- output writers ------------------------------------------------------------------------------

def format_timestamp(seconds: float, decimal_marker: str = ".") -> str:
    """HH:MM:SS.mmm (SRT uses "," as the decimal marker)."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def write_txt(t: Transcript, f: TextIO) -> None:
    for s in t.segments:
        f.write(s.text.strip() + "\n")


def write_json(t: Transcript, f: TextIO) -> None:
    json.dump(t.to_dict(), f, ensure_ascii=False, indent=2)
    f.write("\n")


def write_srt(t: Transcript, f: TextIO) -> None:
    for i, s in enumerate(t.segments, start=1):
        f.write(f"{i}\n{format_timestamp(s.start, ',')} --> {format_timestamp(s.end, ',')}\n"
                f"{s.text.strip().replace('-->', '->')}\n\n")


def write_vtt(t: Transcript, f: TextIO) -> None:
    f.write("WEBVTT\n\n")
    for s in t.segments:
        f.write(f"{format_timestamp(s.start)} --> {format_timestamp(s.end)}\n{s.text.strip().replace('-->', '->')}\n\n")


def write_tsv(t: Transcript, f: TextIO) -> None:
    """start and end in integer milliseconds (openai/whisper's TSV)."""
    f.write("start\tend\ttext\n")
    for s in t.segments:
        f.write(f"{round(1000 * s.start)}\t{round(1000 * s.end)}\t{s.text.strip().replace(chr(9), ' ')}\n")


WRITERS: dict[str, Callable[[Transcript, TextIO], None]] = {
    "txt": write_txt, "json": write_json, "srt": write_srt, "vtt": write_vtt, "tsv": write_tsv}


def output_stems(paths: Sequence[str | Path]) -> list[str]:
    """`<stem>` per input, made unique: repeated stems (a.wav, a.mp3, x/a.wav) get -2, -3, ..."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = Path(p).stem or "audio"
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def write_outputs(t: Transcript, stem: str, directory: Path, formats: Sequence[str]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = directory / f"{stem}.{fmt}"
        with open(path, "w", encoding="utf-8") as f:
            WRITERS[fmt](t, f)
        written.append(path)
    return written


# --- command line --------------------------------------------------------------------------------

def _optional_float(value: str) -> float | None:
    return None if value.lower() in ("none", "off") else float(value)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmkit transcribe", description="Transcribe or translate audio files with a Whisper checkpoint.",
        epilog="Writes <output-dir>/<stem>.<ext> per input and prints the text. Files that cannot be read or "
               "decoded are reported and skipped; the exit code is 1 only when no file was transcribed.")
    p.add_argument("files", nargs="+", help="audio files (any format libsndfile reads; any rate, any channels)")
    p.add_argument("--model", required=True,
                   help="Hugging Face Whisper directory or mmkit checkpoint, with the tokenizer files; or an "
                        "openai-whisper .pt file (tokenizer from the openai-whisper package)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory or .tiktoken file to use instead of the checkpoint's")
    p.add_argument("--language", default=None, help="language code or name (default: detect per file)")
    p.add_argument("--task", choices=("transcribe", "translate"), default="transcribe")
    p.add_argument("--beam-size", type=int, default=1, help="1 = greedy (default)")
    p.add_argument("--best-of", type=int, default=5, help="samples per window at temperature > 0")
    p.add_argument("--temperature", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
                   help="temperatures tried in order on failing windows (a single 0 disables the fallback)")
    p.add_argument("--compression-ratio-threshold", type=_optional_float, default=2.4,
                   help="retry windows whose text compresses better than this ('none': never)")
    p.add_argument("--logprob-threshold", type=_optional_float, default=-1.0,
                   help="retry windows whose mean token log-probability is lower ('none': never)")
    p.add_argument("--no-speech-threshold", type=_optional_float, default=0.6,
                   help="<|nospeech|> probability above which an unlikely window counts as silence ('none': never)")
    p.add_argument("--no-repetition-guard", action="store_true", help="let repetitive windows run to the limit")
    p.add_argument("--without-timestamps", action="store_true", help="one segment per 30 s window")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens per window (default 224)")
    p.add_argument("--output-format", "-f", nargs="+", default=["txt"], choices=OUTPUT_FORMATS + ("all",))
    p.add_argument("--output-dir", "-o", default=".", help="where to write <stem>.<ext> (default: .)")
    p.add_argument("--batch-size", type=int, default=8, help="30 s windows per encoder/decoder batch")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed for temperature fallback")
    p.add_argument("--quiet", action="store_true", help="do not print the transcripts")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`mmkit transcribe FILES... --model DIR|FILE.pt [options]`: exit 0 if any file was transcribed
    (failures are listed), 1 if none was, 2 for usage errors."""
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    options = DecodingOptions(
        task=args.task, language=args.language, without_timestamps=args.without_timestamps,
        beam_size=args.beam_size, best_of=args.best_of, temperatures=tuple(args.temperature),
        compression_ratio_threshold=args.compression_ratio_threshold, logprob_threshold=args.logprob_threshold,
        no_speech_threshold=args.no_speech_threshold, max_new_tokens=args.max_new_tokens,
        repetition_guard=not args.no_repetition_guard, seed=args.seed)
    try:
        transcriber = Transcriber.from_checkpoint(args.model, options, args.batch_size, args.device, args.tokenizer)
    except ValueError as e:  # WeightsError, TokenizerError and bad options are ValueErrors
        sys.stderr.write(f"mmkit transcribe: error: {e}\n")
        return 2
    formats = list(OUTPUT_FORMATS) if "all" in args.output_format else list(dict.fromkeys(args.output_format))
    out_dir = Path(args.output_dir).expanduser()
    stems = output_stems(args.files)
    failed: list[Transcript] = []
    with _progress(len(args.files)) as advance:
        for stem, t in zip(stems, transcriber.transcribe_files(args.files)):
            if t.error is not None:
                failed.append(t)
                log.error("%s: %s", t.path, t.error)
            else:
                if args.language is None and transcriber.tokenizer.is_multilingual:
                    log.info("%s: detected language %s", t.path, t.language)
                write_outputs(t, stem, out_dir, formats)
                if not args.quiet:
                    sys.stdout.write(f"{t.path}: {t.text}\n" if len(args.files) > 1 else t.text + "\n")
                    sys.stdout.flush()
            advance()
    ok = len(args.files) - len(failed)
    if failed:
        log.warning("transcribed %d of %d files; failed: %s", ok, len(args.files), ", ".join(t.path for t in failed))
    return 0 if ok else 1


class _progress:
    """A rich progress bar on stderr for runs over several files (a no-op for one file)."""

    def __init__(self, total: int) -> None:
        self.total, self.bar, self.task = total, None, None

    def __enter__(self) -> Callable[[], None]:
        if self.total > 1:
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(stderr=True), redirect_stdout=sys.stdout.isatty(),
                                redirect_stderr=False)
            self.bar.start()
            self.task = self.bar.add_task("transcribing", total=self.total)
        return lambda: self.bar.advance(self.task) if self.bar is not None else None

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
