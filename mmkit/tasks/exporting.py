"""What every task's export at the end of `fit` shares: when to write it, and when not.

A task with an `export_dir` hyperparameter writes its inference export in `on_fit_end`. `ExportsOnFitEnd`
decides for all of them: the folder is checked when fit starts (a file there would otherwise be found after
the whole run), a `fast_dev_run` or a fit that ran no training step leaves an earlier export as it is (as
Lightning saves no checkpoint for a fast_dev_run), and weights that went non-finite are refused in one line
with nothing written: a diverged run must not replace a good export with one that no loader accepts.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


class TrainingDiverged(ValueError):
    """The trained weights are not finite (NaN or infinity): nothing was exported."""


class ExportsOnFitEnd:
    """Mixin for a LightningModule whose `on_fit_end` writes `hparams.export_dir` when `export_wanted()`."""

    def on_fit_start(self) -> None:
        folder = self._export_folder()
        if folder is not None and folder.exists() and not folder.is_dir():
            raise ValueError(f"export_dir {folder} is a file, not a folder: give another --model.init_args.export_dir")

    def export_wanted(self) -> bool:
        """Whether `on_fit_end` writes the export: an export_dir is set, this is the first process, the run
        trained (not a fast_dev_run; at least one optimizer step) and every weight is finite.

        Raises:
            TrainingDiverged: a weight is NaN or infinite; nothing is written (one line at the command line).
        """
        assert isinstance(self, pl.LightningModule)
        folder = self._export_folder()
        if folder is None or not self.trainer.is_global_zero:
            return False
        if self.trainer.fast_dev_run:
            log.info("fast_dev_run: nothing exported (%s left as it is)", folder)
            return False
        if self.trainer.global_step == 0:
            log.warning("no training step ran: nothing exported (%s left as it is)", folder)
            return False
        bad = [name for name, p in self.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise TrainingDiverged(f"training diverged: non-finite weights (NaN or infinity) in {shown} after "
                                   f"{self.trainer.global_step} steps; nothing exported to {folder} (try a lower "
                                   "learning rate, or --trainer.gradient_clip_val)")
        return True

    def _export_folder(self) -> Path | None:
        export_dir = self.hparams.get("export_dir")  # type: ignore[attr-defined]
        return Path(export_dir).expanduser() if export_dir else None
