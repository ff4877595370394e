"""Input stems: turn raw modalities (pixels, audio frames, token ids) into (B, T, dim) sequences."""
from mmkit.stems.audio import AudioConvStem
from mmkit.stems.patch import PatchEmbed

__all__ = ["AudioConvStem", "PatchEmbed"]
