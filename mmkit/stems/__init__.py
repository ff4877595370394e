"""Input stems: turn raw modalities (pixels, audio frames, token ids) into (B, T, dim) sequences."""
from mmkit.stems.patch import PatchEmbed

__all__ = ["PatchEmbed"]
