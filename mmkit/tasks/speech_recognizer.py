"""Speech recognition system for Whisper-style models (Radford et al., 2022): teacher-forced
cross-entropy with label smoothing, SpecAugment (Park et al., 2019) on the log-Mel input, AdamW
with linear warmup then cosine decay, and greedy decoding on the shared loop for WER/CER
(torchmetrics) on the validation and test splits.

Two starts: fine-tuning a checkpoint (`checkpoint=DIR`: a Hugging Face Whisper or mmkit
checkpoint, whose own tokenizer then encodes the data), or training an injected `Whisper` from
scratch, whose vocabulary is the data's own character/BPE tokenizer (`mmkit.data.CharTokenizer`).
"""
from __future__ import annotations

import importlib
import logging
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.text import CharErrorRate, WordErrorRate

from mmkit.audio import HOP_LENGTH, SpecAugment
from mmkit.core import Greedy, SuppressAtBegin, SuppressTokens, generate
from mmkit.data.audio_manifest import IGNORE_INDEX
from mmkit.data.char_tokenizer import CharTokenizer, normalize_text
from mmkit.inference.speech_checkpoints import load_speech_model, save_speech_checkpoint
from mmkit.models.whisper import Whisper
from mmkit.tasks.model_task import ModelTask
from mmkit.tasks.optim import adamw_warmup_cosine

log = logging.getLogger(__name__)


