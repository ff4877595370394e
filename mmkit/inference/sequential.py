"""Sequential long-form transcription, exactly openai/whisper's `transcribe()` (Radford et al., 2022, §4.5):
one window at a time per file, each starting where the last complete segment of the previous one ended (its
last timestamp), prompted with the text decoded since the last reset (`condition_on_previous_text`), silent
windows skipped whole. The windows are decoded by the transcriber's own window decoding
(`Transcriber.decode_context`); what is here is openai's seek, prompt and segment bookkeeping around it.

Files are batched: each file's windows must come one after another, but the current windows of up to
`batch_size` files are encoded and decoded together, each file's previous text left-padded to one length
(`KVCache.padding`), so that every window decodes as it would alone; with word timestamps their words are then
aligned together too, in one decoder pass over the batch's encoder output.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Generator, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from torch import Tensor

from mmkit.audio import HOP_LENGTH, SAMPLE_RATE, AudioLoadError, SpilledAudio, pad_or_trim
from mmkit.core import KVCache
from mmkit.inference.transcript import Decoded, Segment, Transcript, Word, is_silence
from mmkit.inference.window_decoder import Window, previous_text_prompt
from mmkit.inference.word_timing import (
    WordTiming, add_word_timestamps, is_segment_anomaly, last_end, next_words_segment,
)

if TYPE_CHECKING:  # the transcriber imports this module
    from mmkit.inference.transcriber import Transcriber

log = logging.getLogger(__name__)

X, Y = TypeVar("X"), TypeVar("Y")
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # Mel frames a second (100): openai seeks to a word's end in these


@dataclass
class _Request:
    """A window a file's `_file_windows` asks to have decoded."""

    window: Window
    features: Tensor  # (n_mels, 2·n_audio_ctx): the window's slice of the file's features, zeros after the audio
    prefix: list[int]  # [<|startofprev|>, *previous text] or []


@dataclass
class _Aligner:
    """The words of windows decoded in one batch (`Transcriber.align_words`), over that batch's encoder output and
    cross-attention cache: any of its rows, in one decoder pass."""

    tr: "Transcriber"
    context: Tensor
    cache: KVCache
    windows: list[Window]
    languages: dict[int, str | None]

    def __call__(self, rows: list[int], spans: list[list[dict]]) -> list[list[WordTiming]]:
        index = torch.tensor(rows, device=self.context.device)
        return self.tr.align_words(self.context.index_select(0, index), self.cache.fork(index, keep_prefix=False),
                                   [self.windows[r] for r in rows], spans, self.languages)


@dataclass
class _Reply:
    """The window decoded: its decoding, its <|nospeech|> probability, and the aligner of its batch with its row
    there (for its words)."""

    decoded: Decoded
    no_speech: float
    aligner: _Aligner
    row: int


@dataclass
class _Words:
    """A file's request for the words of its window's spans (word timestamps), sent back as a list of
    `WordTiming` (or the exception that failed them)."""

    spans: list[dict]
    reply: _Reply  # the window's decoding: its aligner and row


FileWindows = Generator["_Request | _Words", "_Reply | list[WordTiming] | Exception | None",
                        "tuple[list[Segment], str, str]"]


@dataclass
class _Open:
    """A file being decoded: its transcript, its spilled audio, its generator and the window it waits for."""

    transcript: Transcript
    audio: SpilledAudio
    windows: FileWindows
    request: _Request | _Words
    number: int  # the file's place in the input (its windows' `file`)


