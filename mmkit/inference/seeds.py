"""Sampling seeds of the tools whose every output is drawn from its own seed (the seeds a user may give:
`mmkit.limits.MAX_SEED`): an image of `mmkit generate`, a line of `mmkit translate --seed`, each of the n samples
of a translation or a continuation (`--num-return-sequences`)."""
from __future__ import annotations

import hashlib


def indexed_seed(seed: int, index: int) -> int:
    """The 63-bit sampling seed of output `index` (image `index` of a prompt, line `index` of a file to translate):
    it depends on the user's seed and the index only, never on the batch the output is sampled in
    (`mmkit generate --batch-size`, `mmkit translate --batch-size`, the ranks of a torchrun)."""
    digest = hashlib.blake2b(str(index).encode(), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") >> 1


def sample_seed(seed: int, sample: int) -> int:
    """The seed of sample `sample` of an output seeded by `seed`: `seed` itself for sample 0, so that the first of
    n samples is the single sample's, and one of (seed, sample) for the others (`indexed_seed`)."""
    return seed if sample == 0 else indexed_seed(seed, sample)
