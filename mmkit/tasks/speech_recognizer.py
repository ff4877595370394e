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
from mmkit.tasks.model_task import MODEL_KEY, ModelTask
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
        # where the tokenizer comes from: "checkpoint" (`checkpoint`'s), else set at setup from the data's
        # `tokenizer_origin`: "given" (its tokenizer option), "built" (from its train_manifest) or None (neither)
        self._tokenizer_origin: str | None = None
        if checkpoint is not None:
            self._tokenizer_origin = "checkpoint"
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
            self._tokenizer_origin = getattr(dm, "tokenizer_origin", "given")
            if self._tokenizer_origin is None:  # the data has none: the checkpoint's (`on_load_checkpoint`), if any
                return
            self.tokenizer = dm.tokenizer
            self._fit_vocabulary(len(self.tokenizer))
        self._configure_data(dm)

    def _configure_data(self, dm: Any) -> None:
        if self.hparams.ctc_weight > 0 and not isinstance(self.tokenizer, CharTokenizer):
            raise ValueError("ctc_weight needs a character/BPE tokenizer (its <|pad|> token is the CTC blank)")
        if hasattr(dm, "configure_inputs"):
            dm.configure_inputs(self.tokenizer, self.prompt, self.model.n_mels, self.n_samples,
                                max_tokens=self.model.n_text_ctx + 1)  # + 1: the last target is not an input

    def _fit_vocabulary(self, vocab_size: int, whose: str = "the data tokenizer's") -> None:
        if self.model.vocab_size == vocab_size:
            return
        # The vocabulary is data-determined: rebuild the (untrained) model at the tokenizer's size.
        log.info("Whisper vocab_size %d -> %d (%s)", self.model.vocab_size, vocab_size, whose)
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
        """Resuming or testing a model trained from scratch encodes with the tokenizer it was trained with, which
        its checkpoint records: used where the data gives none or builds its own from a train_manifest (whose
        alphabet may differ), refused in one line naming the option where the data's `tokenizer` is another."""
        saved = checkpoint.get("char_tokenizer")
        if saved is not None:
            self._use_saved_tokenizer(saved)
        else:
            self._check_data_vocabulary(checkpoint)
        super().on_load_checkpoint(checkpoint)  # the model's record against this model (`ModelTask`)

    def _use_saved_tokenizer(self, saved: str) -> None:
        if isinstance(self.tokenizer, CharTokenizer) and self.tokenizer.to_str() == saved:
            return
        from tokenizers import Tokenizer

        theirs = CharTokenizer(Tokenizer.from_str(saved))
        if theirs == self.tokenizer:
            return
        if self.tokenizer is not None and self._tokenizer_origin != "built":
            mine = len(self.tokenizer)
            size = f"{len(theirs)} tokens" + (f", the data's {mine}" if len(theirs) != mine else ", another alphabet")
            fix = {"given": "give that run's (its export_dir's tokenizer.json), or leave the option out to use the "
                            "checkpoint's",
                   "checkpoint": "give the --model.init_args.checkpoint it was fine-tuned from, or another checkpoint"
                   }.get(self._tokenizer_origin, "give that run's as --data.init_args.tokenizer")
            raise ValueError(f"the checkpoint was trained with a different tokenizer than {self._tokenizer_option()} "
                             f"({size}): {fix}")
        trainer = getattr(self, "_trainer", None)
        if len(theirs) != self.model.vocab_size and getattr(trainer, "strategy", None) is not None and \
                trainer.strategy.restore_checkpoint_after_setup:  # the model is wrapped already: too late to resize
            raise ValueError(f"the checkpoint was trained with a different tokenizer than {self._tokenizer_option()} "
                             f"({len(theirs)} tokens): give that run's (its export_dir's tokenizer.json) as "
                             "--data.init_args.tokenizer")
        if self.tokenizer is not None:
            log.info("the checkpoint's tokenizer (%d tokens) encodes the data, not the one built from train_manifest "
                     "(%d tokens)", len(theirs), len(self.tokenizer))
        self.tokenizer = theirs
        self._fit_vocabulary(len(theirs), "the checkpoint's tokenizer's")
        dm = getattr(getattr(self, "_trainer", None), "datamodule", None)
        if dm is not None:
            self._configure_data(dm)

    def _check_data_vocabulary(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint without the tokenizer's record (a fine-tune of a Whisper checkpoint, or saved before the
        record): the data's tokenizer must be the size its model was trained with."""
        dm = getattr(getattr(self, "_trainer", None), "datamodule", None)
        if dm is None or self._tokenizer_origin == "checkpoint":
            return
        record = checkpoint.get(MODEL_KEY)
        theirs = record.get("config", {}).get("vocab_size") if isinstance(record, dict) else None
        if self.tokenizer is None:
            raise ValueError("the checkpoint records no tokenizer and the data gives none: give the one it was "
                             "trained with as --data.init_args.tokenizer (its run's export_dir/tokenizer.json)")
        if isinstance(theirs, int) and theirs != len(self.tokenizer):
            raise ValueError(f"{self._tokenizer_option()} has {len(self.tokenizer)} tokens, the checkpoint's model "
                             f"{theirs}: give the tokenizer it was trained with as --data.init_args.tokenizer (its "
                             "run's export_dir/tokenizer.json)")

    def _tokenizer_option(self) -> str:
        """Where this run's tokenizer comes from, in messages: the option that gave it, where one did."""
        dm = getattr(getattr(self, "_trainer", None), "datamodule", None)
        source = getattr(dm, "tokenizer_source", None)
        if self._tokenizer_origin == "given" and source:
            return f"--data.init_args.tokenizer {source}"
        if self._tokenizer_origin == "built":
            return "the tokenizer built from train_manifest"
        if self._tokenizer_origin == "checkpoint":
            return f"--model.init_args.checkpoint {self.hparams.checkpoint}'s"
        return "the data's tokenizer"

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