def sequential_transcripts(tr: "Transcriber",
                           items: Iterable[tuple[str, np.ndarray | Iterator[np.ndarray] | Exception]],
                           strict: bool = False) -> Iterator[Transcript]:
    """One `Transcript` per (name, waveform, a stream of blocks or the error that stopped its loading), in order,
    up to `tr.batch_size` files decoded at once (their current windows in one batch). A file is read once into
    a temporary file on disk (`SpilledAudio`: openai's features are computed over the whole file, its "max - 8"
    floor is the file's, not the window's, and memory stays bounded whatever the file's length); a failure
    fails that file only, or (`strict`: one waveform's call) raises. So does a file that no clip of
    `clip_timestamps` reaches into (`clips_past_end`: a ValueError)."""
    languages: dict[int, str | None] = {}  # file number -> language, as the windows' `file` key them
    active: list[_Open] = []
    done: dict[int, Transcript] = {}
    numbered = enumerate(items)
    shown, more = 0, True

    def hand(answers: Sequence[object]) -> None:
        """Each active file its answer (`_advance`); the finished ones leave."""
        for f, answer in zip(list(active), answers):
            if not _advance(f, answer, strict):  # type: ignore[arg-type]
                active.remove(f)
                done[f.number] = f.transcript
                languages.pop(f.number, None)

    try:
        while more or active:
            while more and len(active) < tr.batch_size:
                try:
                    n, (name, audio) = next(numbered)
                except StopIteration:
                    more = False
                    break
                opened = _open(tr, n, name, audio, languages, strict)
                if isinstance(opened, Transcript):
                    done[n] = opened
                else:
                    active.append(opened)
            if active:  # the current windows decoded together, then (word timestamps) their words aligned
                hand(_decode_batch(tr, [f.request for f in active], languages, strict))  # type: ignore[misc]
                hand(_words_batch([f.request for f in active], strict))
            while shown in done:  # in input order
                yield done.pop(shown)
                shown += 1
    finally:  # an abandoned run (an error, Ctrl-C, a consumer that stops): every temporary file closed
        for f in active:
            f.audio.close()


def _open(tr: "Transcriber", n: int, name: str, audio: np.ndarray | Iterator[np.ndarray] | Exception,
          languages: dict[int, str | None], strict: bool) -> _Open | Transcript:
    """File `n` spilled and its first window asked for, or its finished transcript (it failed to load, or it has
    no window to decode)."""
    t = Transcript(name)
    if isinstance(audio, Exception):
        t.error = getattr(audio, "reason", str(audio))
        return t
    try:
        spilled = SpilledAudio(audio if isinstance(audio, Iterator) else [audio], tr.model.n_mels,
                               padding=tr.window_samples, device=tr.device)
    except AudioLoadError as e:  # unreadable, or bad samples found partway: the file fails
        t.error = e.reason
        return t
    except OSError as e:  # the temporary file (a full disk): that file fails
        if strict:
            raise
        t.error = f"could not hold the audio in a temporary file ({e.strerror or e})"
        return t
    t.duration = round(spilled.num_samples / SAMPLE_RATE, 3)
    t.error = clips_past_end(name, tr.options.clip_timestamps, spilled.content_frames)
    if t.error is not None:
        spilled.close()
        if strict:  # one waveform's call: nothing to go on to
            raise ValueError(t.error)
        return t
    f = _Open(t, spilled, _file_windows(tr, spilled, n, languages), None, n)  # type: ignore[arg-type]
    return f if _advance(f, None, strict) else f.transcript


def _advance(f: _Open, reply: _Reply | list[WordTiming] | Exception | None, strict: bool) -> bool:
    """Hand file `f` the answer to its request (None: start it; a file with no request waiting keeps it) and keep
    the next request it makes: True, or finish its transcript (done, or failed alone) and close its audio:
    False."""
    try:
        if reply is _NOTHING:
            return True
        f.request = next(f.windows) if reply is None else f.windows.send(reply)
        return True
    except StopIteration as done:
        f.transcript.segments, f.transcript.text, f.transcript.language = done.value
    except Exception as e:  # noqa: BLE001 - a failing file fails alone, the run goes on
        if strict:
            f.audio.close()
            raise
        log.debug("decoding failed", exc_info=True)
        f.transcript.error = f"decoding failed ({type(e).__name__}: {e})"
    f.audio.close()
    return False


def _decode_batch(tr: "Transcriber", requests: list[_Request], languages: dict[int, str | None],
                  strict: bool) -> list[_Reply | Exception]:
    """Each request's reply, the windows encoded and decoded in one batch (`_batch_or_alone`)."""
    return _batch_or_alone(requests, lambda some: _decode(tr, some, languages), strict, "decoding")


