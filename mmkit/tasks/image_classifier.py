"""Image classification system: cross-entropy with label smoothing (Szegedy et al., 2016),
optional mixup/cutmix (timm's `Mixup` in its per-batch mode, on every batch size), AdamW with
linear warmup then cosine decay, and torchmetrics accuracy. The model is injected (any
`(B, C, H, W) -> (B, classes)` module, a ViT by default in the configs; `mmkit.models.PretrainedViT`
to start from a checkpoint).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from mmkit.inference.classifier import top_k
from mmkit.tasks.model_task import ModelTask
from mmkit.tasks.optim import adamw_warmup_cosine

log = logging.getLogger(__name__)


class ImageClassifier(ModelTask, pl.LightningModule):
    """
    Args:
        model: the network, configured from YAML by class path.
        class_names: label names, linked from the DataModule (default: the names a pretrained
            model's checkpoint carries); saved with exported checkpoints.
        lr, weight_decay: AdamW settings (no decay on biases, norms, tokens and positions).
        warmup_ratio: fraction of all optimiser steps spent in linear warmup before cosine decay.
        label_smoothing: smoothing of the one-hot targets.
        mixup_alpha, cutmix_alpha: timm Mixup/CutMix strengths (0 = off). When on, every training batch
            is mixed (odd sizes too, see `BatchMixup`) and trained on soft targets that carry the label
            smoothing; `train/acc` is then not logged (a mixed image has no single true class), only
            `train/loss`.
        top_k: predictions returned per image by `predict_step`.
        export_dir: where `on_fit_end` writes the native checkpoint for `mmkit predict` and demos.
    """

    def __init__(
        self,
        model: nn.Module,
        class_names: list[str] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_ratio: float = 0.05,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        top_k: int = 5,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        class_names = class_names or getattr(model, "metadata", {}).get("class_names")
        self.model = model
        num_classes = _num_outputs(model)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"the data has {len(self.class_names)} classes but the model has {num_classes} outputs")
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = BatchMixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                                    label_smoothing=label_smoothing, num_classes=num_classes)
        self.train_acc = MulticlassAccuracy(num_classes)
        self.val_acc = MulticlassAccuracy(num_classes)
        self.test_acc = MulticlassAccuracy(num_classes)
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes))

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        if batch is None:  # every image in the batch was unreadable (already logged)
            return None
        images, targets, _ = batch
        if self.mixup is not None:  # every batch, odd sizes included (BatchMixup)
            images, soft = self.mixup(images, targets)
            logits = self(images)
            loss = torch.sum(-soft * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            logits = self(images)
            loss = F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)
            self.train_acc(logits, targets)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: Any, stage: str, acc: MulticlassAccuracy) -> None:
        if batch is None:
            return
        images, targets, _ = batch
        logits = self(images)
        # Averaged over DDP ranks (an epoch-level value); the accuracy metrics sync themselves.
        self.log(f"{stage}/loss", F.cross_entropy(logits, targets), prog_bar=True, sync_dist=True)
        acc(logits, targets)
        self.log(f"{stage}/acc", acc, prog_bar=True)
        if stage == "val":
            self.val_top5(logits, targets)
            self.log("val/acc_top5", self.val_top5)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        if batch is None:
            return {"indices": [], "top_k": []}
        images, _, indices = batch
        return {"indices": indices.tolist(), "top_k": top_k(self(images), self.class_names, self.hparams.top_k)}

    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_warmup_cosine(self.model, self.hparams.lr, self.hparams.weight_decay,
                                   self.hparams.warmup_ratio, self.trainer.estimated_stepping_batches)

    def export(self, directory: str | Path, data_meta: dict[str, Any] | None = None) -> Path:
        """Write the native checkpoint (weights + class names + eval transform) for inference."""
        meta = {"class_names": self.class_names, **(data_meta or {})}
        return self.model.save_pretrained(directory, metadata=meta)

    def on_fit_end(self) -> None:
        if (folder := self.export_folder()) is not None:
            dm = self.trainer.datamodule
            meta = dm.inference_metadata() if hasattr(dm, "inference_metadata") else eval_metadata(dm)
            path = self.export(folder, meta)
            log.info("exported model to %s", path)


# The eval transform's settings, in the names `mmkit.data.transforms.eval_transform` reads.
_EVAL_KEYS = ("image_size", "crop_pct", "mean", "std", "interpolation")


def eval_metadata(dm: Any) -> dict[str, Any]:
    """The eval transform a DataModule was built with (from its saved hyper-parameters), so an
    exported checkpoint preprocesses like validation did instead of falling back to 224 px
    ImageNet statistics."""
    hp = getattr(dm, "hparams", None) or {}
    return {k: list(hp[k]) if isinstance(hp[k], tuple) else hp[k] for k in _EVAL_KEYS if k in hp}


class BatchMixup:
    """timm's `Mixup` in its default per-batch mode, for any batch size.

    Each row is mixed (mixup) or patched (cutmix) with the row at the mirrored position of the
    batch, ``x.flip(0)``, with one lambda for the batch; the targets are mixed alike by timm's
    `mixup_target`, which also applies the label smoothing. timm's `Mixup.__call__` asserts an even
    batch (its 'pair' and 'elem' modes need one; timm's training script drops the last odd batch),
    yet the flip is defined for odd sizes too: the middle row is paired with itself, so its image
    and its (smoothed) target stay as they are. Only this mode is used here, so no batch (a small
    dataset's odd last one, or an odd batch_size) goes unmixed. The images are mixed in place, as
    timm does. timm draws lambda and mixup-or-cutmix with numpy (seeded by `seed_everything`).
    """

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, label_smoothing: float, num_classes: int) -> None:
        from timm.data import Mixup  # imported only when mixup is on

        self.timm = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, label_smoothing=label_smoothing,
                          num_classes=num_classes, mode="batch")
        self.label_smoothing, self.num_classes = label_smoothing, num_classes

    def __call__(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """``(mixed images, soft targets (B, num_classes))`` for a batch of any size >= 1."""
        from timm.data.mixup import mixup_target

        lam = self.timm._mix_batch(images)  # the body of timm's __call__ for mode="batch", less the assert
        return images, mixup_target(targets, self.num_classes, lam, self.label_smoothing)


def _num_outputs(model: nn.Module) -> int:
    n = getattr(model, "num_classes", None)
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"{type(model).__name__} has no classifier head (num_classes={n})")
    return n
