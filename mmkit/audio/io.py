"""Audio file loading: any format libsndfile decodes (WAV, FLAC, OGG/Vorbis, MP3 with
libsndfile >= 1.1, ...), any sample rate and channel count, to 16 kHz mono float32.

openai/whisper shells out to ffmpeg; here decoding stays in-process (soundfile) and resampling
is torchaudio's band-limited sinc interpolation, so results differ from ffmpeg's resampler by
a small filter difference, not by format.

Policy for bad input: a file that cannot be decoded, holds no samples, or holds NaN/inf
samples raises `AudioLoadError`. Non-finite samples are refused rather than zeroed because
they mean a corrupted or wrongly-typed float file, and the log-Mel of a silently patched
signal would hide that; clipped audio (|x| >= 1) is valid and loads unchanged.
"""
from __future__ import annotations

from pathlib import Path

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


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode `path` to a mono float32 waveform in [-1, 1] at `sample_rate` Hz.

    Channels are averaged (as ffmpeg's `-ac 1` does); integer PCM is scaled by its full range.

    Returns:
        (N,) float32.

    Raises:
        AudioLoadError: missing or undecodable file, no samples ("empty audio"), NaN/inf samples.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise AudioLoadError(path, "file not found")
    try:
        data, orig_sr = sf.read(str(path), dtype="float32", always_2d=True)  # (N, channels)
    except (sf.SoundFileError, RuntimeError, TypeError) as e:
        raise AudioLoadError(path, f"not a readable audio file ({e})") from None
    if data.shape[0] == 0:
        raise AudioLoadError(path, "empty audio (0 samples)")
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise AudioLoadError(path, f"{bad} non-finite (NaN/inf) samples")
    mono = data.mean(axis=1, dtype=np.float32)  # (N,)
    return resample(mono, int(orig_sr), sample_rate).astype(np.float32, copy=False)