def _words_batch(requests: list[_Request | _Words], strict: bool) -> list[list[WordTiming] | Exception | object]:
    """The words each `_Words` request asks for (`_NOTHING` for the other requests): the windows of one decoding
    batch aligned in one pass (`_Aligner`, `_batch_or_alone`)."""
    out: list[list[WordTiming] | Exception | object] = [_NOTHING] * len(requests)
    batches: dict[int, list[int]] = {}  # aligner -> the requests of its batch
    for i, r in enumerate(requests):
        if isinstance(r, _Words):
            batches.setdefault(id(r.reply.aligner), []).append(i)
    for members in batches.values():
        words: list[_Words] = [requests[i] for i in members]  # type: ignore[misc]
        aligner = words[0].reply.aligner
        found = _batch_or_alone(words, lambda some: aligner([w.reply.row for w in some], [w.spans for w in some]),
                                strict, "aligning")
        for i, one in zip(members, found):
            out[i] = one
    return out


def _batch_or_alone(items: list[X], run: Callable[[list[X]], list[Y]], strict: bool, what: str) -> list[Y | Exception]:
    """`run(items)`, one result per item, in one batch; where the batch fails (out of memory, say), each item run
    alone, so that only an item that fails alone fails its file (its exception in its place; `strict`: raised)."""
    try:
        return run(items)  # type: ignore[return-value]
    except Exception as e:  # noqa: BLE001 - retried alone below, or the one window's failure
        if strict:
            raise
        if len(items) == 1:
            return [e]
        log.debug("%s a batch of %d windows failed; %s them one at a time", what, len(items), what, exc_info=True)
    out: list[Y | Exception] = []
    for item in items:
        try:
            out.append(run([item])[0])
        except Exception as e:  # noqa: BLE001 - that window's file fails (`_advance` raises it in its generator)
            out.append(e)
    return out


_NOTHING = object()  # `_words_batch`'s answer to a request that is not for words: the file keeps waiting


def _decode(tr: "Transcriber", requests: list[_Request], languages: dict[int, str | None]) -> list[_Reply]:
    """The requests' windows encoded in one batch and decoded in one (`Transcriber.decode_context`; their previous
    texts left-padded), each with the aligner of the batch (`_Aligner`) and its row there."""
    tok = tr.tokenizer
    context, cache = tr.encode_mel(torch.stack([r.features for r in requests])), KVCache()
    windows = [r.window for r in requests]
    # openai lets a window's timestamps run to 30.00 whatever audio it holds (the windows' cap is the audio's end)
    no_cap = torch.full((len(requests),), tok.timestamp_end - tok.timestamp_begin)
    decoded = tr.decode_context(context, windows, languages, [r.prefix for r in requests], no_cap, cache)
    aligner = _Aligner(tr, context, cache, windows, languages)
    return [_Reply(d, no_speech, aligner, b) for b, (d, no_speech) in enumerate(decoded)]


def transcribe_sequential(tr: "Transcriber", audio: np.ndarray | SpilledAudio) -> tuple[list[Segment], str, str]:
    """openai/whisper's `transcribe(model, audio, ...)` on one (N,) waveform (or its `SpilledAudio`, whose
    padding is `tr.window_samples`) with `tr`'s model and options:
    (segments, text, language). Segment times are rounded to the millisecond, as the windows' are; segments
    whose text is blank or whose start is their end are kept with no text and no tokens, as openai keeps them.
    With `word_timestamps`, each segment gets its words (`mmkit.inference.word_timing`), which move segment
    boundaries and the next window's start as openai's do."""
    if isinstance(audio, np.ndarray):
        with SpilledAudio([audio], tr.model.n_mels, padding=tr.window_samples, device=tr.device) as spilled:
            return transcribe_sequential(tr, spilled)
    languages: dict[int, str | None] = {}
    windows = _file_windows(tr, audio, 0, languages)
    try:
        request = next(windows)
        while True:
            if isinstance(request, _Words):
                request = windows.send(request.reply.aligner([request.reply.row], [request.spans])[0])
            else:
                request = windows.send(_decode(tr, [request], languages)[0])
    except StopIteration as done:
        return done.value


