"""Training the VQGAN image tokenizer (Esser et al., 2021) as a VQ-VAE (van den Oord et al., 2017):
L1 reconstruction + the codebook/commitment loss, straight-through gradients and dead-code restarts
in the quantizer. The perceptual and adversarial terms of taming's VQGAN are left out: on the flat
synthetic shapes they buy nothing a CPU recipe can afford. Logs reconstruction error and codebook
usage (fraction of codes used and perplexity of the code distribution over the validation set). Testing, on a data module with
`test_specs` (`ShapesImagesDataModule`), has the independent `ShapesJudge` read the tokenizer's own
reconstructions: the ceiling of any generator that speaks its codes.
"""
from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from mmkit.models.vqgan import VQGAN
from mmkit.tasks.model_task import ModelTask
from mmkit.tasks.optim import adamw_warmup_cosine

log = logging.getLogger(__name__)


def codebook_usage(counts: Tensor) -> tuple[float, float]:
    """(fraction of codes used, perplexity exp(H)) of a (codebook_size,) histogram of codes."""
    total = counts.sum()
    if total == 0:
        return 0.0, 0.0
    p = counts.float() / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float((counts > 0).float().mean()), float(entropy.exp())


class VQGANTask(ModelTask, pl.LightningModule):
    """Batches are (B, 3, H, W) images in [0, 1] (`mmkit.data.dalle_shapes.ShapesImagesDataModule`).

    Args:
        model: the VQGAN, configured from YAML by class path.
        lr, weight_decay, warmup_ratio: AdamW with linear warmup then cosine decay.
        foreground_weight: extra L1 weight on pixels that stand out from their image's median colour
            (> 0.1 in some channel). A small object on a plain background is a tenth of the pixels,
            so plain L1 learns the background first; measured on the shapes recipe: without it, 600
            steps decoded every shape as the same green blob.
        edge_weight: extra L1 weight on the boundary band of those pixels (their 3×3 dilation minus
            their erosion, ~2 px): the outline is what tells a star from a circle, and it is a
            small fraction even of the foreground.
        judge_steps: training steps of the test stage's judge (`ShapesJudge`).
        export_dir: where `on_fit_end` writes the native checkpoint.
    """

    def __init__(self, model: VQGAN, lr: float = 2e-3, weight_decay: float = 0.0, warmup_ratio: float = 0.02,
                 foreground_weight: float = 0.0, edge_weight: float = 0.0, judge_steps: int = 400,
                 export_dir: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.register_buffer("_val_counts", torch.zeros(model.codebook_size, dtype=torch.long), persistent=False)
        self._test: list[tuple[int, Any]] = []

    def _step(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        recon, vq_loss, codes = self.model(images)
        err = (recon - images).abs()
        l1 = err.mean()
        hp = self.hparams
        if hp.foreground_weight > 0 or hp.edge_weight > 0:
            median = images.flatten(2).median(-1).values[..., None, None]  # (B, C, 1, 1)
            salient = ((images - median).abs().amax(1, keepdim=True) > 0.1).float()  # (B, 1, H, W)
            weight = 1 + hp.foreground_weight * salient
            if hp.edge_weight > 0:
                dilated, eroded = F.max_pool2d(salient, 3, 1, 1), -F.max_pool2d(-salient, 3, 1, 1)
                weight = weight + hp.edge_weight * (dilated - eroded)
            return (err * weight).mean() + vq_loss, l1, codes
        return l1 + vq_loss, l1, codes

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss, l1, codes = self._step(batch)
        used, perplexity = codebook_usage(torch.bincount(codes.flatten(), minlength=self.model.codebook_size))
        self.log_dict({"train/loss": loss, "train/recon_l1": l1}, prog_bar=True, batch_size=len(batch))
        self.log_dict({"train/codes_used": used, "train/perplexity": perplexity}, batch_size=len(batch))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_counts.zero_()

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        loss, l1, codes = self._step(batch)
        self._val_counts += torch.bincount(codes.flatten(), minlength=self.model.codebook_size)
        self.log_dict({"val/loss": loss, "val/recon_l1": l1}, prog_bar=True, batch_size=len(batch), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        counts = self.all_gather(self._val_counts).view(-1, self.model.codebook_size).sum(0)
        used, perplexity = codebook_usage(counts)
        self.log_dict({"val/codes_used": used, "val/perplexity": perplexity})

    def on_test_epoch_start(self) -> None:
        self._test = []

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        from mmkit.inference.text_to_image import to_pil

        images, index = batch
        self._test += list(zip(index.tolist(), to_pil(self.model.decode(self.model.encode(images)))))

    def on_test_epoch_end(self) -> None:
        from mmkit.data.shapes_judge import judged_report

        dm = self.trainer.datamodule
        specs = [dm.test_specs[i] for i, _ in self._test]
        report = judged_report([im for _, im in self._test], specs, set(dm.held_out), self.hparams.judge_steps,
                               control_seed=None)
        self.log_dict({f"test/recon_{k}": v for k, v in report.items()})

    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_warmup_cosine(self.model, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_ratio,
                                   self.trainer.estimated_stepping_batches)

    def on_fit_end(self) -> None:
        if (folder := self.export_folder()) is not None:
            path = self.model.save_pretrained(folder)
            log.info("exported the tokenizer to %s", path)
