"""Sequence classification by fine-tuning a BERT encoder (Devlin et al., 2019, §4.1): a classification
head (BERT's pooled [CLS], RoBERTa's dense + tanh, or the mean of the tokens), cross-entropy, accuracy
and Matthews correlation (the metric of the paper's CoLA runs; with many classes it stays informative
where accuracy is dominated by big ones). Starting from a pretrained masked-LM export, or from random
weights to measure what pretraining buys; the encoder may learn slower than the new head.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Accuracy, MatthewsCorrCoef

from mmkit.inference.encoder import load_encoder, save_encoder
from mmkit.models.bert import BERT
from mmkit.tasks.model_task import ModelTask
from mmkit.tasks.optim import adamw_warmup_cosine

log = logging.getLogger(__name__)
_HEADS = ("classifier.", "pooler.")  # learn at the full lr; the rest is the encoder


class TextClassifier(ModelTask, pl.LightningModule):
    """
    Args:
        model: the `BERT` architecture (num_classes linked from the data); used as is when
            `pretrained` is None (random init), else only its dropout and classifier_head are kept.
        pretrained: an mmkit BERT export or transformers BERT directory whose encoder (and pooler,
            when it has one) starts the fine-tuning; its tokenizer must be the data's.
        class_names: label names in class-index order (linked from the data), saved with the export.
        lr, weight_decay, warmup_ratio: AdamW and schedule.
        encoder_lr_scale: the encoder's learning rate is `lr * encoder_lr_scale`; the classification
            head and pooler learn at `lr` (ULMFiT's discriminative fine-tuning, Howard & Ruder 2018).
        export_dir: where `on_fit_end` writes the classifier (`mmkit classify-text --model DIR`).
    """

    def __init__(self, model: BERT, pretrained: str | None = None, class_names: list[str] | None = None,
                 lr: float = 1e-4, weight_decay: float = 0.01, warmup_ratio: float = 0.1,
                 encoder_lr_scale: float = 1.0, export_dir: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.tokenizer: Any = None
        self._prepared = False
        n = model.config["num_classes"]
        if n < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {n}")
        if not 0 < encoder_lr_scale <= 1:
            raise ValueError(f"encoder_lr_scale must be in (0, 1], got {encoder_lr_scale}")
        self.val_acc, self.test_acc = (Accuracy(task="multiclass", num_classes=n) for _ in range(2))
        self.val_mcc, self.test_mcc = (MatthewsCorrCoef(task="multiclass", num_classes=n) for _ in range(2))

    def setup(self, stage: str) -> None:
        self.tokenizer = tok = self.trainer.datamodule.tokenizer
        n = self.model.config["num_classes"]
        if self._prepared:  # fit then test: keep the fine-tuned weights
            return
        self._prepared = True
        if self.hparams.pretrained:
            base = load_encoder(self.hparams.pretrained)
            if base.tokenizer.hf.get_vocab() != tok.hf.get_vocab():
                raise ValueError(f"{self.hparams.pretrained}: its tokenizer is not the data's (data.tokenizer)")
            base.model.drop.p = self.model.config["dropout"]
            head = self.model.config["classifier_head"]
            self.model = base.model.with_heads(pooler=head == "pooled", mlm_head=False, num_classes=n,
                                               classifier_head=head).train()
            log.info("fine-tuning the encoder of %s", self.hparams.pretrained)
        elif self.model.config["vocab_size"] != len(tok) or self.model.config["pad_id"] != tok.pad_id:
            self.model = BERT(**{**self.model.config, "vocab_size": len(tok), "pad_id": tok.pad_id, "mlm_head": False})

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, T) ids -> (B, num_classes) logits."""
        return self.model.classify(input_ids, attention_mask)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self(batch["input_ids"], batch["attention_mask"]).float(), batch["labels"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def _evaluate(self, batch: dict[str, Tensor], stage: str, acc: Accuracy, mcc: MatthewsCorrCoef) -> None:
        logits = self(batch["input_ids"], batch["attention_mask"]).float()
        loss = F.cross_entropy(logits, batch["labels"])
        acc(logits, batch["labels"])
        mcc(logits.argmax(-1), batch["labels"])
        B = len(logits)
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=B)
        self.log(f"{stage}/acc", acc, prog_bar=True, batch_size=B)
        self.log(f"{stage}/mcc", mcc, prog_bar=True, batch_size=B)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc, self.val_mcc)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc, self.test_mcc)

    def configure_optimizers(self) -> dict[str, Any]:
        scale = self.hparams.encoder_lr_scale
        return adamw_warmup_cosine(self.model, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_ratio,
                                   self.trainer.estimated_stepping_batches,
                                   no_decay=lambda name, p: p.ndim <= 1 or "embed" in name,
                                   lr_scale=lambda name: 1.0 if name.startswith(_HEADS) else scale)

    def export(self, directory: str | Path) -> Path:
        """Write the classifier, its tokenizer and class names (`mmkit classify-text --model DIR`)."""
        return save_encoder(self.model, self.tokenizer, directory, self.hparams.class_names)

    def on_fit_end(self) -> None:
        if (folder := self.export_folder()) is not None:
            log.info("exported classifier to %s", self.export(folder))
