"""A tiny random-init mmkit CLIP (one block per tower) for label, rerank and bench tests. The text tower
keeps CLIP's real BPE layout (49,408 ids, 77 positions) so the real tokenizer applies. `WORD_CLIP` and
`word_tokens` are a smaller one for in-process scorer tests: a 100-id text tower and a tokenizer of word hashes."""
from __future__ import annotations

import json
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


WORD_CLIP = dict(
    visual=dict(embed_dim=16, image_size=32, patch_size=8, dim=32, depth=1, num_heads=2),
    text=dict(embed_dim=16, vocab_size=100, max_len=12, dim=32, depth=1, num_heads=2),
)


def word_tokens(texts) -> torch.Tensor:
    """(len(texts), 12) ids for `WORD_CLIP`: each word a hash in 1..97, then the end token 99 (the argmax that
    CLIP's text tower pools at), zero-padded."""
    ids = torch.zeros(len(texts), 12, dtype=torch.long)
    for row, text in enumerate(texts):
        words = [1 + sum(map(ord, w)) % 97 for w in text.split()][:11]
        ids[row, : len(words) + 1] = torch.tensor([*words, 99])
    return ids


OC_TINY = "mmkit-label-tiny"  # an open_clip architecture registered for the tests (`save_open_clip_tiny`)
_OC_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}


def save_open_clip_tiny(folder: Path) -> Path:
    """Register `OC_TINY` with open_clip (its config in `folder`) and save a random-init (seed 0) model of it as a
    state dict there; returns the weights file (`--model OC_TINY --pretrained FILE`)."""
    import open_clip
    from safetensors.torch import save_file

    (folder / f"{OC_TINY}.json").write_text(json.dumps(_OC_CFG))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    model = open_clip.create_model(OC_TINY, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "tiny.safetensors"))
    return folder / "tiny.safetensors"
