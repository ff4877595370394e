"""Sequential long-form transcription, exactly openai/whisper's `transcribe()` (Radford et al., 2022, §4.5):
one window at a time per file, each starting where the last complete segment of the previous one ended (its
last timestamp), prompted with the text decoded since the last reset (`condition_on_previous_text`), silent
windows skipped whole. The windows are decoded by the transcriber's own window decoding
(`Transcriber.decode_mel`); what is here is openai's seek, prompt and segment bookkeeping around it.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import torch

from mmkit.audio import HOP_LENGTH, SAMPLE_RATE, AudioLoadError, log_mel_spectrogram, pad_or_trim
from mmkit.inference.transcript import Decoded, Segment, Transcript, is_silence
from mmkit.inference.window_decoder import Window, previous_text_prompt

if TYPE_CHECKING:  # the transcriber imports this module
    from mmkit.inference.transcriber import Transcriber

log = logging.getLogger(__name__)


def sequential_transcripts(tr: "Transcriber",
                           items: Iterable[tuple[str, np.ndarray | Iterator[np.ndarray] | Exception]],
                           strict: bool = False) -> Iterator[Transcript]:
    """One `Transcript` per (name, waveform, a stream of blocks or the error that stopped its loading), in order.
    A file is read whole first (openai's features are computed over the whole file: its "max - 8" floor is the
    file's, not the window's); a failure fails that file only, or (`strict`: one waveform's call) raises."""
    for name, audio in items:
        t = Transcript(name)
        if isinstance(audio, Exception):
            t.error = getattr(audio, "reason", str(audio))
            yield t
            continue
        try:
            blocks = list(audio) if isinstance(audio, Iterator) else [audio]
        except AudioLoadError as e:  # unreadable, or bad samples found partway: the file fails
            t.error = e.reason
            yield t
            continue
        samples = np.concatenate([np.zeros(0, np.float32), *blocks])
        t.duration = round(len(samples) / SAMPLE_RATE, 3)
        try:
            t.segments, t.text, t.language = transcribe_sequential(tr, samples)
        except Exception as e:  # noqa: BLE001 - a failing file fails alone, the run goes on
            if strict:
                raise
            log.debug("decoding failed", exc_info=True)
            t.error = f"decoding failed ({type(e).__name__}: {e})"
        yield t


def transcribe_sequential(tr: "Transcriber", audio: np.ndarray) -> tuple[list[Segment], str, str]:
    """openai/whisper's `transcribe(model, audio, ...)` on one (N,) waveform with `tr`'s model and options:
    (segments, text, language). Segment times are rounded to the millisecond, as the windows' are; segments
    whose text is blank or whose start is their end are kept with no text and no tokens, as openai keeps them."""
    o, tok, model = tr.options, tr.tokenizer, tr.model
    n_frames = 2 * model.n_audio_ctx  # openai's N_FRAMES: 3000 Mel frames, 30 s
    stride = n_frames // model.n_audio_ctx  # Mel frames per timestamp step (2: 0.02 s)
    # the whole file and 30 s of zeros after it, as openai slices its windows from (its "max - 8" floor too)
    mel = log_mel_spectrogram(torch.from_numpy(audio).to(tr.device), model.n_mels, padding=tr.window_samples)
    content_frames = mel.shape[-1] - n_frames
    languages: dict[int, str | None] = {0: o.language}
    if tok.is_multilingual and o.language is None and content_frames < n_frames:
        # openai detects on the first 3000 frames, trailing zeros' features included; the first window pads
        # its features with 0 instead, so it gives the same language only when it holds 30 s of audio
        languages[0] = tr.detect_language(mel[:, :n_frames])
    # openai prompts with the initial prompt whenever it is not None ("" is the token " ")
    initial = tok.encode(" " + o.initial_prompt.strip()) if o.initial_prompt is not None else []
    all_tokens, segments, reset_since, seek, index = list(initial), [], 0, 0, 0
    condition = o.condition_on_previous_text is not False  # None: openai's default, True
    # openai lets a window's timestamps run to 30.00 whatever audio it holds (the windows' cap is the audio's end)
    no_cap = torch.tensor([tok.timestamp_end - tok.timestamp_begin])
    while seek < content_frames:
        size = min(n_frames, content_frames - seek)
        window = Window(0, index, audio[seek * HOP_LENGTH:(seek + size) * HOP_LENGTH], seek * HOP_LENGTH / SAMPLE_RATE)
        prompt = all_tokens[reset_since:]
        prefix = previous_text_prompt(tok, prompt, model.n_text_ctx) if prompt else []
        features = pad_or_trim(mel[:, seek:seek + size], n_frames)[None]  # (1, n_mels, n_frames), zeros after
        ((d, no_speech),) = tr.decode_mel(features, [window], languages, prefix, no_cap)
        index += 1
        if is_silence(o, d, no_speech):
            seek += size  # the whole window is skipped
            continue
        current, seek = split_window(d, no_speech, tok, seek, size, stride)
        segments.extend(current)
        all_tokens.extend(t for s in current for t in s.tokens)
        if not condition or d.temperature > 0.5:  # text sampled that hot is not worth conditioning on
            reset_since = len(all_tokens)
    language = languages[0] if tok.is_multilingual else "en"
    return segments, tok.decode(all_tokens[len(initial):]).strip(), language


def split_window(d: Decoded, no_speech: float, tok, seek: int, size: int, stride: int) -> tuple[list[Segment], int]:
    """openai's segments of one window's tokens and the next seek (in Mel frames): a window is cut after each
    pair of consecutive timestamp tokens; unless it ends with a single timestamp (nothing spoken after it) or
    has no pair, the text after the last pair is dropped and the next window starts at that pair's time."""
    tokens, begin = d.tokens, tok.timestamp_begin
    precision = stride * HOP_LENGTH / SAMPLE_RATE  # seconds per timestamp step, 0.02
    offset = float(seek * HOP_LENGTH / SAMPLE_RATE)
    stamp = [t >= begin for t in tokens]
    single_ending = stamp[-2:] == [False, True]
    consecutive = [i + 1 for i in range(len(tokens) - 1) if stamp[i] and stamp[i + 1]]
    spans: list[tuple[float, float, list[int]]] = []
    if consecutive:
        last = 0
        for cut in consecutive + ([len(tokens)] if single_ending else []):
            piece = tokens[last:cut]
            spans.append((offset + (piece[0] - begin) * precision, offset + (piece[-1] - begin) * precision, piece))
            last = cut
        seek += size if single_ending else (tokens[last - 1] - begin) * stride
    else:
        duration = size * HOP_LENGTH / SAMPLE_RATE
        stamps = [t for t in tokens if t >= begin]
        if stamps and stamps[-1] != begin:  # a lone timestamp (not <|0.00|>) ends the text
            duration = (stamps[-1] - begin) * precision
        spans.append((offset, offset + duration, tokens))
        seek += size
    stats = dict(temperature=d.temperature, avg_logprob=round(d.avg_logprob, 4),
                 compression_ratio=round(d.compression_ratio, 4), no_speech_prob=round(no_speech, 4))
    segments = []
    for start, end, piece in spans:
        text = tok.decode(piece)  # text tokens only
        if start == end or not text.strip():
            text, piece = "", []
        segments.append(Segment(round(start, 3), round(end, 3), text, list(piece), **stats))
    return segments, seek