def _file_windows(tr: "Transcriber", audio: SpilledAudio, file: int, languages: dict[int, str | None]) -> FileWindows:
    """openai's `transcribe()` on one file as a generator: it yields each window to decode (`_Request`), is sent
    its decoding (`_Reply`; an exception sent in is raised here), with word timestamps then yields its spans
    (`_Words`) and is sent their words, and returns (segments, text, language).
    `languages[file]` holds the file's language (detected on its first window unless `tr.options` gives one)."""
    o, tok, model = tr.options, tr.tokenizer, tr.model
    n_frames = 2 * model.n_audio_ctx  # openai's N_FRAMES: 3000 Mel frames, 30 s
    stride = n_frames // model.n_audio_ctx  # Mel frames per timestamp step (2: 0.02 s)
    # the features of the whole file and 30 s of zeros after it, as openai slices its windows from them (its
    # "max - 8" floor is the whole file's), computed window by window
    content_frames = audio.content_frames
    languages[file] = o.language
    clips = seek_clips(o.clip_timestamps, content_frames)
    if tok.is_multilingual and o.language is None and (content_frames < n_frames or clips[0][0] != 0):
        # openai detects on the first 3000 frames, trailing zeros' features included; the first window pads
        # its features with 0 instead, so it gives the same language only when it holds 30 s of audio (and
        # starts the file: a clip may start later)
        languages[file] = tr.detect_language(audio.features(0, n_frames))
    # openai prompts with the initial prompt whenever it is not None ("" is the token " ")
    initial = tok.encode(" " + o.initial_prompt.strip()) if o.initial_prompt is not None else []
    all_tokens, segments, reset_since, index = list(initial), [], 0, 0
    condition = o.condition_on_previous_text is not False  # None: openai's default, True
    last_speech = 0.0  # the end of the last word so far (word timestamps: a pause before a window's first word)
    for clip_start, clip_end in clips:
        seek = clip_start  # openai's: a clip starts at its start, wherever the previous one's last window ended
        while seek < clip_end:
            size = min(n_frames, content_frames - seek, clip_end - seek)
            offset = float(seek * HOP_LENGTH / SAMPLE_RATE)
            window = Window(file, index, audio.samples(seek * HOP_LENGTH, (seek + size) * HOP_LENGTH), offset)
            prompt = all_tokens[reset_since:]
            prefix = previous_text_prompt(tok, prompt, model.n_text_ctx) if prompt else []
            features = pad_or_trim(audio.features(seek, size), n_frames)  # (n_mels, n_frames), zeros after
            reply = yield _Request(window, features, prefix)
            if isinstance(reply, Exception):  # the window failed to decode, alone: the file fails
                raise reply
            d, no_speech = reply.decoded, reply.no_speech
            index += 1
            if is_silence(o, d, no_speech):
                seek += size  # the whole window is skipped
                continue
            previous_seek = seek
            spans, seek, single_ending = split_window(d.tokens, tok, seek, size, stride)
            if o.word_timestamps:
                alignment = yield _Words(spans, reply)
                if isinstance(alignment, Exception):  # the words failed, alone: the file fails
                    raise alignment
                seek, last_speech, skip = _time_words(tr, spans, alignment, previous_seek, size,
                                                      (seek, single_ending), last_speech, content_frames)
                if skip:  # silence, then a likely hallucination: decode again from after the silence
                    continue
            current = window_segments(spans, d, no_speech, tok)
            segments.extend(current)
            all_tokens.extend(t for s in current for t in s.tokens)
            if not condition or d.temperature > 0.5:  # text sampled that hot is not worth conditioning on
                reset_since = len(all_tokens)
    language = languages[file] if tok.is_multilingual else "en"
    return segments, tok.decode(all_tokens[len(initial):]).strip(), language


