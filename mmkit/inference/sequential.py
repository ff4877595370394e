"""Sequential long-form transcription, exactly openai/whisper's `transcribe()` (Radford et al., 2022, §4.5):
one window at a time per file, each starting where the last complete segment of the previous one ended (its
last timestamp), prompted with the text decoded since the last reset (`condition_on_previous_text`), silent
windows skipped whole. The windows are decoded by the transcriber's own window decoding
(`Transcriber.decode_context`); what is here is openai's seek, prompt and segment bookkeeping around it.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np
import torch

from mmkit.audio import HOP_LENGTH, SAMPLE_RATE, AudioLoadError, SpilledAudio, pad_or_trim
from mmkit.core import KVCache
from mmkit.inference.transcript import Decoded, Segment, Transcript, Word, is_silence
from mmkit.inference.window_decoder import Window, previous_text_prompt
from mmkit.inference.word_timing import (
    add_word_timestamps, is_segment_anomaly, last_end, next_words_segment,
)

if TYPE_CHECKING:  # the transcriber imports this module
    from mmkit.inference.transcriber import Transcriber

log = logging.getLogger(__name__)

FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # Mel frames a second (100): openai seeks to a word's end in these


def sequential_transcripts(tr: "Transcriber",
                           items: Iterable[tuple[str, np.ndarray | Iterator[np.ndarray] | Exception]],
                           strict: bool = False) -> Iterator[Transcript]:
    """One `Transcript` per (name, waveform, a stream of blocks or the error that stopped its loading), in order.
    A file is read once into a temporary file on disk (`SpilledAudio`: openai's features are computed over the
    whole file, its "max - 8" floor is the file's, not the window's, and memory stays bounded whatever the
    file's length); a failure fails that file only, or (`strict`: one waveform's call) raises. So does a file
    that no clip of `clip_timestamps` reaches into (`clips_past_end`: a ValueError)."""
    for name, audio in items:
        t = Transcript(name)
        if isinstance(audio, Exception):
            t.error = getattr(audio, "reason", str(audio))
            yield t
            continue
        try:
            spilled = SpilledAudio(audio if isinstance(audio, Iterator) else [audio], tr.model.n_mels,
                                   padding=tr.window_samples, device=tr.device)
        except AudioLoadError as e:  # unreadable, or bad samples found partway: the file fails
            t.error = e.reason
            yield t
            continue
        except OSError as e:  # the temporary file (a full disk): that file fails
            if strict:
                raise
            t.error = f"could not hold the audio in a temporary file ({e.strerror or e})"
            yield t
            continue
        with spilled:  # closed (the file gone) before this generator pauses
            t.duration = round(spilled.num_samples / SAMPLE_RATE, 3)
            t.error = clips_past_end(name, tr.options.clip_timestamps, spilled.content_frames)
            if t.error is not None:
                if strict:  # one waveform's call: nothing to go on to
                    raise ValueError(t.error)
                yield t
                continue
            try:
                t.segments, t.text, t.language = transcribe_sequential(tr, spilled)
            except Exception as e:  # noqa: BLE001 - a failing file fails alone, the run goes on
                if strict:
                    raise
                log.debug("decoding failed", exc_info=True)
                t.error = f"decoding failed ({type(e).__name__}: {e})"
        yield t


def transcribe_sequential(tr: "Transcriber", audio: np.ndarray | SpilledAudio) -> tuple[list[Segment], str, str]:
    """openai/whisper's `transcribe(model, audio, ...)` on one (N,) waveform (or its `SpilledAudio`, whose
    padding is `tr.window_samples`) with `tr`'s model and options:
    (segments, text, language). Segment times are rounded to the millisecond, as the windows' are; segments
    whose text is blank or whose start is their end are kept with no text and no tokens, as openai keeps them.
    With `word_timestamps`, each segment gets its words (`mmkit.inference.word_timing`), which move segment
    boundaries and the next window's start as openai's do."""
    o, tok, model = tr.options, tr.tokenizer, tr.model
    n_frames = 2 * model.n_audio_ctx  # openai's N_FRAMES: 3000 Mel frames, 30 s
    stride = n_frames // model.n_audio_ctx  # Mel frames per timestamp step (2: 0.02 s)
    if isinstance(audio, np.ndarray):
        with SpilledAudio([audio], model.n_mels, padding=tr.window_samples, device=tr.device) as spilled:
            return transcribe_sequential(tr, spilled)
    # the features of the whole file and 30 s of zeros after it, as openai slices its windows from them (its
    # "max - 8" floor is the whole file's), computed window by window
    content_frames = audio.content_frames
    languages: dict[int, str | None] = {0: o.language}
    clips = seek_clips(o.clip_timestamps, content_frames)
    if tok.is_multilingual and o.language is None and (content_frames < n_frames or clips[0][0] != 0):
        # openai detects on the first 3000 frames, trailing zeros' features included; the first window pads
        # its features with 0 instead, so it gives the same language only when it holds 30 s of audio (and
        # starts the file: a clip may start later)
        languages[0] = tr.detect_language(audio.features(0, n_frames))
    # openai prompts with the initial prompt whenever it is not None ("" is the token " ")
    initial = tok.encode(" " + o.initial_prompt.strip()) if o.initial_prompt is not None else []
    all_tokens, segments, reset_since, index = list(initial), [], 0, 0
    condition = o.condition_on_previous_text is not False  # None: openai's default, True
    # openai lets a window's timestamps run to 30.00 whatever audio it holds (the windows' cap is the audio's end)
    no_cap = torch.tensor([tok.timestamp_end - tok.timestamp_begin])
    last_speech = 0.0  # the end of the last word so far (word timestamps: a pause before a window's first word)
    for clip_start, clip_end in clips:
        seek = clip_start  # openai's: a clip starts at its start, wherever the previous one's last window ended
        while seek < clip_end:
            size = min(n_frames, content_frames - seek, clip_end - seek)
            offset = float(seek * HOP_LENGTH / SAMPLE_RATE)
            window = Window(0, index, audio.samples(seek * HOP_LENGTH, (seek + size) * HOP_LENGTH), offset)
            prompt = all_tokens[reset_since:]
            prefix = previous_text_prompt(tok, prompt, model.n_text_ctx) if prompt else []
            features = pad_or_trim(audio.features(seek, size), n_frames)[None]  # (1, n_mels, n_frames), zeros after
            # the encoder output and decoding's cross-attention keys/values: word timing reads them again
            context, cache = tr.encode_mel(features), KVCache()
            ((d, no_speech),) = tr.decode_context(context, [window], languages, prefix, no_cap, cache)
            index += 1
            if is_silence(o, d, no_speech):
                seek += size  # the whole window is skipped
                continue
            previous_seek = seek
            spans, seek, single_ending = split_window(d.tokens, tok, seek, size, stride)
            if o.word_timestamps:
                seek, last_speech, skip = _time_words(tr, spans, (context, cache), window, languages, previous_seek,
                                                      size, (seek, single_ending), last_speech, content_frames)
                if skip:  # silence, then a likely hallucination: decode again from after the silence
                    continue
            current = window_segments(spans, d, no_speech, tok)
            segments.extend(current)
            all_tokens.extend(t for s in current for t in s.tokens)
            if not condition or d.temperature > 0.5:  # text sampled that hot is not worth conditioning on
                reset_since = len(all_tokens)
    language = languages[0] if tok.is_multilingual else "en"
    return segments, tok.decode(all_tokens[len(initial):]).strip(), language


def _time_words(tr: "Transcriber", spans: list[dict], decoded: tuple[torch.Tensor, KVCache], window: Window,
                languages: dict[int, str | None], window_seek: int, size: int, seek_after: tuple[int, bool],
                last_speech: float, content_frames: int) -> tuple[int, float, bool]:
    """Words for a window's spans (in place) and openai's seek after them: to the last word's end unless the
    window ended with a single timestamp, then the hallucination skips if asked. `decoded` is the window's
    encoder output and decoding's cache (`Transcriber.align_words` reads them again); `seek_after` the seek the
    timestamps gave and whether the window ended with a single one. Returns (the next seek, the end of the last
    word so far, whether the window is dropped whole)."""
    o, tok = tr.options, tr.tokenizer
    seek, single_ending = seek_after
    offset = float(window_seek * HOP_LENGTH / SAMPLE_RATE)
    context, cache = decoded
    (alignment,) = tr.align_words(context, cache, [window], [spans], languages)
    add_word_timestamps(spans, alignment, tok.eot, offset, last_speech, o.prepend_punctuations, o.append_punctuations)
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
