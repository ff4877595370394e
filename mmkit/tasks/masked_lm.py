"""Masked-language-model pretraining (BERT, Devlin et al., 2019, §3.1; dynamic masking as in
RoBERTa, Liu et al., 2019): cross-entropy on the masked positions only (the head runs on those
alone, ~15% of the tokens), masked-token accuracy, AdamW with linear warmup then cosine decay.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from mmkit.data.bert_text import IGNORE
from mmkit.inference.encoder import save_encoder
from mmkit.models.bert import BERT
from mmkit.tasks.model_task import ModelTask
from mmkit.tasks.optim import adamw_warmup_cosine

log = logging.getLogger(__name__)


class MaskedLM(ModelTask, pl.LightningModule):
    """
    Args:
        model: the `BERT` to pretrain; vocab_size and pad_id are replaced by the data tokenizer's at
            setup (data-determined), it gets an MLM head and no classifier; the rest is kept.
        lr, weight_decay, warmup_ratio: AdamW and schedule (no decay on biases, norms, embeddings).
        export_dir: where `on_fit_end` writes the model and tokenizer (`mmkit fill-mask --model DIR`).
    """

    def __init__(self, model: BERT, lr: float = 5e-4, weight_decay: float = 0.01, warmup_ratio: float = 0.06,
                 export_dir: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.tokenizer: Any = None
        self.val_acc = MeanMetric()

    def setup(self, stage: str) -> None:
        self.tokenizer = tok = self.trainer.datamodule.tokenizer
        wanted = {"vocab_size": len(tok), "pad_id": tok.pad_id, "mlm_head": True, "num_classes": 0}
        if any(self.model.config[k] != v for k, v in wanted.items()):
            log.info("BERT %s (the data tokenizer's)", ", ".join(f"{k}={v}" for k, v in wanted.items()))
            self.model = BERT(**{**self.model.config, **wanted})

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, T) ids -> (B, T, vocab_size) MLM logits."""
        return self.model.mlm_logits(self.model.encode(input_ids, attention_mask))

    def _loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        hidden = self.model.encode(batch["input_ids"], batch["attention_mask"])
        chosen = batch["labels"] != IGNORE
        logits = self.model.mlm_logits(hidden[chosen]).float()  # (N_masked, vocab_size)
        targets = batch["labels"][chosen]
        return F.cross_entropy(logits, targets), logits, targets

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, _, _ = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, logits, targets = self._loss(batch)
        self.val_acc.update((logits.argmax(-1) == targets).float())
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(targets))
        self.log("val/masked_acc", self.val_acc, prog_bar=True)

    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_warmup_cosine(self.model, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_ratio,
                                   self.trainer.estimated_stepping_batches, betas=(0.9, 0.98),
                                   no_decay=lambda name, p: p.ndim <= 1 or "embed" in name)

    def export(self, directory: str | Path) -> Path:
        """Write the model and its tokenizer (`mmkit fill-mask`/`embed --model DIR` read it)."""
        return save_encoder(self.model, self.tokenizer, directory)

    def on_fit_end(self) -> None:
        if (folder := self.export_folder()) is not None:
            log.info("exported model and tokenizer to %s", self.export(folder))
