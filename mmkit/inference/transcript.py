"""What the transcriber takes and gives: Whisper's decoding options (openai/whisper
`decoding.py` `DecodingOptions` and `transcribe.py`'s fallback thresholds), segments and
transcripts, and the helpers that score and cut a window's tokens (Radford et al., 2022, §4.5).
"""
from __future__ import annotations

import hashlib
import math
import numbers
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from mmkit.core.decoding import GenerationOptions
from mmkit.limits import finite32
from mmkit.data.char_tokenizer import CharTokenizer
from mmkit.data.whisper_tokenizer import TIME_PRECISION
from mmkit.inference.inputs import check_types

@dataclass
class DecodingOptions:
    """How to decode each window (openai/whisper's defaults).

    Composes the shared loop's `GenerationOptions` rather than extending it: Whisper's
    temperature is a fallback ladder, not one value, and its token limit defaults to half the
    decoder context; `generation` turns one rung of the ladder into the generic options.

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
        seed: seed of the sampling generators (reproducible fallbacks): each window is sampled
            from its own generator, seeded from this, the attempt and the window's samples, so a
            file's text does not depend on which files share its batch (`RowSampling`).
        audio_context: seconds; None (default) encodes every window over the full 30 s, as
            openai/whisper, exactly. A number trades that exactness for speed on short audio
            (whisper.cpp's `audio_ctx`): a window holding d seconds is encoded over max(audio_context,
            2·d) seconds, rounded up to a whole second and never more than the window, so the
            encoder's work falls with the audio's length (README: WER and time per setting).
        initial_prompt: text the decoder reads before every window (openai/whisper's `prompt`: names,
            jargon, punctuation style): <|startofprev|> and the last n_text_ctx // 2 - 1 tokens of
            " " + the stripped text go before the task tokens. Every window, not only the first: windows are
            decoded independently (openai's `transcribe(..., condition_on_previous_text=False,
            carry_initial_prompt=True)`). None or "" (the default): no prompt. With long_form="sequential",
            openai's `transcribe(initial_prompt=...)` instead: the first window only (and while the previous
            text is conditioned on, what later windows' prompts start with until it is cut to the last
            n_text_ctx // 2 - 1 tokens); there "" is a prompt, the token " ", as in openai's.
        long_form: how audio longer than a window is cut. "windows" (the default): fixed, consecutive 30 s
            windows decoded independently, so that the windows of many files are batched together (fast).
            "sequential": openai/whisper's `transcribe()` exactly (`mmkit.inference.sequential`): one window
            at a time per file, each starting at the last complete segment's end timestamp (a word crossing
            30 s is not cut), optionally prompted with the previous text; slower (the files' current windows
            batched, `batch_size` files at a time, each file's windows one after another), each file
            read once into a temporary file and its features computed window by window (`SpilledAudio`: equal
            to openai's whole-file features, memory bounded whatever the length), and the repetition guard,
            an mmkit addition, still applies unless turned off.
        condition_on_previous_text: sequential only: prompt each window with the text decoded since the
            last reset (openai's option; the prompt resets after a window decoded above temperature 0.5).
            None (the default): the long form's own behaviour, True for "sequential" (openai's default),
            False for "windows", which cannot honour True (a ValueError).
        word_timestamps: give each segment its words with their times and probabilities (openai's
            `transcribe(word_timestamps=True)`, `mmkit.inference.word_timing`: cross-attention of the model's
            alignment heads, aligned by dynamic time warping), which also moves segment boundaries to the words'
            as openai's does. Each window's text is read once more by the decoder (in "windows", one pass per
            batch of windows, on the encoder output decoding used). "sequential" also moves the next window's
            start to the last word's end; "windows" keeps its fixed windows and clips words to a window's audio.
        prepend_punctuations: with word_timestamps, these marks join the next word (openai's default).
        append_punctuations: with word_timestamps, these marks join the previous word (openai's default).
        clip_timestamps: sequential only: the spans to transcribe, (start, end, start, end, ...) in seconds
            (openai's `clip_timestamps`); an odd count runs the last one to the audio's end; () the whole audio.
        hallucination_silence_threshold: sequential with word_timestamps only (it moves seeks): seconds of
            silence around a likely hallucination (improbable, very short or very long words) beyond which openai
            skips the silence and decodes again after it (openai's option); None (the default): off.
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
    audio_context: float | None = None
    initial_prompt: str | None = None
    long_form: str = "windows"
    condition_on_previous_text: bool | None = None
    word_timestamps: bool = False
    prepend_punctuations: str = "\"'“¿([{-"
    append_punctuations: str = "\"'.。,，!！?？:：”)]}、"
    clip_timestamps: tuple[float, ...] = ()
    hallucination_silence_threshold: float | None = None

    def __post_init__(self) -> None:
        # checked here, before any model is loaded, so that the API and the CLI refuse the same values
        check_types(self, ints=("beam_size", "best_of", "max_new_tokens", "seed"),
                    reals=("compression_ratio_threshold", "logprob_threshold", "no_speech_threshold", "audio_context",
                           "hallucination_silence_threshold"))
        if not isinstance(self.temperatures, (tuple, list)) or not all(
                isinstance(t, numbers.Real) and not isinstance(t, bool) for t in self.temperatures):
            raise TypeError(f"DecodingOptions: temperatures must be a tuple of numbers, e.g. (0.0,), "
                            f"got {self.temperatures!r}")
        if self.initial_prompt is not None and not isinstance(self.initial_prompt, str):
            raise TypeError(f"DecodingOptions: initial_prompt must be a string or None, got {self.initial_prompt!r}")
        if self.condition_on_previous_text is not None and not isinstance(self.condition_on_previous_text, bool):
            raise TypeError(f"DecodingOptions: condition_on_previous_text must be True, False or None, got "
                            f"{self.condition_on_previous_text!r}")
        for name in ("prepend_punctuations", "append_punctuations"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"DecodingOptions: {name} must be a string, got {getattr(self, name)!r}")
        if not isinstance(self.word_timestamps, bool):
            raise TypeError(f"DecodingOptions: word_timestamps must be True or False, got {self.word_timestamps!r}")
        if self.long_form not in ("windows", "sequential"):
            raise ValueError(f"long_form must be 'windows' or 'sequential', got {self.long_form!r}")
        if self.long_form == "windows" and self.condition_on_previous_text:
            raise ValueError("condition_on_previous_text needs long_form='sequential' (--long-form sequential): "
                             "windows are decoded independently, without the previous text")
        if not isinstance(self.clip_timestamps, (tuple, list)) or not all(
                isinstance(t, numbers.Real) and not isinstance(t, bool) and math.isfinite(t) and t >= 0
                for t in self.clip_timestamps):
            raise ValueError(f"clip_timestamps must be seconds >= 0 (start, end, start, ...), got "
                             f"{self.clip_timestamps!r}")
        clips = list(self.clip_timestamps)
        empty = [f"{a:g}-{b:g}" for a, b in zip(clips[::2], clips[1::2]) if b <= a]
        if empty:  # openai transcribes nothing there, silently: a mistake, said here
            raise ValueError(f"clip_timestamps: the span {empty[0]} s ends before it starts (give start,end,...)")
        if self.hallucination_silence_threshold is not None and not (
                math.isfinite(self.hallucination_silence_threshold) and self.hallucination_silence_threshold >= 0):
            raise ValueError(f"hallucination_silence_threshold must be seconds >= 0 or None, got "
                             f"{self.hallucination_silence_threshold}")
        if self.hallucination_silence_threshold is not None and not self.word_timestamps:
            raise ValueError("hallucination_silence_threshold needs word_timestamps (--word-timestamps): it reads "
                             "the words' probabilities and durations")
        # (0,), openai's default, is the whole audio: the windows long form runs it
        if self.long_form == "windows" and [t for t in self.clip_timestamps] not in ([], [0]):
            raise ValueError("clip_timestamps needs long_form='sequential' (--long-form sequential)")
        if self.long_form == "windows" and self.hallucination_silence_threshold is not None:
            raise ValueError("hallucination_silence_threshold needs long_form='sequential' (--long-form sequential): "
                             "it moves where the next window starts")
        if self.long_form == "sequential" and self.audio_context is not None:
            raise ValueError("audio_context needs long_form='windows': sequential decoding encodes every window "
                             "over the full 30 s, as openai/whisper")
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', got {self.task!r}")
        if not self.temperatures or not all(finite32(t) and t >= 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be finite (in float32: at most 3.4e38) and >= 0, got "
                             f"{self.temperatures}")
        if self.beam_size < 1 or self.best_of < 1:
            raise ValueError(f"beam_size and best_of must be >= 1, got {self.beam_size} and {self.best_of}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 (None: the default), got {self.max_new_tokens}")
        if self.audio_context is not None and not (math.isfinite(self.audio_context) and self.audio_context > 0):
            raise ValueError(f"audio_context must be a positive number of seconds or None, got {self.audio_context}")
        for name in ("compression_ratio_threshold", "logprob_threshold", "no_speech_threshold"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number or None, got {value}")

    def generation(self, attempt: int, max_new_tokens: int) -> GenerationOptions:
        """The shared loop's options for fallback `attempt` (an index into `temperatures`):
        greedy or beam search at temperature 0, sampling above it, seeded `seed + attempt` (wrapping past the
        largest seed, 2**64 - 1, to 0)."""
        temperature = self.temperatures[attempt]
        return GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature,
                                 beam_size=self.beam_size if temperature == 0 else 1,
                                 seed=(self.seed + attempt) % 2**64, early_stopping=None)  # openai-whisper's rule


def window_seed(audio: np.ndarray, seed: int, attempt: int) -> int:
    """A 63-bit sampling seed from a window's samples, the user's seed and the fallback attempt:
    the same window gets the same draws whatever file, batch or position it is decoded in."""
    h = hashlib.blake2b(np.ascontiguousarray(audio, dtype=np.float32).tobytes(), digest_size=8,
                        key=f"{seed}/{attempt}".encode())
    return int.from_bytes(h.digest(), "little") >> 1


def greedy_options(tokenizer: Any) -> DecodingOptions:
    """Interactive defaults (the demo, `load_transcriber`): greedy without fallback; the language is
    detected per file on multilingual checkpoints, as openai/whisper, faster-whisper and transformers do
    (pinning English turned German speech into an English translation or garbage, silently).
    Character/BPE tokenizers (no <|nospeech|> token worth reading, no languages) get no silence skip;
    the transcriber drops their timestamps."""
    if isinstance(tokenizer, CharTokenizer):
        return DecodingOptions(temperatures=(0.0,), no_speech_threshold=None)
    return DecodingOptions(temperatures=(0.0,))


@dataclass
class Word:
    """A word of a segment (`DecodingOptions.word_timestamps`): its text with its leading space and merged
    punctuation, times in seconds from the start of the file, and its tokens' mean probability."""

    word: str
    start: float
    end: float
    probability: float


