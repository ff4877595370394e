"""The recipes' checkpoint callback: Lightning's `ModelCheckpoint` whose `last.ckpt` follows the run.

    callbacks:
      - class_path: mmkit.tasks.ModelCheckpoint
        init_args: {monitor: val/acc, mode: max, save_last: true, filename: "best-{epoch:02d}"}
"""
from __future__ import annotations

import pytorch_lightning as pl


class ModelCheckpoint(pl.callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint (the same arguments and files) whose `last.ckpt` (`save_last=True`) always
    holds the run's latest state: rewritten at each of its checkpointing points (a validation's end, or the
    training epoch's where it checkpoints there, every `every_n_epochs` epochs; every `every_n_train_steps` steps
    as Lightning's) and when training ends, whether or not a top-k checkpoint was saved at that step. Lightning's
    (2.6) rewrites it only in a step where a top-k checkpoint is saved: once the monitored metric stopped
    improving, `--ckpt_path last` resumed or scored an old epoch (the export, written at the end, held newer
    weights than it), and a run ended by `max_steps` mid-epoch kept no checkpoint of its final state."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = self._epoch_due(trainer) and self._should_save_on_train_epoch_end(trainer)
        super().on_train_epoch_end(trainer, pl_module)
        if due:
            self._save_last_if_behind(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due = self._epoch_due(trainer) and not self._should_save_on_train_epoch_end(trainer)
        super().on_validation_end(trainer, pl_module)
        if due:
            self._save_last_if_behind(trainer)

    def _epoch_due(self, trainer: pl.Trainer) -> bool:
        """An epoch's checkpointing point by the callback's own cadence (`every_n_epochs`; 0: none)."""
        return (not self._should_skip_saving_checkpoint(trainer) and self._every_n_epochs >= 1
                and (trainer.current_epoch + 1) % self._every_n_epochs == 0)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer):  # steps since the last checkpoint (max_steps)
            self._save_last_if_behind(trainer)

    def _save_last_if_behind(self, trainer: pl.Trainer) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
