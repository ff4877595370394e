"""Translation system for the encoder-decoders (Vaswani et al., 2017, §5): teacher-forced
cross-entropy with label smoothing 0.1, Adam (β2 0.98, ε 1e-9) under the paper's schedule
lr = factor · dim^-0.5 · min(step^-0.5, step · warmup^-1.5), greedy decoding on the shared
loop for validation BLEU and chrF (sacrebleu through torchmetrics) and exact match; the test
split is scored greedily and with beam search.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.text import CHRFScore, SacreBLEUScore

from mmkit.core import BeamSearch, Greedy, generate
from mmkit.data.number_phrases import IGNORE_INDEX
from mmkit.data.spm_tokenizer import SentencePieceTokenizer
from mmkit.inference.translator import checked_decoding
from mmkit.models.seq2seq import Seq2Seq
from mmkit.tasks.model_task import ModelTask

log = logging.getLogger(__name__)


def inverse_sqrt_schedule(dim: int, warmup: int, factor: float = 1.0):
    """The paper's learning rate as a LambdaLR multiplier of a base lr of 1 (eq. 3)."""

    def schedule(step: int) -> float:
        step = step + 1
        return factor * dim**-0.5 * min(step**-0.5, step * warmup**-1.5)

    return schedule


class TranslationTask(ModelTask, pl.LightningModule):
    """
    Args:
        model: a `Seq2Seq` (its `vocab_size` is replaced by the data tokenizer's at setup).
        lr_factor: scale of the paper's schedule (1.0 in the paper; small models take ~2-4).
        warmup_steps: linear warmup before the 1/√step decay (paper: 4000).
        label_smoothing: ε_ls of the targets (paper: 0.1).
        max_new_tokens: decoding limit for validation/test (target tokens).
        test_beam_size: beam width of the test split's second scoring (the first is greedy).
        export_dir: where `on_fit_end` writes the model + tokenizer for `mmkit translate`.
        generation: the export's own decoding settings, as a transformers generation config gives a model's
            (`TranslationOptions` fields: beam_size, length_penalty, repetition_penalty, temperature, ...):
            `mmkit translate` decodes with them where no option is given. Checked here: a setting the options
            refuse fails before training, not at the export.
    """

    def __init__(self, model: Seq2Seq, lr_factor: float = 1.0, warmup_steps: int = 4000,
                 label_smoothing: float = 0.1, max_new_tokens: int = 32, test_beam_size: int = 4,
                 export_dir: str | None = None, generation: dict[str, Any] | None = None) -> None:
        super().__init__()
        checked_decoding(generation or {}, "model.generation")
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.tokenizer: SentencePieceTokenizer | None = None
        self.metrics = torch.nn.ModuleDict({
            f"{stage}{suffix}": torch.nn.ModuleDict({"bleu": SacreBLEUScore(tokenize="13a"), "chrf": CHRFScore(),
                                                      "exact": MeanMetric()})
            for stage, suffix in (("val", ""), ("test", ""), ("test", "_beam"))})

    def setup(self, stage: str) -> None:
        self.tokenizer = self.trainer.datamodule.tokenizer
        vocab = len(self.tokenizer)
        if self.model.vocab_size != vocab:  # data-determined: rebuild the untrained model at that size
            log.info("Seq2Seq vocab_size %d -> %d (the data tokenizer's)", self.model.vocab_size, vocab)
            self.model = Seq2Seq(**{**self.model.config, "vocab_size": vocab})

    def _loss(self, batch: dict[str, Any], smoothing: float) -> Tensor:
        memory = self.model.encode(batch["src"], batch["src_mask"])
        logits = self.model(batch["tokens"], context=memory, context_mask=batch["src_mask"])
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=IGNORE_INDEX,
                               label_smoothing=smoothing)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self._loss(batch, self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["sources"]))
        return loss

    @torch.no_grad()
    def translate_batch(self, src: Tensor, src_mask: Tensor, beam_size: int = 1) -> list[str]:
        tok = self.tokenizer
        # transformers' default stopping rule; early_stopping=True ends a row at its first K
        # finished hypotheses, often short wrong ones (measured on the recipe: 92.6% vs 98.8% exact)
        strategy = BeamSearch(beam_size, 1.0, early_stopping=False) if beam_size > 1 else Greedy()
        out = generate(self.model, torch.full((len(src), 1), tok.start_id, device=src.device),
                       self.hparams.max_new_tokens, strategy, context=self.model.encode(src, src_mask),
                       context_mask=src_mask, eos_id=tok.eos_id, pad_id=tok.pad_id)
        return [tok.decode(s[1:].tolist()) for s in out.sequences]

    def _score(self, batch: dict[str, Any], key: str, beam_size: int) -> None:
        hyps, refs = self.translate_batch(batch["src"], batch["src_mask"], beam_size), batch["references"]
        m, B = self.metrics[key], len(hyps)
        m["bleu"](hyps, [[r] for r in refs])
        m["chrf"](hyps, [[r] for r in refs])
        m["exact"](torch.tensor([float(h == r) for h, r in zip(hyps, refs)]))
        stage, suffix = key.split("_") if "_" in key else (key, "")
        for name in ("bleu", "chrf", "exact"):
            self.log(f"{stage}/{name}{'_' + suffix if suffix else ''}", m[name], prog_bar=name != "chrf",
                     batch_size=B)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch, 0.0), batch_size=len(batch["sources"]))
        self._score(batch, "val", 1)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._score(batch, "test", 1)
        self._score(batch, "test_beam", self.hparams.test_beam_size)

    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.Adam(self.model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
        schedule = inverse_sqrt_schedule(self.model.dim, self.hparams.warmup_steps, self.hparams.lr_factor)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # the model's record (`ModelTask`)
        checkpoint["spm_model"] = self.tokenizer.proto  # resuming/testing must encode identically

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # the model's record against this model (`ModelTask`)
        saved = checkpoint.get("spm_model")
        if saved is not None and self.tokenizer is not None and saved != self.tokenizer.proto:
            raise ValueError("the checkpoint was trained with another SentencePiece model than the data builds now; "
                             "pass the exported spm.model as data.tokenizer")

    def export(self, directory: str | Path) -> Path:
        """The model (config.json + safetensors) and spm.model, for `mmkit translate --model DIR`."""
        directory = Path(directory).expanduser()
        tok = self.tokenizer
        self.model.save_pretrained(directory, metadata={
            "task": "translation", "tokenizer": "spm.model", "start_id": tok.start_id, "eos_id": tok.eos_id,
            "pad_id": tok.pad_id, "decoding": checked_decoding(self.hparams.get("generation") or {}, "generation")})
        tok.save(directory)
        return directory

    def on_fit_end(self) -> None:
        if (folder := self.export_folder()) is not None:
            log.info("exported model and tokenizer to %s", self.export(folder))
