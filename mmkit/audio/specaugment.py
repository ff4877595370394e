"""SpecAugment (Park et al., "SpecAugment: A Simple Data Augmentation Method for Automatic
Speech Recognition", 2019): frequency and time masking of a (log-)Mel spectrogram. Time
warping is left out: the paper reports it as the least useful of the three and costly.

Defaults are the paper's LibriSpeech "LD" policy (F=27, m_F=2, T=100, p=1.0, m_T=2).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class SpecAugment(nn.Module):
    """Mask random frequency bands and time spans; the identity in eval mode.

    Args:
        freq_mask_param: maximum width F of each frequency mask (bins); width ~ U{0, F}.
        num_freq_masks: number of frequency masks m_F.
        time_mask_param: maximum width T of each time mask (frames); width ~ U{0, T}.
        num_time_masks: number of time masks m_T.
        max_time_ratio: upper bound p on a time mask's width as a fraction of the frames.
        mask_value: value written into masked cells (0.0, as transformers' Whisper masking
            writes into normalised log-Mel features).
    """

    def __init__(
        self,
        freq_mask_param: int = 27,
        num_freq_masks: int = 2,
        time_mask_param: int = 100,
        num_time_masks: int = 2,
        max_time_ratio: float = 1.0,
        mask_value: float = 0.0,
    ) -> None:
        super().__init__()
        if min(freq_mask_param, num_freq_masks, time_mask_param, num_time_masks) < 0:
            raise ValueError("mask sizes and counts must be >= 0")
        if not 0.0 <= max_time_ratio <= 1.0:
            raise ValueError(f"max_time_ratio must be in [0, 1], got {max_time_ratio}")
        self.freq_mask_param, self.num_freq_masks = freq_mask_param, num_freq_masks
        self.time_mask_param, self.num_time_masks = time_mask_param, num_time_masks
        self.max_time_ratio, self.mask_value = max_time_ratio, mask_value

    def forward(self, spec: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """
        Args:
            spec: (B, n_mels, T) or (n_mels, T) spectrogram.
            generator: optional CPU RNG for reproducible masks (masks are drawn on the CPU).

        Returns:
            the masked spectrogram (a new tensor), or `spec` itself in eval mode.
        """
        if not self.training:
            return spec
        x = spec if spec.ndim == 3 else spec.unsqueeze(0)  # (B, n_mels, T)
        B, n_mels, T = x.shape
        keep = _band_mask(B, n_mels, self.freq_mask_param, self.num_freq_masks, generator, x.device)
        time_width = min(self.time_mask_param, int(self.max_time_ratio * T))
        keep_t = _band_mask(B, T, time_width, self.num_time_masks, generator, x.device)
        mask = ~(keep[:, :, None] & keep_t[:, None, :])  # (B, n_mels, T), True = masked
        out = x.masked_fill(mask, self.mask_value)
        return out if spec.ndim == 3 else out.squeeze(0)


def _band_mask(
    batch: int, size: int, max_width: int, count: int, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """(batch, size) bool, False inside `count` random bands of width U{0, max_width} per row."""
    keep = torch.ones(batch, size, dtype=torch.bool, device=device)
    max_width = min(max_width, size)
    if count == 0 or max_width == 0:
        return keep
    width = torch.randint(0, max_width + 1, (batch, count), generator=generator)  # (B, count)
    start = (torch.rand(batch, count, generator=generator) * (size - width + 1)).long()  # start in [0, size - w]
    pos = torch.arange(size)[None, None, :]  # (1, 1, size)
    inside = (pos >= start[..., None]) & (pos < (start + width)[..., None])  # (B, count, size)
    return keep & ~inside.any(dim=1).to(device)