def _time_words(tr: "Transcriber", spans: list[dict], alignment: list[WordTiming],
                window_seek: int, size: int, seek_after: tuple[int, bool], last_speech: float,
                content_frames: int) -> tuple[int, float, bool]:
    """Words for a window's spans (in place) and openai's seek after them: to the last word's end unless the
    window ended with a single timestamp, then the hallucination skips if asked. `alignment`: the spans' words
    (`_Aligner`); `seek_after` the seek the timestamps gave and whether the window ended with a single one.
    Returns (the next seek, the end of the last word so far, whether the window is dropped whole)."""
    o, tok = tr.options, tr.tokenizer
    seek, single_ending = seek_after
    offset = float(window_seek * HOP_LENGTH / SAMPLE_RATE)
    add_word_timestamps(spans, alignment, tok.eot, offset, last_speech, o.prepend_punctuations,
                        o.append_punctuations)
    end = last_end(spans)
    if not single_ending and end is not None and end > offset:  # on from the last word, not the last timestamp
        seek = round(end * FRAMES_PER_SECOND)
    if o.hallucination_silence_threshold is not None:
        seek, skip = skip_hallucinations(spans, o.hallucination_silence_threshold, window_seek, size,
                                         2 * tr.model.n_audio_ctx, seek, single_ending, last_speech, content_frames)
        if skip:
            return seek, last_speech, True
    end = last_end(spans)
    return seek, end if end is not None else last_speech, False


def seek_clips(clip_timestamps: Sequence[float], content_frames: int) -> list[tuple[int, int]]:
    """openai's (start, end) Mel frames of the clips to transcribe from `clip_timestamps` (start, end, start, ...
    seconds; the last end defaults to the audio's end, and () is the whole audio). An end past the audio is the
    audio's end (openai would decode windows of no audio there), and a clip starting at or past it is empty
    (openai decodes its padding there, a text the audio does not hold; `clips_past_end` says so)."""
    points = [round(t * FRAMES_PER_SECOND) for t in clip_timestamps] or [0]
    if len(points) % 2:
        points.append(content_frames)
    return [(start, min(end, content_frames)) for start, end in zip(points[::2], points[1::2])]


def clips_past_end(name: str, clip_timestamps: Sequence[float], content_frames: int) -> str | None:
    """The file's error when every clip of `clip_timestamps` starts at or past the audio's end, else None (after
    one warning naming the clips that do, where others hold audio). Those clips are empty (`seek_clips`; openai
    decodes windows of its padding there, segments past the audio's end), so seconds typed wrong (100,120 for a
    60-s file) gave an empty transcript without a word. In Mel frames, as `seek_clips` counts them."""
    if list(clip_timestamps) in ([], [0]):  # the whole audio, whatever its length (none included)
        return None
    starts = clip_timestamps[::2]
    names = [f"{a:g}-{b:g} s" for a, b in zip(starts, clip_timestamps[1::2])]
    if len(clip_timestamps) % 2:  # the last clip runs to the audio's end
        names.append(f"from {starts[-1]:g} s")
    past = [names[i] for i, (start, _) in enumerate(seek_clips(clip_timestamps, content_frames))
            if start >= content_frames]
    if not past:
        return None
    end = f"{content_frames / FRAMES_PER_SECOND:.2f}".rstrip("0").rstrip(".")
    if len(past) == len(starts):
        clips = f"the clip {past[0]}" if len(past) == 1 else f"every clip ({', '.join(past)})"
        return f"clip_timestamps: {clips} starts at or past the audio's end ({end} s): nothing to transcribe"
    log.warning("%s: clip_timestamps: %d of %d clips (%s) %s at or past the audio's end (%s s): nothing is "
                "transcribed there", name, len(past), len(starts), ", ".join(past),
                "starts" if len(past) == 1 else "start", end)
    return None


