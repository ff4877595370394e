"""Whisper's log-Mel front end (Radford et al., "Robust Speech Recognition via Large-Scale Weak
Supervision", 2022, §2.2), numerically equal to openai/whisper `audio.py` and transformers'
`WhisperFeatureExtractor`: 25 ms periodic-Hann STFT every 10 ms, power spectrum without the
last frame, Slaney-style Mel filterbank, log10 floored at (max - 8) (an 80 dB range), then
(x + 4) / 4.

The audio constants live here, once, with their units; `mmkit.audio` re-exports them.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SAMPLE_RATE = 16_000  # Hz; every Whisper checkpoint was trained at this rate
N_FFT = 400  # samples per STFT window (25 ms)
HOP_LENGTH = 160  # samples between STFT frames (10 ms)
CHUNK_LENGTH = 30  # seconds of audio per encoder input
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480_000 samples per chunk
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3_000 Mel frames per chunk (1_500 encoder positions)
MEL_F_MAX = SAMPLE_RATE / 2  # Hz; the filterbank spans 0 .. Nyquist
N_MELS = (80, 128)  # large-v3 uses 128 bins, every other Whisper checkpoint 80


def pad_or_trim(array: np.ndarray | Tensor, length: int = N_SAMPLES, axis: int = -1) -> np.ndarray | Tensor:
    """Zero-pad (at the end) or trim `array` along `axis` to exactly `length` samples,
    as the encoder expects (openai/whisper's `pad_or_trim`). NumPy in, NumPy out; torch likewise."""
    n = array.shape[axis]
    if isinstance(array, Tensor):
        if n > length:
            return array.narrow(axis, 0, length)
        if n < length:
            pad = [0, 0] * array.ndim
            pad[2 * (array.ndim - 1 - (axis % array.ndim)) + 1] = length - n  # F.pad lists the last dim first
            return F.pad(array, pad)
        return array
    if n > length:
        return np.take(array, np.arange(length), axis=axis)
    if n < length:
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, length - n)
        return np.pad(array, widths)
    return array


_F_SP = 200.0 / 3  # Hz per mel below 1 kHz
_LOGSTEP = math.log(6.4) / 27.0  # log-Hz per mel above 1 kHz


def _hz_to_mel(f: Tensor) -> Tensor:
    # Slaney's Auditory Toolbox scale (librosa's default, htk=False): linear below 1 kHz, log above.
    min_log_mel = 1000.0 / _F_SP
    return torch.where(f < 1000.0, f / _F_SP, min_log_mel + torch.log(f.clamp(min=1e-10) / 1000.0) / _LOGSTEP)


def _mel_to_hz(m: Tensor) -> Tensor:
    min_log_mel = 1000.0 / _F_SP
    return torch.where(m < min_log_mel, m * _F_SP, 1000.0 * torch.exp(_LOGSTEP * (m - min_log_mel)))


@lru_cache(maxsize=4)
def _mel_filters_cpu(n_mels: int) -> Tensor:
    # librosa.filters.mel(sr=16000, n_fft=400, n_mels, norm="slaney"), the filters openai/whisper
    # ships, computed in float64 and rounded once: float32 arithmetic (torchaudio's
    # melscale_fbanks) is off by up to 3e-3 relative on the narrow low bands of 128-bin banks.
    freqs = torch.linspace(0.0, MEL_F_MAX, N_FFT // 2 + 1, dtype=torch.float64)  # (201,)
    lo, hi = _hz_to_mel(torch.tensor([0.0, MEL_F_MAX], dtype=torch.float64))
    edges = _mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64))  # (n_mels + 2,)
    width = edges.diff()  # (n_mels + 1,)
    ramps = edges[:, None] - freqs[None, :]  # (n_mels + 2, 201)
    rising = -ramps[:-2] / width[:-1, None]
    falling = ramps[2:] / width[1:, None]
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)  # (n_mels, 201) triangles
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # Slaney norm: constant energy per band
    return weights.float()


def mel_filters(n_mels: int = 80, device: torch.device | str | None = None) -> Tensor:
    """(n_mels, 201) float32 Slaney Mel filterbank for 16 kHz audio and a 400-point FFT."""
    if n_mels not in N_MELS:
        raise ValueError(f"Whisper uses {' or '.join(map(str, N_MELS))} Mel bins, got {n_mels}")
    return _mel_filters_cpu(n_mels).to(device, copy=True)  # a copy: callers may modify it


def log_mel_spectrogram(
    audio: np.ndarray | Tensor,
    n_mels: int = 80,
    padding: int = 0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Whisper's normalised log-Mel spectrogram.

    Args:
        audio: (N,) or (B, N) 16 kHz mono waveform in [-1, 1] (see `mmkit.audio.load_audio`).
            For the encoder, `pad_or_trim` it to 30 s first (N = 480_000 -> 3_000 frames).
        n_mels: 80, or 128 for large-v3.
        padding: zero samples appended to the right before the STFT.
        device: where to compute (default: the tensor's device, CPU for NumPy input).

    Returns:
        (n_mels, (N + padding) // 160) or (B, n_mels, (N + padding) // 160) float32. The
        "max - 8" floor is taken per example (transformers does the same; openai/whisper
        takes it over the whole batch).
    """
    x = torch.from_numpy(np.asarray(audio)) if not isinstance(audio, Tensor) else audio
    x = x.to(device=device if device is not None else x.device, dtype=torch.float32)
    if x.ndim not in (1, 2):
        raise ValueError(f"expected audio of shape (N,) or (B, N), got {tuple(x.shape)}")
    if padding > 0:
        x = F.pad(x, (0, padding))
    window = torch.hann_window(N_FFT, device=x.device)  # periodic, as torch.stft and Whisper use
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=window, return_complex=True)  # (..., 201, frames + 1)
    # Whisper drops the last frame so that 480_000 samples give exactly 3_000 frames.
    power = (stft[..., :-1].abs() ** 2).contiguous()  # (..., 201, frames)
    # In float64, then rounded: a float32 GEMM's sums may depend on how many frames the call holds (MKL's AVX2
    # kernels do), and --audio-context's features must be the full window's frames bit for bit. ~5 ms a window.
    wide = torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64
    mel = (mel_filters(n_mels, x.device).to(wide) @ power.to(wide)).float()  # (..., n_mels, frames)
    log_spec = mel.clamp(min=1e-10).log10()
    floor = log_spec.amax(dim=(-2, -1), keepdim=True) - 8.0  # 80 dB dynamic range per example
    return (torch.maximum(log_spec, floor) + 4.0) / 4.0