@dataclass
class Segment:
    """A span of speech: times in seconds from the start of the file; `tokens` are its text tokens; `words`
    its words where word timestamps were computed (None otherwise)."""

    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: list[Word] | None = None


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
        """JSON-ready fields; a segment's "words" only where word timestamps were computed."""
        segments = []
        for i, s in enumerate(self.segments):
            row = {"id": i, **asdict(s)}
            if s.words is None:
                del row["words"]
            segments.append(row)
        return {"file": self.path, "text": self.text, "language": self.language, "duration": self.duration,
                "segments": segments}


@dataclass
class Decoded:
    """One window's decoding (openai/whisper's `DecodingResult`): generated tokens without
    <|endoftext|>, their summed log-probability, and the scores the fallback checks."""

    tokens: list[int]
    sum_logprob: float
    temperature: float
    looped: bool  # ended by the repetition guard
    text: str = ""
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0

    @classmethod
    def scored(cls, tokens: list[int], sum_logprob: float, temperature: float, looped: bool, text: str) -> "Decoded":
        return cls(tokens, sum_logprob, temperature, looped, text,
                   avg_logprob=sum_logprob / (len(tokens) + 1),  # + 1: <|endoftext|>, as openai/whisper
                   compression_ratio=compression_ratio(text))


def is_silence(options: DecodingOptions, d: Decoded, no_speech_prob: float) -> bool:
    """openai/whisper's no-speech skip: a window likely silent (<|nospeech|> above its threshold) whose text is
    not likely enough to keep anyway (mean log-probability not above `logprob_threshold`) gives no segments."""
    o = options
    return (o.no_speech_threshold is not None and no_speech_prob > o.no_speech_threshold
            and not (o.logprob_threshold is not None and d.avg_logprob > o.logprob_threshold))


