"""DataModules for the DALL·E-style shapes recipe, over `mmkit.data.shapes` (rendered on the fly,
no download; the colour-shape pairs of `default_held_out()` never appear in training):

- `ShapesImagesDataModule`: images in [0, 1] for training the VQGAN tokenizer;
- `ShapesCodesDataModule`: (caption ids, image codes) pairs for training the generator. Images are
  encoded once, by the frozen tokenizer the generator's task hands in (`encode_images`): the
  tokenizer is fixed in stage two, so encoding every epoch would recompute the same codes, and data/
  stays below models/ (it never loads a VQGAN itself).
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mmkit.data.dalle_text import WordTokenizer
from mmkit.data.sampling import order
from mmkit.data.shapes import ShapesDataset, Shape, all_pairs, combinations, default_held_out

log = logging.getLogger(__name__)


def to_unit_tensor(image: Image.Image) -> Tensor:
    """RGB PIL image → (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def full_caption(spec: Shape) -> str:
    """ "a small red circle on the left": every attribute named (what the judge checks)."""
    return spec.caption()


def caption_vocabulary() -> list[str]:
    """Every word a shapes caption can use (dropout variants included: "shape")."""
    words = {w for spec in combinations() for w in spec.caption().split()}
    return sorted(words | {"shape"})


def _held_out(held_out: list[str] | None) -> list[str]:
    pairs = list(default_held_out() if held_out is None else held_out)
    unknown = set(pairs) - set(all_pairs())
    if unknown:
        raise ValueError(f"unknown colour-shape pairs {sorted(unknown)}; pairs look like 'red circle'")
    return pairs


class _Images(Dataset):
    """Rendered images as (3, S, S) tensors in [0, 1]; with `indexed`, (image, index) pairs."""

    def __init__(self, shapes: ShapesDataset, indexed: bool = False) -> None:
        self.shapes, self.indexed = shapes, indexed

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, i: int) -> Tensor | tuple[Tensor, int]:
        image = to_unit_tensor(self.shapes.sample(i)[0])
        return (image, i) if self.indexed else image


class ShapesImagesDataModule(pl.LightningDataModule):
    """Rendered shapes (B, 3, S, S) in [0, 1] for the tokenizer; train on the seen pairs, validate
    on fresh draws of all pairs. The test split is the judge's: one draw per attribute combination
    (`test_specs`, seen and held-out pairs), batches of (images, indices into `test_specs`).

    Args:
        image_size: side in pixels.
        train_samples, val_samples: samples per split.
        held_out: colour-shape pairs kept out of training (None = `default_held_out()`).
        batch_size, num_workers: DataLoader settings.
        seed: rendering seed.
        background: a plain grey level (0..255) behind every shape; None = the renderer's random
            tinted dark grey (`mmkit.data.shapes.render`).
    """

    def __init__(self, image_size: int = 32, train_samples: int = 16_000, val_samples: int = 512,
                 held_out: list[str] | None = None, batch_size: int = 32, num_workers: int = 0, seed: int = 0,
                 background: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.held_out = _held_out(held_out)
        ident = lambda image: image  # noqa: E731 - rendering only; tensors come from _Images
        self.datasets = {
            "train": _Images(ShapesDataset(combinations(exclude=set(self.held_out)), train_samples, image_size, ident,
                                           "train", seed, background=background)),
            "val": _Images(ShapesDataset(combinations(), val_samples, image_size, ident, "val", seed,
                                         background=background)),
        }
        self.test_specs = combinations()
        self.datasets["test"] = _Images(ShapesDataset(self.test_specs, len(self.test_specs), image_size, ident, "test",
                                                      seed, background=background), indexed=True)

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.hparams.batch_size,
                          **order(self.datasets[split], split == "train"), drop_last=split == "train",
                          num_workers=self.hparams.num_workers,
                          persistent_workers=self.hparams.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class ShapesCodesDataModule(pl.LightningDataModule):
    """Caption ids and VQGAN codes of rendered shapes for the generator.

    Batches are dicts {"text": (B, text_len) int64, "codes": (B, h, w) int64}. The train and val
    splits need codes: the generator's task calls `encode_images` with its frozen tokenizer's
    `encode` after set-up. The test split is the judge's: one full caption per attribute
    combination, seen and held-out pairs alike, each flagged in `test_specs`.

    Args:
        image_size: side in pixels (the tokenizer's).
        train_samples, val_samples: samples per split.
        held_out: colour-shape pairs kept out of training (None = `default_held_out()`).
        caption_dropout: `Shape.caption` dropout of size/place (colour or shape at half of it).
        text_len: caption ids per sample.
        batch_size: DataLoader batch size.
        seed: rendering seed.
        background: a plain grey level behind every shape (None = random tinted dark grey); use the
            tokenizer's.
    """

    def __init__(self, image_size: int = 32, train_samples: int = 20_000, val_samples: int = 512,
                 held_out: list[str] | None = None, caption_dropout: float = 0.2, text_len: int = 8,
                 batch_size: int = 64, seed: int = 0, background: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.held_out = _held_out(held_out)
        self.tokenizer = WordTokenizer(caption_vocabulary(), text_len)
        self.datasets: dict[str, Dataset] = {}
        self.test_specs = combinations()

    @torch.no_grad()
    def _encode(self, shapes: ShapesDataset, encode: Callable[[Tensor], Tensor]) -> TensorDataset:
        texts, codes, batch = [], [], 256
        for start in range(0, len(shapes), batch):
            items = [shapes.sample(i) for i in range(start, min(start + batch, len(shapes)))]
            codes.append(encode(torch.stack([to_unit_tensor(im) for im, _, _ in items])).cpu())
            texts.append(self.tokenizer([caption for _, caption, _ in items]))
        return TensorDataset(torch.cat(texts), torch.cat(codes))

    def encode_images(self, encode: Callable[[Tensor], Tensor]) -> None:
        """Render the train and val splits and keep their codes: `encode` maps (B, 3, S, S) images in
        [0, 1] to (B, h, w) codes (the frozen tokenizer's `VQGAN.encode`). Once; later calls are no-ops."""
        if "train" in self.datasets:
            return
        hp, ident = self.hparams, (lambda image: image)
        train = combinations(exclude=set(self.held_out))
        log.info("encoding %d + %d rendered shapes with the tokenizer", hp.train_samples, hp.val_samples)
        self.datasets["train"] = self._encode(ShapesDataset(train, hp.train_samples, hp.image_size, ident, "train",
                                                            hp.seed, hp.caption_dropout, hp.background), encode)
        self.datasets["val"] = self._encode(ShapesDataset(train, hp.val_samples, hp.image_size, ident, "val",
                                                          hp.seed, background=hp.background), encode)

    def setup(self, stage: str | None = None) -> None:
        # The judge's split: one full caption per attribute combination (no encoding needed).
        captions = [full_caption(s) for s in self.test_specs]
        self.datasets["test"] = TensorDataset(self.tokenizer(captions), torch.arange(len(captions)))

    def _loader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"the {split} split has no codes yet: call encode_images(vqgan.encode) first "
                               "(DalleTask does this at set-up)")
        collate = (lambda rows: {"text": torch.stack([r[0] for r in rows]), "codes": torch.stack([r[1] for r in rows])}) \
            if split != "test" else (lambda rows: {"text": torch.stack([r[0] for r in rows]),
                                                   "index": torch.stack([r[1] for r in rows])})
        return DataLoader(self.datasets[split], batch_size=self.hparams.batch_size,
                          **order(self.datasets[split], split == "train"), drop_last=split == "train",
                          collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