def skip_hallucinations(spans: list[dict], threshold: float, window_seek: int, size: int, n_frames: int, seek: int,
                        single_ending: bool, last_speech: float, content_frames: int) -> tuple[int, bool]:
    """openai's `hallucination_silence_threshold`: where the window's words suggest a hallucination surrounded
    by more than `threshold` seconds of silence, the next seek is moved past the silence and the spans from the
    hallucination on are dropped (`spans` truncated in place). Returns (the next seek, whether the whole window
    is dropped: its first segment is anomalous and starts after a long silence)."""
    offset = window_seek * HOP_LENGTH / SAMPLE_RATE
    window_end = (window_seek + n_frames) * HOP_LENGTH / SAMPLE_RATE  # 30 s on, whatever audio the window holds
    duration, content_duration = size * HOP_LENGTH / SAMPLE_RATE, content_frames * HOP_LENGTH / SAMPLE_RATE
    if not single_ending:
        end = last_end(spans)
        if end is not None and end > offset:
            seek = round(end * FRAMES_PER_SECOND) if window_end - end > threshold else window_seek + size
    first = next_words_segment(spans)
    if first is not None and is_segment_anomaly(first):
        gap = first["start"] - offset
        if gap > threshold:
            return window_seek + round(gap * FRAMES_PER_SECOND), True
    last = last_speech
    for i, span in enumerate(spans):
        if not span["words"]:
            continue
        if is_segment_anomaly(span):
            following = next_words_segment(spans[i + 1:])
            next_start = following["words"][0]["start"] if following is not None else offset + duration
            silence_before = span["start"] - last > threshold or span["start"] < threshold or span["start"] - offset < 2
            silence_after = (next_start - span["end"] > threshold or is_segment_anomaly(following)
                             or window_end - span["end"] < 2)
            if silence_before and silence_after:
                seek = round(max(offset + 1, span["start"]) * FRAMES_PER_SECOND)
                if content_duration - span["end"] < threshold:
                    seek = content_frames
                del spans[i:]
                break
        last = span["end"]
    return seek, False


def split_window(tokens: list[int], tok, seek: int, size: int, stride: int) -> tuple[list[dict], int, bool]:
    """openai's segments of one window's tokens, the next seek (in Mel frames), and whether the window ends with
    a single timestamp: a window is cut after each pair of consecutive timestamp tokens; unless it ends with a
    single timestamp (nothing spoken after it) or has no pair, the text after the last pair is dropped and the
    next window starts at that pair's time. Segments are {"start", "end", "tokens"}, times in seconds from the
    file's start, unrounded (openai's word timing compares them as they are)."""
    begin = tok.timestamp_begin
    precision = stride * HOP_LENGTH / SAMPLE_RATE  # seconds per timestamp step, 0.02
    offset = float(seek * HOP_LENGTH / SAMPLE_RATE)
    stamp = [t >= begin for t in tokens]
    single_ending = stamp[-2:] == [False, True]
    consecutive = [i + 1 for i in range(len(tokens) - 1) if stamp[i] and stamp[i + 1]]
    spans: list[dict] = []
    if consecutive:
        last = 0
        for cut in consecutive + ([len(tokens)] if single_ending else []):
            piece = tokens[last:cut]
            spans.append(dict(start=offset + (piece[0] - begin) * precision,
                              end=offset + (piece[-1] - begin) * precision, tokens=list(piece)))
            last = cut
        seek += size if single_ending else (tokens[last - 1] - begin) * stride
    else:
        duration = size * HOP_LENGTH / SAMPLE_RATE
        stamps = [t for t in tokens if t >= begin]
        if stamps and stamps[-1] != begin:  # a lone timestamp (not <|0.00|>) ends the text
            duration = (stamps[-1] - begin) * precision
        spans.append(dict(start=offset, end=offset + duration, tokens=list(tokens)))
        seek += size
    return spans, seek, single_ending


def window_segments(spans: list[dict], d: Decoded, no_speech: float, tok) -> list[Segment]:
    """The `Segment`s of a window's spans (`split_window`, with "words" after word timing): times rounded to the
    millisecond; a blank or instantaneous span is kept with no text, tokens or words, as openai keeps it."""
    stats = dict(temperature=d.temperature, avg_logprob=round(d.avg_logprob, 4),
                 compression_ratio=round(d.compression_ratio, 4), no_speech_prob=round(no_speech, 4))
    segments = []
    for span in spans:
        text, tokens, words = tok.decode(span["tokens"]), span["tokens"], span.get("words")
        if span["start"] == span["end"] or not text.strip():
            text, tokens, words = "", [], [] if words is not None else None
        if words is not None:
            words = [Word(w["word"], round(w["start"], 3), round(w["end"], 3), round(w["probability"], 4))
                     for w in words]
        segments.append(Segment(round(span["start"], 3), round(span["end"], 3), text, tokens, **stats, words=words))
    return segments