class SpeechRecognizer(ModelTask, pl.LightningModule):
    """
    Args:
        model: a `Whisper` to train from scratch (its `vocab_size` is replaced by the data
            tokenizer's size at setup; the rest of its configuration is kept).
        checkpoint: instead of `model`, a checkpoint directory to fine-tune (model + tokenizer).
        language: language of the transcripts, for multilingual Whisper tokenizers.
        lr, weight_decay: AdamW settings (no decay on biases, norms and embeddings).
        warmup_ratio: fraction of all optimiser steps spent in linear warmup before cosine decay.
        label_smoothing: smoothing of the one-hot targets.
        spec_augment: masking applied to training inputs (None: none).
        ctc_weight: weight of an auxiliary CTC loss on the encoder (hybrid CTC/attention training,
            Watanabe et al., 2017), which finds the audio-text alignment in far fewer steps; the
            CTC projection is the tied token embedding and <|pad|> the blank, so it adds no
            parameters and the exported model is an ordinary Whisper. Character/BPE tokenizers only.
        export_dir: where `on_fit_end` writes the checkpoint (weights + tokenizer) for inference.
    """

    rebuilt_hparams = {"checkpoint": None}  # a checkpoint rebuilds the model it trained, not the one it started from

    def __init__(
        self,
        model: Whisper | None = None,
        checkpoint: str | None = None,
        language: str | None = "en",
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.05,
        label_smoothing: float = 0.1,
        spec_augment: SpecAugment | None = None,
        ctc_weight: float = 0.0,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "spec_augment"])
        if (model is None) == (checkpoint is None):
            raise ValueError("give either model (train from scratch) or checkpoint (fine-tune), not both")
        self.tokenizer: Any = None
        if checkpoint is not None:
            model, self.tokenizer = load_speech_model(checkpoint)
            model.train()
        self.model: Whisper = model
        self.spec_augment = spec_augment
        self.val_wer, self.val_cer = WordErrorRate(), CharErrorRate()
        self.test_wer, self.test_cer = WordErrorRate(), CharErrorRate()

    # --- wiring with the data ------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if self.tokenizer is None:  # from scratch: the data's tokenizer defines the vocabulary
            self.tokenizer = dm.tokenizer
            self._fit_vocabulary(len(self.tokenizer))
        if self.hparams.ctc_weight > 0 and not isinstance(self.tokenizer, CharTokenizer):
            raise ValueError("ctc_weight needs a character/BPE tokenizer (its <|pad|> token is the CTC blank)")
        if hasattr(dm, "configure_inputs"):
            dm.configure_inputs(self.tokenizer, self.prompt, self.model.n_mels, self.n_samples,
                                max_tokens=self.model.n_text_ctx + 1)  # + 1: the last target is not an input

    def _fit_vocabulary(self, vocab_size: int) -> None:
        if self.model.vocab_size == vocab_size:
            return
        # The vocabulary is data-determined: rebuild the (untrained) model at the tokenizer's size.
        log.info("Whisper vocab_size %d -> %d (the data tokenizer's)", self.model.vocab_size, vocab_size)
        self.model = Whisper(**{**self.model.config, "vocab_size": vocab_size})

    @property
    def prompt(self) -> list[int]:
        """Decoder prompt: <|startoftranscript|> [<|lang|> <|transcribe|>] <|notimestamps|>."""
        tok = self.tokenizer
        return tok.sot_sequence(self.hparams.language if tok.is_multilingual else None, "transcribe",
                                without_timestamps=True)

    @property
    def n_samples(self) -> int:
        """Audio samples per encoder window (2 Mel frames per encoder position)."""
        return 2 * self.model.n_audio_ctx * HOP_LENGTH

    # --- steps ---------------------------------------------------------------------------------

    def forward(self, mel: Tensor, tokens: Tensor) -> Tensor:
        """(B, n_mels, frames), (B, T) -> (B, T, vocab_size) teacher-forced logits."""
        return self.model(tokens, self.model.encode(mel))

    def _loss(self, batch: dict[str, Any], mel: Tensor, smoothing: float, ctc_weight: float = 0.0) -> Tensor:
        return _mix(*self._losses(batch, mel, smoothing, ctc_weight > 0), ctc_weight)

    def _losses(self, batch: dict[str, Any], mel: Tensor, smoothing: float, ctc: bool) -> tuple[Tensor, Tensor | None]:
        """(decoder cross-entropy, encoder CTC loss or None)."""
        context = self.model.encode(mel)  # (B, n_audio_ctx, dim)
        logits = self.model(batch["tokens"], context)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=IGNORE_INDEX,
                             label_smoothing=smoothing)
        return ce, (self._ctc_loss(context, batch["targets"]) if ctc else None)

    def _ctc_loss(self, context: Tensor, targets: Tensor) -> Tensor:
        """CTC of the transcript (targets without prompt, padding and eot) given the encoder output."""
        text = (targets != IGNORE_INDEX) & (targets != self.tokenizer.eot)  # (B, T) the transcript's ids
        logp = F.linear(context, self.model.tok_embed.weight).float().log_softmax(dim=-1)  # (B, S, V)
        S = logp.shape[1]
        return F.ctc_loss(logp.transpose(0, 1), targets[text], torch.full((len(targets),), S, dtype=torch.long),
                          text.sum(dim=1), blank=self.tokenizer.pad, zero_infinity=True)

    def training_step(self, batch: dict[str, Any] | None, batch_idx: int) -> Tensor | None:
        if batch is None:  # every clip of the batch failed to load (each already warned about): skip the step
            return None
        mel = self.spec_augment(batch["mel"]) if self.spec_augment is not None else batch["mel"]
        w, B = self.hparams.ctc_weight, len(batch["texts"])
        ce, ctc = self._losses(batch, mel, self.hparams.label_smoothing, w > 0)
        loss = _mix(ce, ctc, w)
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        if ctc is not None:
            self.log_dict({"train/ce_loss": ce, "train/ctc_loss": ctc}, batch_size=B)
        return loss

    def _evaluate(self, batch: dict[str, Any], stage: str, wer: WordErrorRate, cer: CharErrorRate) -> list[str]:
        B = len(batch["texts"])
        self.log(f"{stage}/loss", self._loss(batch, batch["mel"], 0.0), prog_bar=True, sync_dist=True, batch_size=B)
        hyps = [normalize_text(h) for h in self.transcribe_mel(batch["mel"])]
        refs = [normalize_text(r) for r in batch["texts"]]
        wer(hyps, refs)
        cer(hyps, refs)
        self.log(f"{stage}/wer", wer, prog_bar=True, batch_size=B)
        self.log(f"{stage}/cer", cer, batch_size=B)
        return hyps

    def validation_step(self, batch: dict[str, Any] | None, batch_idx: int) -> None:
        if batch is not None:
            self._evaluate(batch, "val", self.val_wer, self.val_cer)

    def test_step(self, batch: dict[str, Any] | None, batch_idx: int) -> None:
        if batch is not None:
            self._evaluate(batch, "test", self.test_wer, self.test_cer)

    @torch.no_grad()
    def transcribe_mel(self, mel: Tensor, max_new_tokens: int | None = None) -> list[str]:
        """Greedy transcripts of a (B, n_mels, 2·n_audio_ctx) log-Mel batch (KV-cached decoding)."""
        tok, P = self.tokenizer, len(self.prompt)
        prompt = torch.tensor([self.prompt] * mel.shape[0], device=mel.device)
        filters = [SuppressAtBegin(tok.begin_suppress_tokens, P), SuppressTokens(tok.suppress_tokens)]
        out = generate(self.model, prompt, max_new_tokens or self.model.n_text_ctx - P, Greedy(),
                       context=self.model.encode(mel), eos_id=tok.eot, pad_id=tok.eot, logit_filters=filters)
        return [tok.decode(seq[P:].tolist()) for seq in out.sequences]

    # --- optimisation --------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        # No decay on 1-D tensors and on the token/position embeddings (the output projection is tied).
        return adamw_warmup_cosine(self.model, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_ratio,
                                   self.trainer.estimated_stepping_batches,
                                   no_decay=lambda name, p: p.ndim <= 1 or "embed" in name)

    # --- checkpoints ---------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # the model's record (`ModelTask`)
        if isinstance(self.tokenizer, CharTokenizer):  # resuming/testing must encode identically
            checkpoint["char_tokenizer"] = self.tokenizer.to_str()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # the model's record against this model (`ModelTask`)
        saved = checkpoint.get("char_tokenizer")
        if saved is not None and isinstance(self.tokenizer, CharTokenizer) and self.tokenizer.to_str() != saved:
            from tokenizers import Tokenizer

            if CharTokenizer(Tokenizer.from_str(saved)) != self.tokenizer:
                raise ValueError("the checkpoint was trained with a different tokenizer than the data builds now; "
                                 "pass the exported tokenizer.json as data.tokenizer")

    def export(self, directory: str | Path) -> Path:
        """Write the model and its tokenizer for `mmkit.inference.load_speech_model` (`mmkit transcribe
        --model DIR`, `mmkit demo speech`, `mmkit.inference.load_transcriber`)."""
        return save_speech_checkpoint(self.model, self.tokenizer, directory, {"language": self.hparams.language})

    def on_fit_end(self) -> None:
        if (folder := self.export_folder()) is not None:
            path = self.export(folder)
            log.info("exported model and tokenizer to %s", path)


def _mix(ce: Tensor, ctc: Tensor | None, ctc_weight: float) -> Tensor:
    return ce if ctc is None else (1 - ctc_weight) * ce + ctc_weight * ctc


# Moved to mmkit.inference (no Lightning); the old names work for one release.
_MOVED = {"load_speech_checkpoint": "load_speech_model", "save_speech_checkpoint": "save_speech_checkpoint",
          "load_transcriber": "load_transcriber", "transcriber_for": "transcriber_for"}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"mmkit.tasks.speech_recognizer.{name} is deprecated: use mmkit.inference.{_MOVED[name]}",
                  DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module("mmkit.inference"), _MOVED[name])
