"""Audio file loading: any format libsndfile decodes (WAV, FLAC, OGG/Vorbis, MP3 with
libsndfile >= 1.1, ...), any sample rate and channel count, to 16 kHz mono float32, whole
(`load_audio`) or as a stream of blocks (`stream_audio`, memory bounded whatever the length).

openai/whisper shells out to ffmpeg; here decoding stays in-process (soundfile) and resampling
is torchaudio's band-limited sinc interpolation, so results differ from ffmpeg's resampler by
a small filter difference, not by format.

Policy for bad input: a file that cannot be decoded, holds no samples, or holds NaN/inf
samples raises `AudioLoadError`. Non-finite samples are refused rather than zeroed because
they mean a corrupted or wrongly-typed float file, and the log-Mel of a silently patched
signal would hide that; clipped audio (|x| >= 1) is valid and loads unchanged.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from mmkit.audio.features import SAMPLE_RATE


class AudioLoadError(ValueError):
    """An audio file that cannot be used; `path` and `reason` are kept as attributes."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def resample(audio: np.ndarray, orig_sr: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(..., N) float32 at `orig_sr` -> (..., ~N * sample_rate / orig_sr) float32 at `sample_rate`."""
    if orig_sr == sample_rate:
        return audio
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(audio)), orig_freq=orig_sr, new_freq=sample_rate)
    return out.numpy()


BLOCK_SECONDS = 30  # seconds of input read, mixed and resampled at a time by `stream_audio`
_LOWPASS_ZEROS, _ROLLOFF = 6, 0.99  # torchaudio resample's defaults (lowpass_filter_width, rolloff)


def _resample_margin(orig_sr: int, sample_rate: int) -> tuple[int, int]:
    """(step, margin) in input samples for blockwise resampling equal to whole-signal resampling:
    blocks start at multiples of `step` (the input period of torchaudio's polyphase filter, so
    each block's output grid is the whole signal's), and `margin` samples on each side cover the
    sinc filter's reach (torchaudio's `width` + one period)."""
    g = math.gcd(orig_sr, sample_rate)
    step, new = orig_sr // g, sample_rate // g
    width = math.ceil(_LOWPASS_ZEROS * step / (min(step, new) * _ROLLOFF))
    return step, step * (math.ceil(width / step) + 1)


def stream_audio(path: str | Path, sample_rate: int = SAMPLE_RATE,
                 block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """`load_audio(path)` as consecutive (n,) float32 blocks: the file is read `block_seconds` at
    a time (soundfile's blockwise reading), mixed and resampled block by block, so memory is a
    few blocks whatever the file's length. The blocks concatenated equal `load_audio`'s waveform
    (to float rounding: the resampling filter sees the same samples, `_resample_margin`).

    Raises (from the iterator, possibly after some blocks): `AudioLoadError` as `load_audio`.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise AudioLoadError(path, "a folder, not an audio file (name its files, e.g. DIR/*.wav)")
    if not path.is_file():
        raise AudioLoadError(path, "file not found")
    try:
        f = sf.SoundFile(str(path))
    except (sf.SoundFileError, RuntimeError, TypeError) as e:
        raise AudioLoadError(path, f"not a readable audio file ({e})") from None
    with f:
        orig_sr = int(f.samplerate)
        step, margin = _resample_margin(orig_sr, sample_rate) if orig_sr != sample_rate else (1, 0)
        block = max(step, int(block_seconds * orig_sr) // step * step)
        pending = np.zeros(0, np.float32)  # mono input not yet resampled: margin of history + new samples
        done = 0  # input samples whose output has been yielded
        total = 0  # input samples read so far
        while True:
            data = _read_block(f, path, block)
            if data is None:
                break
            total += len(data)
            pending = np.concatenate([pending, data])
            # output for input [done, total - margin) is final: its filter reach is all read
            end = (total - margin) // step * step
            if end > done:
                first = total - len(pending)  # absolute index of pending[0]
                yield _resample_span(pending, first, done, end, orig_sr, sample_rate)
                keep = max(first, end - margin)  # the next span's left margin
                pending, done = pending[keep - first:], end
        if total == 0:
            raise AudioLoadError(path, "empty audio (0 samples)")
        if total > done:
            yield _resample_span(pending, total - len(pending), done, total, orig_sr, sample_rate)


def _read_block(f: sf.SoundFile, path: Path, frames: int) -> np.ndarray | None:
    """The next (<= frames,) mono float32 samples, None at the end; bad samples raise."""
    try:
        data = f.read(frames, dtype="float32", always_2d=True)  # (n, channels)
    except (sf.SoundFileError, RuntimeError, TypeError) as e:
        raise AudioLoadError(path, f"not a readable audio file ({e})") from None
    if data.shape[0] == 0:
        return None
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise AudioLoadError(path, f"{bad} non-finite (NaN/inf) samples")
    return data.mean(axis=1, dtype=np.float32)


def _resample_span(pending: np.ndarray, first: int, start: int, end: int, orig_sr: int, sample_rate: int) -> np.ndarray:
    """The output samples of input span [start, end) (absolute input indices; `pending` holds the
    input from absolute index `first`, with the filter's margin around the span where it exists)."""
    if orig_sr == sample_rate:
        return pending[start - first:end - first].copy()
    _, margin = _resample_margin(orig_sr, sample_rate)
    lo = max(first, start - margin)  # a multiple of the period (or 0: the signal's own start)
    out = resample(pending[lo - first:end + margin - first], orig_sr, sample_rate)
    # output index of input index i is i * sample_rate / orig_sr (exact at multiples of the period)
    a = (start - lo) * sample_rate // orig_sr
    b = a + math.ceil(end * sample_rate / orig_sr) - math.ceil(start * sample_rate / orig_sr)
    return out[a:b].astype(np.float32, copy=False)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode `path` to a mono float32 waveform in [-1, 1] at `sample_rate` Hz.

    Channels are averaged (as ffmpeg's `-ac 1` does); integer PCM is scaled by its full range.

    Returns:
        (N,) float32.

    Raises:
        AudioLoadError: missing or undecodable file, no samples ("empty audio"), NaN/inf samples.
    """
    return np.concatenate(list(stream_audio(path, sample_rate)))
