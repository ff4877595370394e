"""Training helpers for tests that fit a tiny model as a fixture."""
from __future__ import annotations

import pytorch_lightning as pl
import torch


def fit_single_threaded(trainer: pl.Trainer, task: pl.LightningModule, data: pl.LightningDataModule) -> None:
    """`trainer.fit` with one torch thread: a tiny model on shared CPUs gains nothing from more,
    they only contend. The thread count is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer.fit(task, data)
    finally:
        torch.set_num_threads(threads)
