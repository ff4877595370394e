"""Patch embedding of ViT (Dosovitskiy et al., 2021): non-overlapping p×p patches, each
linearly projected to `dim`. Implemented as a strided conv named `proj` (timm's layout).
"""
from __future__ import annotations

from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """(B, C, H, W) image -> (B, (H/p)*(W/p), dim) patch tokens."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, dim: int = 768, bias: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not divisible by patch size {self.patch_size}"
            )
        return height // self.patch_size, width // self.patch_size

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
        self.grid(x.shape[2], x.shape[3])
        x = self.proj(x)  # (B, dim, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (B, N, dim)
