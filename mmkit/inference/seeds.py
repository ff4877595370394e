"""Sampling seeds of the text-to-image tools, torch-free so that `mmkit generate`'s usage checks and the
demos' input checks share the rule without loading any model code."""
from __future__ import annotations

import hashlib

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's largest seed: a user's seed is in [0, MAX_SEED]


def image_seed(seed: int, index: int) -> int:
    """The 63-bit sampling seed of image `index` of a prompt: an image depends on the user's seed and
    its index only, never on the batch it is sampled in (`mmkit generate --batch-size`)."""
    digest = hashlib.blake2b(str(index).encode(), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") >> 1
