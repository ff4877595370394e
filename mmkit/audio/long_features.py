"""Whisper's log-Mel features of a file of any length in bounded memory, for openai/whisper's sequential
`transcribe()`: the samples are spilled to an anonymous temporary file as they stream in, and the features
are computed a chunk of frames at a time, equal to `log_mel_spectrogram(whole, n_mels, padding)` sliced
(its "max - 8" floor is the whole file's: the first pass keeps the global maximum, nothing else).
"""
from __future__ import annotations

import math
import tempfile
import weakref
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from mmkit.audio.features import HOP_LENGTH, N_FFT, N_FRAMES, log_mel_spectrogram, mel_filters

_HALF = N_FFT // 2  # torch.stft(center=True) pads each side by this, reflecting the signal
_ITEM = np.dtype(np.float32).itemsize


class SpilledAudio:
    """A waveform read once from a stream of blocks and kept on disk, with its Whisper log-Mel features.

    The features are those of the waveform followed by `padding` zero samples, as
    `log_mel_spectrogram(whole, n_mels, padding=padding, device=device)` computes them over the whole file
    (centred STFT reflecting the signal at both ends, last frame dropped, floor at the whole file's
    maximum - 8); each call recomputes its frames from the spilled samples with the STFT's 200 samples of
    context on each side. Memory: about `chunk_frames` frames' STFT and samples at a time, whatever the
    length. The samples live in an unnamed temporary file (unlinked on creation where the OS allows, so
    even a killed process leaves nothing), closed by `close()`, `with`, or garbage collection. One reader
    at a time: the calls share the file's position.

    Args:
        blocks: consecutive (n,) sample blocks (`mmkit.audio.stream_audio`, or `[waveform]`), read once;
            an error they raise (`AudioLoadError`) propagates, the temporary file closed.
        n_mels: 80, or 128 for large-v3.
        padding: zero samples after the audio (`Transcriber.window_samples`: 30 s, as openai pads).
        device: where the features are computed and returned (default CPU).
        chunk_frames: frames computed per STFT (memory bound; the results do not depend on it).
        temp_dir: folder of the temporary file (default: `tempfile`'s).

    Raises:
        ValueError: `n_mels` not 80 or 128, a block not 1-D.
        RuntimeError: audio plus padding under 201 samples, which `torch.stft`'s reflection refuses
            (the same error `log_mel_spectrogram` raises).
    """

    def __init__(self, blocks: Iterable[np.ndarray], n_mels: int = 80, padding: int = 0,
                 device: torch.device | str | None = None, chunk_frames: int = N_FRAMES,
                 temp_dir: str | Path | None = None) -> None:
        if chunk_frames < 1 or padding < 0:
            raise ValueError(f"chunk_frames must be >= 1 and padding >= 0, got {chunk_frames} and {padding}")
        self.device = torch.device(device if device is not None else "cpu")
        self.padding, self.chunk_frames = padding, chunk_frames
        wide = torch.float32 if self.device.type == "mps" else torch.float64  # as log_mel_spectrogram (no MPS f64)
        self._filters = mel_filters(n_mels, self.device).to(wide)  # (n_mels, 201); refuses other n_mels
        self._window = torch.hann_window(N_FFT, device=self.device)
        self._file = tempfile.TemporaryFile(dir=temp_dir)
        self._finalizer = weakref.finalize(self, self._file.close)
        self.num_samples = 0
        try:
            self._max = self._consume(blocks)
        except BaseException:
            self.close()
            raise

    @property
    def num_frames(self) -> int:
        """Frames of audio plus padding: `log_mel_spectrogram(whole, padding=...).shape[-1]`."""
        return self._length // HOP_LENGTH

    @property
    def content_frames(self) -> int:
        """Frames before the padding's own (`num_frames - padding // 160`): the sequential loop's extent."""
        return self.num_frames - self.padding // HOP_LENGTH

    @property
    def _length(self) -> int:  # samples of audio plus padding (so far, while consuming)
        return self.num_samples + self.padding

    def features(self, seek: int, size: int) -> Tensor:
        """(n_mels, k) float32 on `device`: `log_mel_spectrogram(whole, ...)[:, seek:seek + size]` (k < size
        past the last frame)."""
        if seek < 0 or size < 0:
            raise ValueError(f"seek and size must be >= 0, got {seek} and {size}")
        end = min(seek + size, self.num_frames)
        parts = [self._log_spec(f, min(f + self.chunk_frames, end)) for f in range(seek, end, self.chunk_frames)]
        if not parts:
            return torch.empty(self._filters.shape[0], 0, device=self.device)
        floor = self._max - 8.0  # float32, as the whole-file amax - 8
        return (torch.maximum(torch.cat(parts, dim=-1), floor) + 4.0) / 4.0

    def samples(self, start: int, end: int) -> np.ndarray:
        """(k,) float32 copy of the raw samples [start, end), clipped to the audio as a slice would be."""
        start, end = max(0, min(start, self.num_samples)), max(0, min(end, self.num_samples))
        return self._read(start, max(start, end))

    def close(self) -> None:
        """Close (and so delete) the temporary file; idempotent."""
        self._finalizer()

    def __enter__(self) -> SpilledAudio:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _consume(self, blocks: Iterable[np.ndarray]) -> Tensor:
        """Spill every block and take the maximum of the log10 Mel spectrogram, chunk by chunk: a chunk is
        computed as soon as its frames' samples (reflected start included) are all on disk, the rest once
        the length is known."""
        peak = torch.tensor(-math.inf, dtype=torch.float32, device=self.device)
        done = 0  # frames whose maximum is taken
        for block in blocks:
            block = np.ascontiguousarray(block, dtype=np.float32)
            if block.ndim != 1:
                raise ValueError(f"expected (n,) sample blocks, got shape {block.shape}")
            self._file.seek(self.num_samples * _ITEM)
            self._file.write(memoryview(block).cast("B"))
            self.num_samples += block.size
            # frame f reads samples up to f * 160 + 200 (and 200 itself, reflected at the start)
            while (done + self.chunk_frames - 1) * HOP_LENGTH + _HALF + 1 <= self.num_samples:
                peak = torch.maximum(peak, self._log_spec(done, done + self.chunk_frames).amax())
                done += self.chunk_frames
        self._file.flush()
        if self._length <= _HALF:  # too short for torch.stft to reflect: log_mel_spectrogram's own error
            log_mel_spectrogram(self._padded(0, self._length), self._filters.shape[0])
            raise RuntimeError(f"{self._length} samples: too short for a centred {N_FFT}-sample STFT")
        for f in range(done, self.num_frames, self.chunk_frames):
            peak = torch.maximum(peak, self._log_spec(f, min(f + self.chunk_frames, self.num_frames)).amax())
        return peak

    def _log_spec(self, first: int, last: int) -> Tensor:
        """(n_mels, last - first) log10 Mel power of frames [first, last), before the floor: the samples
        [first * 160 - 200, (last - 1) * 160 + 200) of the padded signal, reflected at both of its ends as
        torch.stft(center=True) pads, framed without centring."""
        idx = np.arange(first * HOP_LENGTH - _HALF, (last - 1) * HOP_LENGTH + _HALF, dtype=np.int64)
        idx = np.abs(idx)  # reflection at the start: -i -> i
        idx = np.where(idx >= self._length, 2 * (self._length - 1) - idx, idx)  # and at the end
        lo = int(idx.min())
        x = torch.from_numpy(self._padded(lo, int(idx.max()) + 1)[idx - lo]).to(self.device)
        stft = torch.stft(x, N_FFT, HOP_LENGTH, window=self._window, center=False, return_complex=True)  # (201, k)
        power = (stft.abs() ** 2).contiguous()
        # float64, then rounded, as log_mel_spectrogram: frames equal whatever chunk holds them
        mel = (self._filters @ power.to(self._filters.dtype)).float()  # (n_mels, k)
        return mel.clamp(min=1e-10).log10()

    def _padded(self, start: int, end: int) -> np.ndarray:
        """Samples [start, end) of the audio followed by its zero padding."""
        out = np.zeros(end - start, np.float32)
        stop = min(end, self.num_samples)
        if stop > start:
            out[:stop - start] = self._read(start, stop)
        return out

    def _read(self, start: int, end: int) -> np.ndarray:
        out = np.empty(end - start, np.float32)
        self._file.seek(start * _ITEM)
        if self._file.readinto(out) != out.nbytes:
            raise OSError(f"temporary audio file truncated: samples {start}..{end} of {self.num_samples}")
        return out
