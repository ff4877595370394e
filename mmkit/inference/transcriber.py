"""Speech recognition and translation with Whisper-style models (Radford et al., "Robust Speech
Recognition via Large-Scale Weak Supervision", 2022, §4.5 "Long-form transcription"), following
openai/whisper `decoding.py` / `transcribe.py`: task and language prompt, language detection,
suppressed tokens, timestamp rules, temperature fallback on compression-ratio / log-prob
thresholds, no-speech skip; plus a repetition guard that ends looping windows.

Differences from openai/whisper, on purpose, in the default `long_form="windows"`: long audio is cut into
fixed, consecutive windows of the encoder's length (30 s) instead of seeking to the last predicted timestamp,
and windows are decoded without the previous window's text as a prompt (an initial prompt,
`DecodingOptions.initial_prompt`, precedes every window alike); both make every window independent, so the
windows of many files are batched through the encoder and the decoder together. Timestamps never pass the end
of a window's audio; digitally silent windows (all samples 0) and windows under one
Mel frame (`HOP_LENGTH` samples: openai/whisper's content frames are 0, so it decodes nothing) are not decoded.
The decoder runs on the shared loop (`mmkit.core.generate`) with one KV cache per batch whose
cross-attention keys/values are computed once per window and shared by language detection,
decoding and every fallback attempt (`KVCache.fork`). Word timestamps align a batch's words in one more decoder
pass over the same encoder output (`align_windows`), then place them window by window in file order, as openai's
`add_word_timestamps` does, each window carrying its file's last word end. `long_form="sequential"` is openai's
`transcribe()` instead, exactly (`mmkit.inference.sequential`), over the same window decoding: each file's
windows one after another, the current windows of `batch_size` files in one batch.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from mmkit.audio import HOP_LENGTH, SAMPLE_RATE, AudioLoadError, log_mel_spectrogram, pad_or_trim, stream_audio
from mmkit.audio.io import check_samples
from mmkit.core import KVCache, left_padded
from mmkit.data.whisper_tokenizer import TIME_PRECISION
from mmkit.inference.inputs import as_items
from mmkit.inference.quantize import prepare_arithmetic
from mmkit.inference.sequential import sequential_transcripts, window_segments as openai_segments
from mmkit.inference.speech_checkpoints import SpeechTokenizer, load_speech_model
from mmkit.inference.transcript import (
    Decoded, DecodingOptions, Segment, Transcript, greedy_options, is_silence, span_segments, window_spans,
)
from mmkit.inference.window_decoder import Window as _Window, WindowDecoder, previous_text_prompt
from mmkit.inference.word_timing import (
    WordTiming, add_word_timestamps, align_windows, last_end, window_text_tokens,
)
from mmkit.inference.writers import path_text
from mmkit.models.whisper import Whisper

log = logging.getLogger(__name__)

# `--quantize int8` leaves these encoder layers fp32 (their inputs: the attention output; the GELU output, whose
# rows have a few large values), chosen by WER with per-row activation scales (`Int8Linear`). Whisper tiny.en,
# 400 espeak test sentences, greedy, no timestamps, --audio-context 10: fp32 44.2%; these two fp32 44.7%; every
# Linear int8 46.4% (with timestamps: 45.6%, 45.4%, 45.7%). The two layers are ~40% of the encoder's Linear work.
INT8_KEEP_FP32 = ("encoder.blocks.*.attn.proj", "encoder.blocks.*.mlp.fc2")


# Integer PCM as wave files hold it (scipy.io.wavfile, soundfile's dtype="int16"): sample -> (sample - offset) / scale,
# in [-1, 1), as libsndfile converts it. Read as floats it would be up to 32767 times full scale (a garbage text).
PCM_SCALE = {np.dtype(np.int16): (0, 2 ** 15), np.dtype(np.int32): (0, 2 ** 31), np.dtype(np.uint8): (128, 128)}


def mono_waveform(audio: np.ndarray | Tensor | Sequence[float], name: str = "<audio>") -> np.ndarray:
    """(N,) float32 samples of one mono waveform given as a numpy array, a torch tensor or a list of numbers,
    checked where `Transcriber.transcribe` takes it: float samples as they are (full scale 1.0), integer PCM
    scaled (`PCM_SCALE`); the rest refused in one line rather than guessed at: a stereo (N, 2) array was read as
    N waveforms of 2 samples (an 86 GiB allocation), and NaN samples decode to "!!!!".

    Raises:
        TypeError: not an array, or samples neither float nor int16/int32/uint8.
        ValueError: a shape other than (N,), with the downmix that makes one of a 2-D array.
        AudioLoadError: NaN/inf samples, or ones beyond `MAX_SAMPLE`: what `load_audio` refuses in a file.
    """
    if isinstance(audio, Tensor):
        audio = audio.detach().cpu()
        audio = (audio.float() if audio.dtype == torch.bfloat16 else audio).numpy()  # numpy has no bfloat16
    elif isinstance(audio, (list, tuple)):
        audio = np.asarray(audio)
    elif not isinstance(audio, np.ndarray):
        raise TypeError(f"expected a waveform (a numpy array, a torch tensor or a list of floats), got "
                        f"{type(audio).__name__}")
    if not audio.dtype.isnative:  # big-endian samples (">i2", as some file readers give them): the same values
        audio = audio.astype(audio.dtype.newbyteorder("="))
    if audio.dtype in PCM_SCALE:
        offset, scale = PCM_SCALE[audio.dtype]
        audio = (audio.astype(np.float32) - offset) / np.float32(scale)
    elif audio.dtype.kind != "f":
        raise TypeError(f"samples of dtype {audio.dtype}: give float samples (full scale 1.0) or int16, int32 or "
                        "uint8 PCM")
    if audio.ndim != 1:
        downmix = f": downmix with audio.mean(axis={int(np.argmin(audio.shape))})" if audio.ndim == 2 else ""
        raise ValueError(f"expected a mono (N,) waveform; got shape {tuple(audio.shape)}{downmix}")
    check_samples(audio, name)  # what `load_audio` refuses in a file
    return audio.astype(np.float32, copy=False)


@dataclass
class _Aligned:
    """A window decoded with word timestamps, before its words are placed: its spans ({"start", "end", "tokens"},
    `window_spans`), its words' alignment, the decoding and its <|nospeech|> probability."""

    spans: list[dict]
    alignment: list[WordTiming]
    decoded: Decoded
    no_speech: float


