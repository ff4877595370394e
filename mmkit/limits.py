"""Numeric limits that user input is checked against, torch-free so that the command line's usage checks
(`mmkit.cli.options`), the demos' input checks and the core's own argument checks share one definition."""
from __future__ import annotations

import math

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's largest seed: a user's seed is in [0, MAX_SEED]
MAX_SAMPLES = 64  # sampled continuations of one prompt in one batch at most (each holds a KV cache)
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: a larger temperature or guidance is inf


def finite32(value: float) -> bool:
    """Whether `value` stays finite in float32, the logits' type: 1e39 passed math.isfinite, became inf when it
    scaled the logits, and sampling failed on NaN probabilities."""
    return math.isfinite(value) and abs(value) <= FLOAT32_MAX
