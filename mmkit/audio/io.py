"""Audio file loading: any format libsndfile decodes (WAV, FLAC, OGG/Vorbis, MP3 with
libsndfile >= 1.1, ...), any sample rate and channel count, to 16 kHz mono float32, whole
(`load_audio`) or as a stream of blocks (`stream_audio`, memory bounded whatever the length).

openai/whisper shells out to ffmpeg; here decoding stays in-process (soundfile) and resampling
is torchaudio's band-limited sinc interpolation, so results differ from ffmpeg's resampler by
a small filter difference, not by format. For rates with no small ratio to the target (44099 Hz,
primes) the same filter is evaluated sparsely, so memory stays bounded for any rate (`resample`).

Policy for bad input: a file that cannot be decoded, holds no samples, or holds NaN/inf
samples raises `AudioLoadError`. Non-finite samples are refused rather than zeroed because
they mean a corrupted or wrongly-typed float file, and the log-Mel of a silently patched
signal would hide that; clipped audio (|x| >= 1) is valid and loads unchanged.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from mmkit.audio.features import SAMPLE_RATE

log = logging.getLogger(__name__)
# Largest sample magnitude read: full scale is 1.0, and integer-scaled float files (up to 2**31) are still
# heard, but past ~1e16 the log-mel power overflows float32 and a transcript came out of NaN ("!!!",
# avg_logprob NaN). Far above any scaling a file may have, far below that overflow.
MAX_SAMPLE = 1e12


class AudioLoadError(ValueError):
    """An audio file that cannot be used; `path` and `reason` are kept as attributes."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


BLOCK_SECONDS = 30  # seconds of input read, mixed and resampled at a time by `stream_audio`
_LOWPASS_ZEROS, _ROLLOFF = 6, 0.99  # torchaudio resample's defaults (lowpass_filter_width, rolloff)
# torchaudio builds its filter as one dense (new, orig + 2 width) float32 kernel (rates divided by their
# gcd): 160 x 475 for 44.1 kHz -> 16 kHz, 640 x 455 for 11025 Hz (the largest common one), but
# 16000 x 44133 (2.8 GB, ~12 GB with the temporaries that build it) for 44099 Hz, which shares no factor
# with 16 kHz. Above this many entries `resample` evaluates the same filter sparsely instead.
_MAX_DENSE_KERNEL = 1 << 20
_SPARSE_CHUNK = 1 << 18  # output samples per step of `_resample_sparse` (bounds its index arrays)
# Hz; above any recording format (DXD 352.8 kHz, 768 kHz PCM): a corrupt header, e.g. 2**31 - 1 Hz,
# whose filter (12 taps per factor of downsampling) could not be held
MAX_SAMPLE_RATE = 1_000_000


