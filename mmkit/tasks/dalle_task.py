"""Training the DALL·E-style generator (Ramesh et al., 2021) on caption ids + image codes: next-token
cross-entropy on the image codes, optionally plus the text tokens (DALL·E weights text:image 1:7),
with caption dropout to the null caption so that one model also serves the unconditional half of
classifier-free guidance. Testing generates one image per attribute combination and has the
independent `ShapesJudge` read it back: all-attribute accuracy on seen and held-out colour-shape
pairs, and a shuffled-caption control that must fall to chance.
"""
from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from mmkit.core import GenerationOptions
from mmkit.models.dalle import DALLE
from mmkit.models.vqgan import VQGAN
from mmkit.tasks.model_task import ModelTask
from mmkit.tasks.optim import adamw_warmup_cosine

log = logging.getLogger(__name__)


class DalleTask(ModelTask, pl.LightningModule):
    """Batches are dicts {"text": (B, text_len), "codes": (B, h, w)} (`ShapesCodesDataModule`).

    Args:
        model: the generator, configured from YAML by class path.
        tokenizer_dir: the frozen stage-one VQGAN export; it encodes the training images (handed to
            the data module's `encode_images`) and decodes the judged test samples.
        lr, weight_decay, warmup_ratio: AdamW with linear warmup then cosine decay.
        text_loss_weight: weight of the text-token loss relative to the image loss (0 = image only).
        null_caption_prob: probability of replacing a caption by the null caption (all pad) in training.
        test_guidance, test_top_k, test_temperature: sampling settings of the judged test generation; guidance
            and top-k (0 or None: off) also become the export's defaults. Checked here, before any training:
            the export refused a bad one only once the whole run was done.
        judge_steps: training steps of the judge's shape/size classifier (`ShapesJudge`).
        export_dir: where `on_fit_end` writes the text-to-image export (generator, tokenizer VQGAN, vocabulary).
    """

    def __init__(self, model: DALLE, tokenizer_dir: str = "runs/dalle_shapes_tokenizer/export", lr: float = 1e-3,
                 weight_decay: float = 0.05, warmup_ratio: float = 0.05, text_loss_weight: float = 0.0,
                 null_caption_prob: float = 0.1, test_guidance: float = 1.0,
                 test_top_k: int | None = 8, test_temperature: float = 1.0, judge_steps: int = 400,
                 export_dir: str | None = None) -> None:
        super().__init__()
        from mmkit.inference.text_to_image import check_sampling

        # checked now, not by the export after training (13:52 of training, then an error and no export)
        check_sampling(model.codebook_size, test_guidance, test_top_k, test_temperature, prefix="test_")
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        # Kept out of the module tree on purpose: the tokenizer is frozen (never in train mode, where
        # its quantizer would update), not in the optimiser, and not saved in the generator's checkpoints.
        self._frozen: dict[str, VQGAN] = {}
        self._test: list[tuple[int, Any]] = []

    @property
    def vqgan(self) -> VQGAN:
        """The frozen stage-one tokenizer, loaded once, on this task's device."""
        if "vqgan" not in self._frozen:
            self._frozen["vqgan"] = VQGAN.from_pretrained(self.hparams.tokenizer_dir).eval().requires_grad_(False)
        return self._frozen["vqgan"].to(self.device)

    def loss(self, text: Tensor, codes: Tensor) -> tuple[Tensor, Tensor]:
        """(total loss, image loss) of next-token prediction over [text ; codes]."""
        m = self.model
        tokens = torch.cat([text, codes.flatten(1) + m.text_vocab_size], 1)  # (B, text_len + h·w)
        logits = m(tokens[:, :-1])
        image_logits = logits[:, m.text_len - 1 :, m.text_vocab_size :]  # restricted to the codebook
        image_loss = F.cross_entropy(image_logits.reshape(-1, m.codebook_size), codes.flatten())
        loss = image_loss
        if self.hparams.text_loss_weight > 0:
            text_logits = logits[:, : m.text_len - 1, : m.text_vocab_size]
            text_loss = F.cross_entropy(text_logits.reshape(-1, m.text_vocab_size), text[:, 1:].flatten(),
                                        ignore_index=m.pad_id)
            loss = loss + self.hparams.text_loss_weight * text_loss
        return loss, image_loss

    def _check_data(self) -> None:
        dm, m = self.trainer.datamodule, self.model
        if dm is None or not hasattr(dm, "tokenizer"):
            return
        if len(dm.tokenizer) > m.text_vocab_size or dm.tokenizer.text_len != m.text_len:
            raise ValueError(f"the data's tokenizer ({len(dm.tokenizer)} words, text_len {dm.tokenizer.text_len}) "
                             f"does not fit the model (text_vocab_size {m.text_vocab_size}, text_len {m.text_len})")
        if self.vqgan.codebook_size != m.codebook_size:
            raise ValueError(f"tokenizer codebook {self.vqgan.codebook_size} != model codebook_size {m.codebook_size}")

    def setup(self, stage: str) -> None:
        self._check_data()  # the data module's own setup has run: Lightning calls it first
        dm = self.trainer.datamodule
        if stage in ("fit", "validate") and hasattr(dm, "encode_images"):
            dm.encode_images(self.vqgan.encode)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        text = batch["text"]
        drop = torch.rand(len(text), device=text.device) < self.hparams.null_caption_prob
        text = text.masked_fill(drop[:, None], self.model.pad_id)
        loss, image_loss = self.loss(text, batch["codes"])
        self.log_dict({"train/loss": loss, "train/image_loss": image_loss}, prog_bar=True, batch_size=len(text))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, image_loss = self.loss(batch["text"], batch["codes"])
        self.log("val/image_loss", image_loss, prog_bar=True, batch_size=len(batch["text"]), sync_dist=True)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        from mmkit.inference.text_to_image import sample_codes, to_pil

        hp = self.hparams
        options = GenerationOptions(temperature=hp.test_temperature, top_k=hp.test_top_k or None, seed=batch_idx)
        codes = sample_codes(self.model, batch["text"], options, hp.test_guidance)
        images = to_pil(self.vqgan.decode(codes), self.vqgan.value_range)
        self._test += list(zip(batch["index"].tolist(), images))

    def on_test_epoch_start(self) -> None:
        self._test = []

    def on_test_epoch_end(self) -> None:
        from mmkit.data.shapes_judge import judged_report

        dm = self.trainer.datamodule
        specs = [dm.test_specs[i] for i, _ in self._test]
        images = [im for _, im in self._test]
        self.log_dict({f"test/{k}": v for k, v in judged_report(images, specs, set(dm.held_out),
                                                                   self.hparams.judge_steps).items()})
        self.test_images = images

    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_warmup_cosine(self.model, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_ratio,
                                   self.trainer.estimated_stepping_batches, betas=(0.9, 0.95))

    def on_fit_end(self) -> None:
        if (folder := self.export_folder()) is not None:
            from mmkit.inference.text_to_image import TextToImage

            dm = self.trainer.datamodule
            # the judged test settings become the export's defaults (mmkit generate, the demo)
            defaults = {"guidance": self.hparams.test_guidance, "top_k": self.hparams.test_top_k or None}
            path = TextToImage(self.model, self.vqgan, dm.tokenizer, defaults).save_pretrained(folder)
            self.model.train()
            log.info("exported the text-to-image model to %s", path)
