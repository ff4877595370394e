"""Causal language modelling (GPT, Radford et al., 2018/2019): next-token cross-entropy on packed
blocks, held-out perplexity through torchmetrics, AdamW with linear warmup then cosine decay
(nanoGPT's recipe). Gradient accumulation and bf16 come from the Trainer
(`accumulate_grad_batches`, `precision`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.text import Perplexity

from mmkit.inference.text_generation import checked_decoding, save_text_generator
from mmkit.models.gpt import GPT
from mmkit.tasks.model_task import ModelTask
from mmkit.tasks.optim import adamw_warmup_cosine

log = logging.getLogger(__name__)


class LanguageModel(ModelTask, pl.LightningModule):
    """
    Args:
        model: the `GPT` to train; its `vocab_size` is replaced by the data tokenizer's at setup
            (the vocabulary is data-determined), the rest of its configuration is kept.
        lr, weight_decay, betas: AdamW settings (no decay on biases, norms and embeddings).
        warmup_ratio: fraction of all optimiser steps spent in linear warmup before cosine decay.
        export_dir: where `on_fit_end` writes the model and its tokenizer for `mmkit generate-text`.
        generation: the export's own decoding settings, as a transformers generation config gives a model's
            (`GenerationOptions` fields: temperature, top_k, top_p, beam_size, repetition_penalty, ...):
            `mmkit generate-text` and `TextGenerator.default_options` decode with them where no option is given.
            Checked here: a setting the options refuse fails before training, not at the export.
    """

    def __init__(
        self,
        model: GPT,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_ratio: float = 0.05,
        export_dir: str | None = None,
        generation: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        checked_decoding(generation or {}, "model.generation")
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.tokenizer: Any = None
        self.val_ppl, self.test_ppl = Perplexity(), Perplexity()

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        self.tokenizer = dm.tokenizer
        if self.model.vocab_size != len(self.tokenizer):
            log.info("GPT vocab_size %d -> %d (the data tokenizer's)", self.model.vocab_size, len(self.tokenizer))
            self.model = GPT(**{**self.model.config, "vocab_size": len(self.tokenizer)})
        block = dm.hparams.block_size
        if block > self.model.max_len:
            raise ValueError(f"data.block_size {block} exceeds the model's max_len {self.model.max_len}")

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, vocab_size) next-token logits."""
        return self.model(tokens)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self(batch["tokens"])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        return loss

    def _evaluate(self, batch: dict[str, Tensor], stage: str, ppl: Perplexity) -> None:
        logits = self(batch["tokens"]).float()
        loss = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten())
        ppl(logits, batch["targets"])
        B = len(logits)
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=True, batch_size=B)
        self.log(f"{stage}/ppl", ppl, prog_bar=True, batch_size=B)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_ppl)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_ppl)

    def on_validation_epoch_end(self) -> None:
        # The baseline to beat, logged beside val/ppl: an add-one unigram model of the training tokens.
        unigram = getattr(self.trainer.datamodule, "unigram_ppl", None)
        if unigram is not None:
            self.log("val/unigram_ppl", unigram)

    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_warmup_cosine(self.model, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_ratio,
                                   self.trainer.estimated_stepping_batches, betas=tuple(self.hparams.betas),
                                   no_decay=lambda name, p: p.ndim <= 1 or "embed" in name)

    def export(self, directory: str | Path) -> Path:
        """Write the model, its tokenizer and its decoding settings (`generation`; `mmkit generate-text --model DIR`
        reads it)."""
        return save_text_generator(self.model, self.tokenizer, directory, self.hparams.get("generation"))

    def on_fit_end(self) -> None:
        if (folder := self.export_folder()) is not None:
            path = self.export(folder)
            log.info("exported model and tokenizer to %s", path)