def window_spans(d: Decoded, tokenizer: Any, duration: float, offset: float, without_timestamps: bool) -> list[dict]:
    """A window's segments as {"start", "end", "tokens"} (times in seconds from the file's start, `offset` being
    the window's, unrounded, within the window's `duration`), split at timestamp tokens (`timestamp_spans`);
    without timestamps the window is one segment. Every text token is in one; blank ones included."""
    if without_timestamps:
        spans = [(0.0, duration, d.tokens)] if d.tokens else []
    else:
        spans = timestamp_spans(d.tokens, tokenizer.timestamp_begin, duration)
    out = []
    for start, end, tokens in spans:
        start = min(start, duration)
        out.append(dict(start=offset + start, end=offset + min(max(end, start), duration), tokens=list(tokens)))
    return out


def span_segments(spans: list[dict], d: Decoded, tokenizer: Any, no_speech_prob: float,
                  keep_blank: bool) -> list[Segment]:
    """The `Segment`s of a window's spans (`window_spans`), times rounded to the millisecond; spans whose text is
    blank are dropped unless `keep_blank`."""
    stats = dict(temperature=d.temperature, avg_logprob=round(d.avg_logprob, 4),
                 compression_ratio=round(d.compression_ratio, 4), no_speech_prob=round(no_speech_prob, 4))
    segments = []
    for span in spans:
        text = tokenizer.decode(span["tokens"])
        if not keep_blank and not text.strip():
            continue
        segments.append(Segment(round(span["start"], 3), round(span["end"], 3), text, span["tokens"], **stats))
    return segments


def window_segments(d: Decoded, tokenizer: Any, duration: float, offset: float, no_speech_prob: float,
                    without_timestamps: bool) -> list[Segment]:
    """Split a window's tokens at timestamp tokens into segments with times from the file's start
    (`offset` = the window's). Without timestamps the window is one segment (kept even if its text
    is blank, so that its tokens are reported); with them, spans without text are dropped."""
    return span_segments(window_spans(d, tokenizer, duration, offset, without_timestamps), d, tokenizer,
                         no_speech_prob, keep_blank=without_timestamps)


def compression_ratio(text: str) -> float:
    """len(utf-8 bytes) / len(zlib-compressed bytes): high for repetitive text (openai/whisper)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def timestamp_spans(tokens: Sequence[int], timestamp_begin: int,
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
