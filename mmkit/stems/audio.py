"""Whisper's audio stem (Radford et al., 2022; openai/whisper `AudioEncoder`): two 1-D
convolutions over log-Mel frames, the second halving the frame rate, and fixed sinusoidal
positions. The front end that makes its input is `mmkit.audio.log_mel_spectrogram`.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mmkit.core import sinusoidal_positions_concat


class AudioConvStem(nn.Module):
    """log-Mel (B, n_mels, 2·n_ctx) -> (B, n_ctx, dim): conv(k3) -> GELU -> conv(k3, stride 2) -> GELU,
    plus the fixed [sin | cos] position table.

    The table is a persistent buffer, as in openai/whisper, so checkpoints carry it and import
    copies it verbatim rather than trusting a recomputation to match bit for bit.
    """

    def __init__(self, n_mels: int, dim: int, n_ctx: int) -> None:
        super().__init__()
        self.n_mels, self.n_ctx = n_mels, n_ctx
        self.conv1 = nn.Conv1d(n_mels, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)
        self.register_buffer("pos_embed", sinusoidal_positions_concat(n_ctx, dim))  # (n_ctx, dim)

    def forward(self, mel: Tensor, partial: bool = False) -> Tensor:
        """(B, n_mels, 2·n_ctx) -> (B, n_ctx, dim). With `partial`, also the first 2·k frames of a
        window (k <= n_ctx, whisper.cpp's `audio_ctx`) -> (B, k, dim) at positions 0 .. k-1."""
        frames = mel.shape[2] if mel.ndim == 3 else -1
        fits = frames == 2 * self.n_ctx or (partial and 0 < frames <= 2 * self.n_ctx and frames % 2 == 0)
        if mel.ndim != 3 or mel.shape[1] != self.n_mels or not fits:
            raise ValueError(
                f"expected log-Mel input (B, {self.n_mels}, {2 * self.n_ctx}), got {tuple(mel.shape)}; "
                "pad_or_trim the audio to the model's chunk length before log_mel_spectrogram")
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x))  # (B, dim, k)
        return x.transpose(1, 2) + self.pos_embed[: x.shape[2]].to(x.dtype)  # (B, k, dim)