def resample(audio: np.ndarray, orig_sr: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(..., N) float32 at `orig_sr` -> (..., ceil(N * sample_rate / orig_sr)) float32 at `sample_rate`.

    torchaudio's windowed-sinc filter for any pair of rates: torchaudio's own dense kernel where it
    is small (all common rates: bit-identical to `torchaudio.functional.resample`), otherwise the same
    filter evaluated tap by tap (`_resample_sparse`: equal to float rounding, memory bounded).
    """
    if orig_sr == sample_rate:
        return audio
    if not (0 < orig_sr <= MAX_SAMPLE_RATE and 0 < sample_rate <= MAX_SAMPLE_RATE):
        raise ValueError(f"sample rates {orig_sr} -> {sample_rate} Hz: each must be in 1..{MAX_SAMPLE_RATE} Hz")
    orig, new, width = _ratio(orig_sr, sample_rate)
    if new * (orig + 2 * width) > _MAX_DENSE_KERNEL:
        return _resample_sparse(audio, orig, new, width)
    out = AF.resample(torch.from_numpy(np.ascontiguousarray(audio)), orig_freq=orig_sr, new_freq=sample_rate)
    return out.numpy()


def _ratio(orig_sr: int, sample_rate: int) -> tuple[int, int, int]:
    """(orig, new, width): the rates divided by their gcd (the filter's period is `orig` input samples,
    giving `new` output samples, each with its own weights) and the filter's reach on each side in
    input samples (torchaudio's `width`)."""
    g = math.gcd(orig_sr, sample_rate)
    orig, new = orig_sr // g, sample_rate // g
    return orig, new, math.ceil(_LOWPASS_ZEROS * orig / (min(orig, new) * _ROLLOFF))


def _resample_sparse(audio: np.ndarray, orig: int, new: int, width: int) -> np.ndarray:
    """`AF.resample` without its dense kernel: output j sits at input position j * orig / new and is the
    sum of the 2 width + 1 inputs around it times torchaudio's weights (`_sparse_taps`); the same output
    grid and length, zeros beyond both ends as torchaudio pads. Memory: the weights, `_SPARSE_CHUNK`-long
    index arrays and the output, whatever the rates."""
    n = audio.shape[-1]
    rows = np.ascontiguousarray(audio, dtype=np.float32).reshape(-1, n)
    x = np.pad(rows, ((0, 0), (width, width)))
    taps = _sparse_taps(orig, new, width)  # (2 width + 1, new)
    out = np.empty((rows.shape[0], -(-new * n // orig)), np.float32)
    for lo in range(0, out.shape[1], _SPARSE_CHUNK):
        j = np.arange(lo, min(lo + _SPARSE_CHUNK, out.shape[1]), dtype=np.int64)
        phase, first = j % new, j * orig // new  # first: x index of input floor(j * orig / new) - width
        acc = np.zeros((rows.shape[0], j.size), np.float32)
        for k, w in enumerate(taps):
            acc += w[phase] * x[:, first + k]
        out[:, lo:lo + j.size] = acc
    return out.reshape(*audio.shape[:-1], out.shape[1])


@functools.lru_cache(maxsize=4)  # one table (and one log line) per rate pair, shared by a stream's blocks
def _sparse_taps(orig: int, new: int, width: int) -> np.ndarray:
    """(2 width + 1, new) float32: [k, p] weighs input floor(j * orig / new) + k - width in output j,
    for j % new == p; torchaudio's formula (`_get_sinc_resample_kernel`) at those offsets only."""
    log.info("resampling at ratio %d:%d (no small ratio): torchaudio's filter evaluated sparsely", orig, new)
    # output j sits frac_p input samples past input floor(j * orig / new), for j % new == p (exact in integers)
    frac = (np.arange(new, dtype=np.int64) * orig % new) / new
    base = min(orig, new) * _ROLLOFF
    taps = np.empty((2 * width + 1, new), np.float32)
    for row, k in enumerate(range(-width, width + 1)):  # row by row: no (2 width + 1, new) float64 temporaries
        t = np.clip((k - frac) * (base / orig), -_LOWPASS_ZEROS, _LOWPASS_ZEROS)  # (i / orig - j / new) * base
        taps[row] = np.sinc(t) * np.cos(t * (math.pi / (2 * _LOWPASS_ZEROS))) ** 2 * (base / orig)  # Hann window
    taps.flags.writeable = False  # cached: shared by every caller
    return taps


def _resample_margin(orig_sr: int, sample_rate: int) -> tuple[int, int]:
    """(step, margin) in input samples for blockwise resampling equal to whole-signal resampling:
    blocks start at multiples of `step` (the input period of torchaudio's polyphase filter, so
    each block's output grid is the whole signal's), and `margin` samples on each side cover the
    sinc filter's reach (torchaudio's `width` + one period)."""
    step, _, width = _ratio(orig_sr, sample_rate)
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
        raise AudioLoadError(path, "not a regular file (a FIFO, socket or device)" if path.exists() else
                             "file not found")
    try:
        # the name's bytes: soundfile encodes a str name as strict UTF-8, which a Linux name that is not
        # UTF-8 (held as surrogate escapes) fails with a UnicodeEncodeError; the bytes open any file
        f = sf.SoundFile(os.fsencode(path))
    except (sf.SoundFileError, RuntimeError, TypeError) as e:
        raise _unreadable(path, e) from None
    with f:
        orig_sr = int(f.samplerate)
        if orig_sr > MAX_SAMPLE_RATE:  # libsndfile refuses 0 Hz itself
            raise AudioLoadError(path, f"sample rate {orig_sr} Hz: above {MAX_SAMPLE_RATE} Hz (a corrupt header?)")
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


def _unreadable(path: Path, e: Exception) -> AudioLoadError:
    """soundfile's message names the file, by the bytes it was opened with ("Error opening b'/tmp/x.wav':
    Format not recognised."); the
    reason keeps libsndfile's words only, as callers show `path: reason` (or just the reason, to a
    demo user, who should not see the server's temporary path)."""
    detail = getattr(e, "error_string", None) or str(e).replace(repr(os.fsencode(path)), "the file")
    return AudioLoadError(path, f"not a readable audio file ({detail.rstrip('.')})")


def _read_block(f: sf.SoundFile, path: Path, frames: int) -> np.ndarray | None:
    """The next (<= frames,) mono float32 samples, None at the end; bad samples raise."""
    try:
        data = f.read(frames, dtype="float32", always_2d=True)  # (n, channels)
    except (sf.SoundFileError, RuntimeError, TypeError) as e:
        raise _unreadable(path, e) from None
    if data.shape[0] == 0:
        return None
    check_samples(data, path)
    return data.mean(axis=1, dtype=np.float32)


def check_samples(data: np.ndarray, source: str | Path) -> None:
    """Refuse float samples no model can hear, in one line naming `source` (a file, or a waveform given in
    memory): NaN/inf samples, or ones beyond `MAX_SAMPLE` (a float file written unscaled)."""
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise AudioLoadError(source, f"{bad} non-finite (NaN/inf) samples")
    peak = float(np.abs(data).max(initial=0.0))
    if peak > MAX_SAMPLE:
        raise AudioLoadError(source, f"samples reach {peak:.3g}, far beyond full scale (+-1; a float file written "
                             "unscaled?): not audio a model can hear")


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
