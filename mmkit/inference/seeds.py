"""Sampling seeds of the text-to-image tools (the seeds a user may give: `mmkit.limits.MAX_SEED`)."""
from __future__ import annotations

import hashlib


def image_seed(seed: int, index: int) -> int:
    """The 63-bit sampling seed of image `index` of a prompt: an image depends on the user's seed and
    its index only, never on the batch it is sampled in (`mmkit generate --batch-size`)."""
    digest = hashlib.blake2b(str(index).encode(), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") >> 1
