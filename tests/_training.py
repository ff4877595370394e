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


def block_calls(layers: torch.nn.ModuleList) -> tuple[list[int], list]:
    """A list that records the index of each of `layers` as it runs (which blocks LayerDrop kept), and the hook
    handles (to remove)."""
    ran: list[int] = []
    handles = [layer.register_forward_pre_hook(lambda *_, i=i: ran.append(i)) for i, layer in enumerate(layers)]
    return ran, handles


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient by name, zeros where none arrived (a skipped block's)."""
    return {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}
