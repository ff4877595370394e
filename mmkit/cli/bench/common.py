"""Timing helpers shared by the in-process benchmarks (`bench embed`, `bench text`, `bench translate`):
implementations run in alternating order in the same process, so drift in machine load lands on
both sides, and the caller reports medians as ratios (see the package docstring).
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Mapping, TypeVar

import torch

T = TypeVar("T")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the body with `threads` intra-op threads (None: leave as is), restoring the previous count."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def interleaved(runs: Mapping[str, Callable[[], T]], rounds: int,
                warmup: int) -> tuple[dict[str, list[float]], dict[str, T]]:
    """Time each run `warmup + rounds` times under inference mode, reversing the order every other round.

    Returns:
        seconds per run name (the `rounds` timed calls, warm-up excluded) and each run's last output.
    """
    names = list(runs)
    seconds: dict[str, list[float]] = {k: [] for k in names}
    outputs: dict[str, T] = {}
    with torch.inference_mode():
        for r in range(warmup + rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                outputs[name] = runs[name]()
                if r >= warmup:
                    seconds[name].append(time.perf_counter() - start)
    return seconds, outputs
