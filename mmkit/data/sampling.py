"""The training order of the map-style data modules: a shuffle drawn from the run's seed and the epoch."""
from __future__ import annotations

from typing import Any, Iterator, Sized

import torch
from torch.utils.data import RandomSampler


class EpochShuffle(RandomSampler):
    """A RandomSampler whose order is a function of the run's seed (torch's, as `seed_everything` set it when
    the loader was built) and the epoch, which Lightning gives through `set_epoch`. With `shuffle=True` a loader
    drew its order from the global RNG, which every run re-seeds at its start: a run resumed after epoch N
    (`--ckpt_path last`) replayed epoch 0's batches, then 1's, instead of N+1's. Under DDP Lightning replaces it
    by a DistributedSampler, which seeds by epoch in the same way. A checkpoint saved mid-epoch (every N steps)
    resumes its epoch from the epoch's first batch, as Lightning restarts any map-style loader."""

    def __init__(self, data_source: Sized, seed: int | None = None) -> None:
        super().__init__(data_source)
        self.seed = torch.initial_seed() if seed is None else seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        self.generator = torch.Generator().manual_seed((self.seed + self.epoch) % 2**63)
        yield from super().__iter__()


def order(dataset: Sized, shuffle: bool) -> dict[str, Any]:
    """DataLoader keyword arguments for `dataset`'s order: an `EpochShuffle` for training, else as it is."""
    return {"sampler": EpochShuffle(dataset)} if shuffle else {"shuffle": False}
