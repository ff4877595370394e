"""mmkit.tasks.ModelCheckpoint: last.ckpt follows the run at the callback's own cadence, whether or not the
monitored metric improves (Lightning 2.6's rewrites it only with a new best)."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel

from mmkit.tasks import ModelCheckpoint


class Flat(BoringModel):
    """A model whose monitored metric never improves."""

    def validation_step(self, batch, batch_idx):
        self.log("flat", 1.0)
        return super().validation_step(batch, batch_idx)


@pytest.mark.parametrize("every_n_epochs, saved_at", [(1, [0, 1, 2]), (2, [1, 3])])
def test_last_follows_the_run_at_the_callbacks_cadence(tmp_path, monkeypatch, every_n_epochs, saved_at):
    callback = ModelCheckpoint(dirpath=tmp_path, monitor="flat", save_last=True, every_n_epochs=every_n_epochs)
    epochs = []
    save_last = callback._save_last_checkpoint

    def recorded(trainer, candidates):
        epochs.append(trainer.current_epoch)
        save_last(trainer, candidates)

    monkeypatch.setattr(callback, "_save_last_checkpoint", recorded)
    trainer = pl.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1, callbacks=[callback], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Flat())
    assert epochs == saved_at  # every_n_epochs 2: epoch 1, then the run's end (where current_epoch is 3)
    assert torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 6