class Transcriber:
    """Transcribe audio with a Whisper model: `transcribe(audio)` for one waveform,
    `transcribe_files(paths)` for many files, their windows batched `batch_size` at a time.

    Args:
        model: an eval-mode `Whisper`.
        tokenizer: the checkpoint's `WhisperTokenizer` (or a recipe's `CharTokenizer`).
        options: decoding options.
        batch_size: windows (of any files) per encoder/decoder batch (`long_form="sequential"`: the current
            windows of that many files, since each window's start and prompt depend on its file's previous one;
            their previous texts left-padded, each window decodes as it does alone).
        precision: "fp32" (exact, the default), "bf16", "fp16" or "auto" (autocast around the encoder
            and the decoder; `resolve_precision`).
        quantize: "none" or "int8": int8 Linear layers (`mmkit.inference.quantize.Int8Linear`, applied to
            `model` in place) for the decoder, its vocabulary projection, and the encoder's qkv and fc1
            (`INT8_KEEP_FP32` stay fp32).
    """

    def __init__(self, model: Whisper, tokenizer: SpeechTokenizer, options: DecodingOptions | None = None,
                 batch_size: int = 8, precision: str = "fp32", quantize: str = "none") -> None:
        # int8 Linear layers take fp32 activations: "auto" is then fp32, bf16/fp16 a ValueError (before quantizing)
        self.precision, self._autocast = prepare_arithmetic(model, precision, quantize, "transcriber", INT8_KEEP_FP32,
                                                            pack=True)
        self.model, self.tokenizer, self.quantize = model, tokenizer, quantize
        self.options = options or DecodingOptions()
        if tokenizer.timestamp_end <= tokenizer.timestamp_begin:  # no timestamp tokens (char/BPE tokenizers):
            # one segment per window, and room for a whole window's text (characters, not words)
            prompt = tokenizer.sot_sequence(without_timestamps=True)
            self.options = replace(self.options, without_timestamps=True,
                                   max_new_tokens=self.options.max_new_tokens or model.n_text_ctx - len(prompt))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.window_samples = 2 * model.n_audio_ctx * HOP_LENGTH  # 480_000 (30 s) for every Whisper
        self._check_options()
        if self.options.long_form == "sequential" and (getattr(tokenizer, "sot_prev", None) is None
                                                       or tokenizer.timestamp_end <= tokenizer.timestamp_begin):
            raise ValueError("long_form='sequential' needs a Whisper tokenizer (timestamp and <|startofprev|> "
                             "tokens): openai's algorithm seeks on timestamps and prompts with the previous text")
        if self.options.word_timestamps and tokenizer.timestamp_end <= tokenizer.timestamp_begin:
            raise ValueError("word_timestamps needs a Whisper tokenizer (timestamp tokens): this checkpoint's "
                             "tokenizer has none")
        self.prompt_prefix = self._prompt_prefix()  # what precedes <|startoftranscript|> in every window

    @classmethod
    def from_checkpoint(cls, path: str | Path, options: DecodingOptions | None = None, batch_size: int = 8,
                        device: str | torch.device = "cpu", tokenizer: str | Path | None = None,
                        precision: str = "fp32", quantize: str = "none") -> "Transcriber":
        """A transcriber over `load_speech_model(path, device, tokenizer)` (None options: openai's defaults)."""
        model, tok = load_speech_model(path, device, tokenizer)
        return cls(model, tok, options, batch_size, precision, quantize)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _check_options(self) -> None:
        o, tok = self.options, self.tokenizer
        if not tok.is_multilingual and (o.task == "translate" or (o.language or "en").lower() not in ("en", "english")):
            raise ValueError("this checkpoint is English-only: it cannot translate or decode other languages")
        if o.language is not None and tok.is_multilingual:
            tok.language_id(o.language)  # raises for unknown languages

    def _prompt_prefix(self) -> list[int]:
        """[<|startofprev|>, *the initial prompt's last n_text_ctx // 2 - 1 tokens] (openai/whisper's
        `_get_initial_tokens`), or [] without a prompt; encoded once here, so that a prompt that cannot work is
        refused before any audio is read."""
        o, tok, n_ctx = self.options, self.tokenizer, self.model.n_text_ctx
        if not o.initial_prompt:  # openai's `if prompt := options.prompt`: "" is no prompt
            return []
        if getattr(tok, "sot_prev", None) is None:
            raise ValueError("initial prompt: this checkpoint's tokenizer has no <|startofprev|> token, so the "
                             "model was not trained with prompts")
        prefix = previous_text_prompt(tok, tok.encode(" " + o.initial_prompt.strip()), n_ctx)
        task = tok.sot_sequence("en" if tok.is_multilingual else None, o.task, o.without_timestamps)
        if len(prefix) + len(task) >= n_ctx:
            raise ValueError(f"initial prompt: {len(prefix)} prompt and {len(task)} task tokens fill the decoder's "
                             f"context of {n_ctx} tokens, leaving no room for text")
        return prefix

    # --- public API ------------------------------------------------------------------------

    def transcribe(self, audio: np.ndarray | Tensor | Sequence[float], name: str = "<audio>") -> Transcript:
        """Transcribe one 16 kHz mono waveform (`mono_waveform`: (N,) float samples in [-1, 1] as a numpy
        array, a torch tensor or a list, or int16/int32/uint8 PCM, scaled to [-1, 1]).

        Raises:
            TypeError: not an array, or samples of another dtype.
            ValueError: a shape other than (N,) (stereo, a batch).
            AudioLoadError: NaN/inf samples, or ones far beyond full scale (the message names `name`).
            ValueError: with `clip_timestamps`, every clip starts at or past the audio's end.
            The model's own failure (out of memory, a broken checkpoint) as it is: `transcribe_files` turns it
            into a transcript's `error` so that a run goes on, a single call has nothing to go on to.
        """
        if not isinstance(name, str):  # transcribe(wav, 44100), a sample rate as librosa and torchaudio take it
            raise TypeError(f"name must be a string, got {name!r}: give 16 kHz audio (resample it first); the "
                            "second argument is the transcript's name")
        return next(self._transcribe_arrays([(name, mono_waveform(audio, name))], strict=True))

    def transcribe_files(self, paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[Transcript]:
        """Yield one `Transcript` per path, in input order (a lone path is one file, `as_items`); files that
        cannot be loaded or decoded come back with `error` set instead of stopping the run. Each file is read
        as a stream (`stream_audio`) and cut into windows as it comes, so memory is bounded by the window
        batch whatever a file's length (`long_form="sequential"` too: each file is spilled to a temporary
        file). A transcript's `path` is the path as text a UTF-8 output can hold (`path_text`: a Linux name that
        is not UTF-8 has those bytes as \\xNN escapes)."""
        return self._transcribe_arrays((path_text(path), stream_audio(path))
                                       for path in as_items(paths, (str, os.PathLike)))

    # --- batching --------------------------------------------------------------------------

    def _transcribe_arrays(self, items: Iterable[tuple[str, np.ndarray | Iterator[np.ndarray] | Exception]],
                           strict: bool = False) -> Iterator[Transcript]:
        """Windows of consecutive files (a checked waveform, `mono_waveform`, or an iterator of blocks that
        may raise `AudioLoadError`) are queued and decoded `batch_size` at a time; each transcript is
        yielded, in input order, as soon as all of its windows are done. `long_form="sequential"`: the files'
        windows in openai's order instead, `batch_size` files at a time (`sequential_transcripts`)."""
        if self.options.long_form == "sequential":
            yield from sequential_transcripts(self, items, strict)
            return
        transcripts: dict[int, Transcript] = {}
        windows: dict[int, list[list[Segment] | None]] = {}  # file -> segments per window (None: pending)
        languages: dict[int, str | None] = {}
        speech: dict[int, float] = {}  # file -> the end of its last word so far (word timestamps)
        queue: list[_Window] = []

        def finished(i: int) -> bool:
            return i in transcripts and (i not in windows or all(s is not None for s in windows[i]))

        def pop(i: int) -> Transcript:
            speech.pop(i, None)
            return self._finish(transcripts.pop(i), windows.pop(i, None), languages.pop(i, None))

        next_out = 0
        for i, (name, audio) in enumerate(items):
            transcripts[i] = Transcript(name)
            if isinstance(audio, Exception):
                transcripts[i].error = getattr(audio, "reason", str(audio))
                continue
            windows[i], languages[i], samples = [], self.options.language, 0
            try:
                # a stream is an iterator (`stream_audio`'s generator); anything else is one waveform, so that a
                # tensor or a list is never read as a stream of one-sample blocks
                for w in self._windows(i, audio if isinstance(audio, Iterator) else [audio]):
                    if i not in windows:  # a failed batch failed this file: read no further
                        break
                    windows[i].append(None)
                    queue.append(w)
                    samples += len(w.audio)
                    while len(queue) >= self.batch_size:
                        self._flush(queue, transcripts, windows, languages, speech, strict)
                    while next_out < i and finished(next_out):  # earlier files, while this one streams
                        yield pop(next_out)
                        next_out += 1
            except AudioLoadError as e:  # unreadable, or bad samples found partway: the file fails
                transcripts[i].error = e.reason
                windows.pop(i, None)
                queue[:] = [w for w in queue if w.file != i]
            transcripts[i].duration = round(samples / SAMPLE_RATE, 3)
            while finished(next_out):
                yield pop(next_out)
                next_out += 1
        while queue:
            self._flush(queue, transcripts, windows, languages, speech, strict)
        while next_out in transcripts:
            yield pop(next_out)
            next_out += 1

    def _flush(self, queue: list[_Window], transcripts: dict[int, Transcript],
               windows: dict[int, list[list[Segment] | None]], languages: dict[int, str | None],
               speech: dict[int, float], strict: bool = False) -> None:
        """Decode the first `batch_size` queued windows into `windows`; a failing batch fails its files, or
        (`strict`: one waveform's call) raises. Words are placed in queue order, where each window of a file
        comes after the file's earlier ones (`speech`: each file's last word end so far)."""
        batch = queue[: self.batch_size]
        del queue[: self.batch_size]
        try:
            results = self._decode_windows(batch, languages)
        except Exception as e:  # noqa: BLE001 - a failing batch fails its files, the run goes on
            if strict:
                raise
            log.debug("decoding failed", exc_info=True)
            for w in batch:
                transcripts[w.file].error = f"decoding failed ({type(e).__name__}: {e})"
                windows.pop(w.file, None)
            queue[:] = [w for w in queue if w.file in windows]  # their other windows are moot
            return
        for w, segments in zip(batch, results):
            if w.file in windows:
                windows[w.file][w.index] = (self._place_words(segments, w, speech) if isinstance(segments, _Aligned)
                                            else segments)

    def _windows(self, file: int, blocks: Iterable[np.ndarray]) -> Iterator[_Window]:
        """Consecutive windows of `window_samples` (the last one shorter; one empty window for
        empty audio) from blocks of any length."""
        n, k, start = self.window_samples, 0, 0
        pending: list[np.ndarray] = []
        filled = 0
        for block in blocks:
            pending.append(block)
            filled += len(block)
            while filled >= n:
                joined = np.concatenate(pending)
                yield _Window(file, k, joined[:n], start / SAMPLE_RATE)
                pending, filled, k, start = [joined[n:].copy()], filled - n, k + 1, start + n
        if filled or k == 0:
            audio = np.concatenate(pending) if pending else np.zeros(0, np.float32)
            yield _Window(file, k, audio, start / SAMPLE_RATE)

    def _finish(self, t: Transcript, windows: list[list[Segment] | None] | None, language: str | None) -> Transcript:
        if t.error is None and windows is not None:
            t.segments = [s for segments in windows for s in segments or ()]
            t.text = "".join(s.text for s in t.segments).strip()
            t.language = language if self.tokenizer.is_multilingual else "en"
        return t

    # --- one batch of windows --------------------------------------------------------------

    # no_grad, not inference_mode: autocast keeps its bf16 copies of the weights for the whole batch only
    # outside inference mode (inside it, every decoding step casts every weight again: ~18% slower in bf16)
    @torch.no_grad()
    def _decode_windows(self, windows: Sequence[_Window],
                        languages: dict[int, str | None]) -> list[list[Segment] | _Aligned]:
        """Segments of each window (word timestamps: its spans and words, to place). Digitally silent windows (all
        samples 0) and those shorter than one Mel frame are not decoded: padded to 30 s, a few samples are
        near-silence, where Whisper hallucinates text."""
        audible = [k for k, w in enumerate(windows) if len(w.audio) >= HOP_LENGTH and np.any(w.audio)]
        if not audible:
            return [[] for _ in windows]
        audio = torch.stack([torch.from_numpy(pad_or_trim(np.ascontiguousarray(windows[k].audio),
                                                          self.window_samples)) for k in audible]).to(self.device)
        if self.options.audio_context is None:  # the exact path: every window over all positions, one batch
            mel = log_mel_spectrogram(audio, n_mels=self.model.n_mels)  # (B, n_mels, 2·n_audio_ctx), fp32 always
            with self._autocast():
                return self._decode_mel(mel, windows, audible, languages)
        out: list[list[Segment] | _Aligned] = [[] for _ in windows]
        pending = list(range(len(audible)))  # rows of `audio`
        while pending:
            # A file's language comes from its first window. Windows of one file can land in different
            # groups: a later window of a file whose language is still to be detected waits for the next
            # pass, so that the first window decides, as in one-at-a-time decoding.
            first: dict[int, int] = {}
            for r in pending:
                first.setdefault(windows[audible[r]].file, r)
            ready = [r for r in pending if not self.tokenizer.is_multilingual
                     or languages.get(windows[audible[r]].file) or first[windows[audible[r]].file] == r]
            pending = [r for r in pending if r not in ready]
            groups: dict[int, list[int]] = {}  # encoder positions -> rows of `audio`
            for r in ready:
                groups.setdefault(self._context_positions(len(windows[audible[r]].audio)), []).append(r)
            for positions, rows in groups.items():
                # The features of the first 2·positions frames only, from the samples they cover: the same
                # values as the full window's, sliced. Past the audio the window is zeros (positions cover at
                # least twice the audio), so the STFT frames are equal, and the per-example "max - 8" floor is
                # unchanged (zero frames sit at the -10 minimum).
                mel = log_mel_spectrogram(audio[rows, : 2 * positions * HOP_LENGTH], n_mels=self.model.n_mels)
                with self._autocast():
                    decoded = self._decode_mel(mel, windows, [audible[r] for r in rows], languages)
                for r in rows:
                    out[audible[r]] = decoded[audible[r]]
        return out

    def _context_positions(self, samples: int) -> int:
        """Encoder positions for a window of `samples` (`DecodingOptions.audio_context`): all of them
        unless audio_context is set; then max(audio_context, 2 × the audio) in whole seconds."""
        full, context = self.model.n_audio_ctx, self.options.audio_context
        if context is None:
            return full
        per_second = SAMPLE_RATE // (2 * HOP_LENGTH)  # 50 positions a second
        seconds = math.ceil(max(context, 2 * samples / SAMPLE_RATE))
        return min(full, seconds * per_second)

    def _decode_mel(self, mel: Tensor, windows: Sequence[_Window], audible: list[int],
                    languages: dict[int, str | None]) -> list[list[Segment] | _Aligned]:
        o = self.options
        out: list[list[Segment] | _Aligned] = [[] for _ in windows]
        ws = [windows[k] for k in audible]
        max_index = torch.tensor([min(round(len(w.audio) / SAMPLE_RATE / TIME_PRECISION),
                                      self.model.n_audio_ctx) for w in ws])
        context, cache = self.encode_mel(mel), KVCache()
        decoded = self.decode_context(context, ws, languages, [self.prompt_prefix] * len(ws), max_index, cache)
        spans = [[] if is_silence(o, d, p) else window_spans(d, self.tokenizer, len(w.audio) / SAMPLE_RATE, w.offset,
                                                              o.without_timestamps) for w, (d, p) in zip(ws, decoded)]
        if o.word_timestamps:
            words = self.align_words(context, cache, ws, spans, languages)
            for k, s, a, (d, p) in zip(audible, spans, words, decoded):
                out[k] = _Aligned(s, a, d, p)
            return out
        for k, s, (d, p) in zip(audible, spans, decoded):
            out[k] = span_segments(s, d, self.tokenizer, p, keep_blank=o.without_timestamps)
        return out

    def align_words(self, context: Tensor, cache: KVCache, windows: Sequence[_Window], spans: list[list[dict]],
                    languages: dict[int, str | None]) -> list[list[WordTiming]]:
        """The words of each window's spans (`window_spans`, `split_window`), all windows in one decoder pass over
        their (B, positions, dim) encoder output and decoding's `cache` of its cross-attention keys/values
        (`align_windows`: openai's `find_alignment`, without encoding the windows again), under the transcriber's
        precision; shared by both long forms."""
        tok = self.tokenizer
        codes = [tok.language_code(tok.language_id(languages[w.file])) if tok.is_multilingual else None
                 for w in windows]
        sots = [tok.sot_sequence(code, self.options.task) for code in codes]
        texts = [window_text_tokens(s, tok.eot) for s in spans]
        frames = [len(w.audio) // HOP_LENGTH for w in windows]  # openai's num_frames: Mel frames of audio
        return align_windows(self.model, tok, sots, texts, context, frames, codes, self._autocast, cache)

    def _place_words(self, aligned: _Aligned, window: _Window, speech: dict[int, float]) -> list[Segment]:
        """One window's segments with their words, placed by openai's `add_word_timestamps` (punctuation merged,
        durations clipped, segment start and end moved to the words) after its file's last word end so far
        (`speech`, updated), then kept as openai keeps them (a segment left blank or instantaneous: no text,
        tokens or words). As every time in windows mode, words and segments stay within the window's audio
        (openai's nudges can move a first word before the window or a last one past its end)."""
        o, spans = self.options, aligned.spans
        add_word_timestamps(spans, aligned.alignment, self.tokenizer.eot, window.offset,
                            speech.get(window.file, 0.0), o.prepend_punctuations, o.append_punctuations)
        end = last_end(spans)
        if end is not None:
            speech[window.file] = end
        low, high = window.offset, window.offset + len(window.audio) / SAMPLE_RATE
        for item in [*spans, *(w for s in spans for w in s.get("words", ()))]:
            item["start"], item["end"] = min(max(item["start"], low), high), min(max(item["end"], low), high)
        return openai_segments(spans, aligned.decoded, aligned.no_speech, self.tokenizer)

    @torch.no_grad()
    def encode_mel(self, mel: Tensor) -> Tensor:
        """(B, positions, dim) encoder output of (B, n_mels, 2·positions) features, under the transcriber's
        precision."""
        # the mel in the weights' dtype: a model cast by .half()/.to(torch.bfloat16)/.double() takes no fp32 input
        # (under autocast the weights stay fp32 and autocast casts)
        mel = mel.to(next(p.dtype for p in self.model.parameters() if p.is_floating_point()))
        with self._autocast():
            return self.model.encode(mel, partial=True)  # all n_audio_ctx positions unless audio_context

    @torch.no_grad()
    def decode_context(self, context: Tensor, windows: Sequence[_Window], languages: dict[int, str | None],
                       prefixes: Sequence[list[int]], max_index: Tensor,
                       cache: KVCache | None = None) -> list[tuple[Decoded, float]]:
        """Decode windows given as their encoder output, with the temperature fallback; shared by both long forms.

        Args:
            context: (B, positions, dim) the windows' `encode_mel` output.
            windows: the B windows (their files key `languages`; their samples seed the sampling).
            languages: file -> language; a None one is detected here on the window and stored.
            prefixes: per window, [<|startofprev|>, *prompt tokens] before its task tokens, or [] (sequential
                decoding's previous texts are of different lengths: left-padded, each window decoded as alone,
                `KVCache.padding`).
            max_index: (B,) the last timestamp index each window may predict.
            cache: an empty `KVCache` to fill (the caller keeps the cross-attention keys/values: word timing
                reads them again), or None.

        Returns:
            (the decoding, the <|nospeech|> probability) per window.
        """
        tok, model = self.tokenizer, self.model
        with self._autocast():
            # One pass over the prompt (if any) and <|startoftranscript|> fills the cross-attention cache and
            # gives the no-speech probability, read at <|startoftranscript|> (openai/whisper's `sot_index`).
            cache = cache if cache is not None else KVCache()
            head, padding = left_padded([[*p, tok.sot] for p in prefixes], tok.eot, self.device)
            cache.padding = padding if bool(padding.any()) else None  # equal prefixes: no padding, no mask
            at_sot = model(head, context, cache)[:, -1].float()  # (B, V)
            no_speech = at_sot.softmax(dim=-1)[:, tok.no_speech].tolist()
            first = at_sot if not any(prefixes) else self._language_logits(context, cache, at_sot, windows, languages)
            self._detect_languages(windows, first, languages)
            # every task sequence is as long (<|startoftranscript|>, language, task, timestamps), so the prompts
            # are padded as the heads were
            prompts, _ = left_padded([p + tok.sot_sequence(languages[w.file] if tok.is_multilingual else None,
                                                           self.options.task, self.options.without_timestamps)
                                      for p, w in zip(prefixes, windows)], tok.eot, self.device)
            decoder = WindowDecoder(model, tok, self.options)  # built per batch: it holds no state of its own
            decoded = decoder.decode(context, cache, prompts, max_index, no_speech, [w.audio for w in windows])
        return list(zip(decoded, no_speech))

    @torch.no_grad()
    def detect_language(self, mel: Tensor) -> str | None:
        """The language of one window's (n_mels, frames) features, read at <|startoftranscript|> alone (openai's
        `detect_language`); None for English-only checkpoints."""
        if not self.tokenizer.is_multilingual:
            return None
        mel = mel[None].to(next(p.dtype for p in self.model.parameters() if p.is_floating_point()))
        with self._autocast():
            sot = torch.tensor([[self.tokenizer.sot]], device=self.device)
            logits = self.model(sot, self.model.encode(mel, partial=True), KVCache())[:, -1].float()
        languages: dict[int, str | None] = {0: None}
        self._detect_languages([_Window(0, 0, np.zeros(0, np.float32), 0.0)], logits, languages)
        return languages[0]

    def _language_logits(self, context: Tensor, cache: KVCache, at_sot: Tensor, windows: Sequence[_Window],
                         languages: dict[int, str | None]) -> Tensor:
        """(B, V) logits language detection reads: openai/whisper's `detect_language` feeds <|startoftranscript|>
        alone, never the prompt; with a prompt that is a second one-token pass, on the cached keys/values of the
        audio (a fork without the prompt's), and only while some window's language is still unknown."""
        if not (self.tokenizer.is_multilingual
                and any(languages.get(w.file) is None for w in windows)):
            return at_sot
        alone = cache.fork(torch.arange(len(windows), device=self.device), keep_prefix=False)
        sot = torch.full((len(windows), 1), self.tokenizer.sot, dtype=torch.long, device=self.device)
        return self.model(sot, context, alone)[:, 0].float()

    def _detect_languages(self, windows: Sequence[_Window], first_logits: Tensor,
                          languages: dict[int, str | None]) -> None:
        """Each window's file whose language is still None gets the likeliest language token of its (B, V)
        logits at <|startoftranscript|> alone."""
        tok = self.tokenizer
        if not tok.is_multilingual:
            return
        lang_ids = torch.tensor(list(tok.language_ids.values()), device=first_logits.device)
        for row, w in enumerate(windows):
            if languages.get(w.file) is None:  # the file's first window in this run decides
                best = int(lang_ids[first_logits[row, lang_ids].argmax()])
                languages[w.file] = tok.language_code(best)


def transcriber_for(model: Whisper, tokenizer: SpeechTokenizer, batch_size: int = 8) -> Transcriber:
    """A `Transcriber` over an in-memory model with the interactive defaults (`greedy_options`):
    greedy decoding; one segment per encoder window for tokenizers without timestamp tokens
    (character/BPE ones; their windows are the model's `n_audio_ctx`, e.g. 4 s, and long audio
    is cut at window boundaries)."""
    return Transcriber(model.eval(), tokenizer, greedy_options(tokenizer), batch_size)


def load_transcriber(name: str | Path, device: str | torch.device = "cpu", batch_size: int = 8,
                     options: DecodingOptions | None = None, tokenizer: str | Path | None = None,
                     precision: str = "fp32", quantize: str = "none") -> Transcriber:
    """A `Transcriber` for a `--model` name (`load_speech_model`), with `options` or, if None,
    the interactive defaults (`greedy_options`), at `precision` / `quantize` (`Transcriber`'s); what
    `mmkit demo speech` serves."""
    model, tok = load_speech_model(name, device, tokenizer)
    return Transcriber(model, tok, options or greedy_options(tok), batch_size, precision, quantize)
