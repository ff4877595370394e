"""A tiny random-init mmkit CLIP (one block per tower) for label, rerank and bench tests. The text tower
keeps CLIP's real BPE layout (49,408 ids, 77 positions) so the real tokenizer applies."""
from __future__ import annotations

from pathlib import Path

import torch

from mmkit.models.clip import CLIP

TINY_CLIP = dict(
    visual=dict(embed_dim=16, image_size=32, patch_size=8, dim=32, depth=1, num_heads=2),
    text=dict(embed_dim=16, vocab_size=49408, max_len=77, dim=32, depth=1, num_heads=2),
)


def save_tiny_clip(directory: str | Path, seed: int = 0) -> Path:
    """Save a seeded `CLIP.from_config(TINY_CLIP)` as an mmkit export in `directory`; returns it."""
    torch.manual_seed(seed)
    return CLIP.from_config(TINY_CLIP).save_pretrained(directory)
