"""Contrastive image-text training (CLIP, Radford et al., 2021) as open_clip trains it: symmetric
InfoNCE with a learned temperature clamped at 100, features gathered across ranks with gradients
(`mmkit.tasks.contrastive`), AdamW with warmup then cosine decay. Optional locked towers for
fine-tuning (LiT, Zhai et al., 2022: locked image tower), a zero-shot evaluation callback, and a
native checkpoint exported at the end of fit for `mmkit.inference.ZeroShotClassifier` and the demo.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from mmkit.models.clip import CLIP
from mmkit.tasks.contrastive import batch_sizes_across_ranks, clip_loss
from mmkit.tasks.model_task import ModelTask
from mmkit.tasks.optim import adamw_warmup_cosine
from mmkit.inference.prompts import DEFAULT_TEMPLATES
from mmkit.inference.zero_shot import default_image_metadata, zero_shot_classifier, zero_shot_logits

log = logging.getLogger(__name__)


class CLIPTask(ModelTask, pl.LightningModule):
    """
    Batches are dicts with "images" (B, 3, H, W) and "token_ids" (B, T) (`mmkit.data.captions`).

    Args:
        model: the CLIP, configured from YAML by class path (towers nested the same way).
        lr, weight_decay: AdamW settings (no decay on gains, biases, the cls token, positions and the
            logit scale).
        warmup_ratio: fraction of all optimiser steps spent in linear warmup before cosine decay.
        lock_image: freeze the image tower (weights and train-mode behaviour), LiT-style.
        lock_text: freeze the text tower.
        max_logit_scale: the learned inverse temperature is clamped to [1, this] after each step
            (CLIP: 100, so that training stays stable).
        export_dir: where `on_fit_end` writes the native checkpoint (config.json + safetensors).
    """

    def __init__(
        self,
        model: CLIP,
        lr: float = 5e-4,
        weight_decay: float = 0.1,
        warmup_ratio: float = 0.05,
        lock_image: bool = False,
        lock_text: bool = False,
        max_logit_scale: float = 100.0,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.locked = [tower for tower, lock in ((model.visual, lock_image), (model.text, lock_text)) if lock]
        for tower in self.locked:
            tower.requires_grad_(False)

    def setup(self, stage: str) -> None:
        """Refuse captions tokenized longer than the text tower's learned positions, before the run starts: the
        first batch failed mid-run with "sequence of 77 positions exceeds max_len 16", naming neither option.
        A model that records its own preprocessing (an import, a run's export: `CLIP.preprocess`) has the data
        normalised as it was pretrained (the data module's `normalize_as`), as open_clip's training does: a model
        pretrained on other statistics and fine-tuned on OpenAI's saw shifted inputs from its first step."""
        datamodule = getattr(self.trainer, "datamodule", None)
        tokenizer = getattr(datamodule, "tokenizer", None)
        length, max_len = getattr(tokenizer, "context_length", None), self.model.context_length
        if isinstance(length, int) and length > max_len:
            raise ValueError(f"--data.init_args.context_length {length} exceeds the text tower's max_len {max_len} "
                             "(--model.init_args.model.init_args.text.init_args.max_len): give a context_length of "
                             f"at most {max_len}, or a text tower with max_len {length} or more")
        if self.model.preprocess and hasattr(datamodule, "normalize_as"):
            changed = datamodule.normalize_as(self.model.preprocess)
            if changed and self.trainer.is_global_zero:
                log.info("the data is preprocessed as the model was pretrained: %s (its recorded preprocessing)",
                         ", ".join(f"{k} {v}" for k, v in changed.items()))

    def train(self, mode: bool = True) -> "CLIPTask":
        super().train(mode)
        for tower in self.locked:  # a locked tower also keeps its eval behaviour (drop path off)
            tower.eval()
        return self

    def forward(self, images: Tensor, token_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> normalised (B, D) image features, (B, D) text features, exp'd logit scale."""
        image_features, text_features, scale = self.model(images, token_ids)[:3]
        return image_features, text_features, scale

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Symmetric InfoNCE of the batch's pairs against all ranks' pairs."""
        return clip_loss(*self(batch["images"], batch["token_ids"]))

    def training_step(self, batch: dict[str, Any] | None, batch_idx: int) -> Tensor | None:
        # Under DDP a rank whose images were all unreadable must still join the collectives,
        # and all ranks must agree to skip, or the others would wait in the gather forever.
        sizes = batch_sizes_across_ranks(0 if batch is None else len(batch["images"]), self.device)
        if min(sizes) == 0:
            log.warning("skipping a training step: a batch had no readable images (sizes %s)", sizes)
            return None
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["images"]))
        self.log("train/logit_scale", self.model.logit_scale.exp(), batch_size=len(batch["images"]))
        return loss

    def _evaluate(self, batch: dict[str, Any] | None, stage: str) -> None:
        sizes = batch_sizes_across_ranks(0 if batch is None else len(batch["images"]), self.device)
        if min(sizes) == 0:
            return
        # Contrastive loss within each evaluation batch (comparable across epochs, not across batch sizes).
        self.log(f"{stage}/loss", self.loss(batch), prog_bar=True, sync_dist=True, batch_size=len(batch["images"]))

    def validation_step(self, batch: dict[str, Any] | None, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any] | None, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():  # open_clip clamps after the optimiser step, in place
            self.model.logit_scale.clamp_(0, math.log(self.hparams.max_logit_scale))

    def configure_optimizers(self) -> dict[str, Any]:
        # CLIP's betas/eps (Radford et al., 2021).
        return adamw_warmup_cosine(self.model, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_ratio,
                                   self.trainer.estimated_stepping_batches, betas=(0.9, 0.98), eps=1e-6)

    def export(self, directory: str | Path, data_meta: dict[str, Any] | None = None) -> Path:
        """Write the native checkpoint; metadata = preprocessing, context length, zero-shot defaults."""
        return self.model.save_pretrained(directory, metadata=_export_metadata(self.model, data_meta))

    def on_fit_end(self) -> None:
        if (folder := self.export_folder()) is not None:
            dm = self.trainer.datamodule
            meta = dm.inference_metadata() if hasattr(dm, "inference_metadata") else {}
            path = self.export(folder, meta)
            log.info("exported model to %s", path)


def _export_metadata(model: CLIP, data_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata an export of `model` records: its own preprocessing (an import's: SigLIP's squash resize),
    its context length, then what the data module gives (`inference_metadata`: its eval transform, zero-shot
    defaults). `ZeroShotEvaluation` preprocesses an `image_dir` by it too, so that the accuracy it logs is the one
    `mmkit label` and `ZeroShotClassifier` measure with the export on the same images."""
    return {**default_image_metadata(model), "context_length": model.context_length, **(data_meta or {})}


class ZeroShotEvaluation(pl.Callback):
    """Zero-shot accuracy during validation and testing, logged as `val/zeroshot_acc` and
    `test/zeroshot_acc` (summed over DDP ranks before dividing).

    The images are the evaluation batches that carry "targets" (indices into `labels`, as
    `ShapesDataModule` gives), or, with `image_dir`, a class folder (`root/<class>/<images>`,
    labels = folder names with "_" read as spaces) scored at each epoch end.

    Args:
        labels: class names written into the prompts; None = the DataModule's `zeroshot_labels`.
        templates: prompt templates with "{}"; None = the DataModule's `zeroshot_templates`,
            else `mmkit.inference.prompts.DEFAULT_TEMPLATES` (as `mmkit label` and the demo).
        image_dir: a labelled class folder to evaluate instead of the evaluation batches.
        batch_size: images per forward pass for `image_dir`.
    """

    def __init__(self, labels: list[str] | None = None, templates: list[str] | None = None,
                 image_dir: str | None = None, batch_size: int = 64) -> None:
        self.labels, self.templates, self.image_dir, self.batch_size = labels, templates, image_dir, batch_size
        self._classifier: Tensor | None = None
        self._counts = torch.zeros(2)  # correct, seen

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Where there is nothing to score (no labels given, no `image_dir`, data without
        `zeroshot_labels`, e.g. a caption table), `*/zeroshot_acc` is never logged: checkpoints and
        early stopping that monitor it follow `val/loss` (lower is better) instead, with one
        warning, rather than stopping the run at the first epoch's end. An `image_dir` that is not a
        class folder is refused here, in one line, not at the first validation's end (after an epoch
        where the sanity check is off)."""
        if self.image_dir and stage != "predict":
            from mmkit.data.image_folder import list_classes, require_path

            root = require_path(f"ZeroShotEvaluation image_dir {self.image_dir}", self.image_dir)
            if not list_classes(root):
                raise ValueError(f"ZeroShotEvaluation image_dir {self.image_dir}: no class folders in it "
                                 "(root/<class>/<images>)")
        if stage != "fit" or self.labels or self.image_dir or getattr(trainer.datamodule, "zeroshot_labels", None):
            return
        for cb in [*trainer.checkpoint_callbacks, *trainer.early_stopping_callbacks]:
            if isinstance(cb.monitor, str) and cb.monitor.endswith("zeroshot_acc"):
                log.warning("%s monitors %s, which this data cannot measure (no zero-shot labels: give "
                            "ZeroShotEvaluation labels or image_dir); it monitors val/loss instead",
                            type(cb).__name__, cb.monitor)
                cb.monitor, cb.mode = "val/loss", "min"
                worst = torch.tensor(torch.inf)  # what each callback's __init__ sets for mode "min"
                if isinstance(cb, pl.callbacks.ModelCheckpoint):
                    cb.kth_value = worst
                else:  # EarlyStopping: thresholds set for an accuracy mean nothing for a loss
                    cb.best_score, cb.min_delta = worst, -abs(cb.min_delta)
                    cb.stopping_threshold = cb.divergence_threshold = None

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        labels = self.labels or getattr(dm, "zeroshot_labels", None)
        if self.image_dir:
            from mmkit.data.image_folder import list_classes

            labels = self.labels or [c.replace("_", " ") for c in list_classes(Path(self.image_dir).expanduser())]
        self._classifier = None
        self._counts = torch.zeros(2)
        if not labels:
            return
        templates = self.templates or getattr(dm, "zeroshot_templates", None) or DEFAULT_TEMPLATES
        tokenizer = getattr(dm, "tokenizer", None)
        if tokenizer is None:
            from mmkit.data.text import CLIPTokenizer

            tokenizer = CLIPTokenizer(context_length=pl_module.model.context_length)
        self._classifier = zero_shot_classifier(pl_module.model, tokenizer, labels, templates)  # (C, D)

    def _update(self, pl_module: pl.LightningModule, images: Tensor, targets: Tensor) -> None:
        predicted = zero_shot_logits(pl_module.model, images, self._classifier).argmax(dim=-1)
        self._counts += torch.tensor([(predicted == targets.to(predicted.device)).sum().item(), len(targets)])

    def _batch_end(self, pl_module: pl.LightningModule, batch: Any) -> None:
        if self._classifier is not None and not self.image_dir and isinstance(batch, dict) and "targets" in batch:
            keep = batch["targets"] >= 0
            if keep.any():
                self._update(pl_module, batch["images"][keep], batch["targets"][keep])

    def _folder(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from mmkit.data.image_folder import ImageFileDataset, collate_skipping, find_samples, list_classes
        from mmkit.data.transforms import CLIP_DEFAULTS, eval_transform

        root = Path(self.image_dir).expanduser()
        classes = list_classes(root)
        samples = find_samples(root, {c: i for i, c in enumerate(classes)})
        samples = samples[trainer.global_rank::trainer.world_size]  # each rank scores its share
        dm = trainer.datamodule
        # the export's preprocessing: the data's eval transform lacks the model's own resize mode (SigLIP's squash)
        meta = _export_metadata(pl_module.model, dm.inference_metadata() if hasattr(dm, "inference_metadata") else None)
        loader = DataLoader(ImageFileDataset(samples, eval_transform(meta, CLIP_DEFAULTS)), batch_size=self.batch_size,
                            collate_fn=collate_skipping)
        for batch in loader:
            if batch is not None:
                self._update(pl_module, batch[0].to(pl_module.device), batch[1])

    def _end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._classifier is None:
            return
        if self.image_dir:
            self._folder(trainer, pl_module)
        counts = trainer.strategy.reduce(self._counts.to(pl_module.device), reduce_op="sum")
        if counts[1] > 0:
            # Identical on every rank after the sum; sync_dist keeps Lightning's epoch-level contract.
            pl_module.log(f"{stage}/zeroshot_acc", counts[0] / counts[1], prog_bar=True, sync_dist=True)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_end(pl_module, batch)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._batch_end(pl_module, batch)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(trainer, pl_module, "test")
