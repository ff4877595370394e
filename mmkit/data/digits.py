"""Offline recipe dataset: scikit-learn's bundled 8x8 handwritten digits as a class folder.

The 1,797 UCI optical-recognition digits ship inside scikit-learn (``load_digits``), so
recipes and tests train a real classifier with no download. They are written once as
upscaled RGB PNGs and then read through the ordinary ImageFolderDataModule path.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from mmkit.data.cache import cache_root, publish_folder, read_marker
from mmkit.data.image_folder import ImageFolderDataModule, check_image_size, stratified_split

log = logging.getLogger(__name__)

DIGITS_VERSION = 1  # bump when the written files change, so stale caches are rebuilt
DEFAULT_ROOT = "~/.cache/mmkit/digits"
_MARKER = "mmkit-digits.json"
_SPLITS = ("train", "val", "test")
_HELD_OUT = (0.15, 0.15)  # val and test fractions of each class; train keeps ~70%
_MAX_VALUE = 16.0  # load_digits pixels are counts of set bits in 4x4 blocks: 0..16


def write_digits_folder(root: str | os.PathLike, image_size: int = 32, seed: int = 0) -> Path:
    """Write ``root/{train,val,test}/<digit>/<index>.png`` unless already there; return root.

    The split is stratified and deterministic (~70/15/15 per class). A marker file records
    version, size and seed; a matching marker makes this a no-op, a stale one a rebuild.
    The folder is built aside and renamed into place, so concurrent callers (one per DDP
    rank) never see half a dataset.

    Raises:
        FileExistsError: ``root`` holds other files and no marker, so it is not ours to replace.
    """
    root = Path(root).expanduser()
    key = {"version": DIGITS_VERSION, "image_size": image_size, "seed": seed}
    found = read_marker(root, _MARKER)
    if found == key:
        return root
    if found is None and root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty and is not an mmkit digits folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex}"
    try:
        counts = _write_splits(staging, image_size, seed)
        (staging / _MARKER).write_text(json.dumps({"key": key, "counts": counts}, indent=1))
        publish_folder(staging, root, key, _MARKER)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already unless something failed
    log.info("wrote %s digits to %s: %s", sum(counts.values()), root, counts)
    return root


def _write_splits(folder: Path, image_size: int, seed: int) -> dict[str, int]:
    digits = load_digits()
    targets = digits.target.tolist()
    counts = {}
    for split, positions in zip(_SPLITS, stratified_split(targets, _HELD_OUT, seed)):
        for i in positions:
            class_dir = folder / split / str(targets[i])
            class_dir.mkdir(parents=True, exist_ok=True)
            pixels = np.rint(digits.images[i] * (255.0 / _MAX_VALUE)).astype(np.uint8)  # (8, 8)
            image = Image.fromarray(pixels).resize((image_size, image_size), Image.Resampling.BICUBIC)
            image.convert("RGB").save(class_dir / f"{i:04d}.png")
        counts[split] = len(positions)
    return counts


def resolve_digits_root(root: str = DEFAULT_ROOT) -> Path:
    """The default root moves under ``$MMKIT_CACHE/digits`` when that variable is set."""
    return cache_root(root, DEFAULT_ROOT, "digits")


class DigitsDataModule(ImageFolderDataModule):
    """ImageFolderDataModule over the written digits folder: 10 classes, 1,797 images.

    The folder is written in ``__init__`` (about a second, once) because the class names
    must exist at construction. Prediction defaults to the test images. Arguments are
    those of ImageFolderDataModule, with defaults suited to small grey digits (no flips,
    mild crops, 0.5 normalisation, no eval crop).
    """

    def __init__(
        self,
        root: str = DEFAULT_ROOT,
        image_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 2,
        hflip: float = 0.0,
        scale: tuple[float, float] = (0.85, 1.0),
        auto_augment: str | None = None,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
        crop_pct: float = 1.0,
        interpolation: str = "bicubic",
        predict_paths: list[str] | None = None,
    ) -> None:
        # The stored images are written at image_size so the transform never upsamples twice: the size is
        # checked before they are (ImageFolderDataModule checks it again, too late for the writing).
        check_image_size(image_size, crop_pct)
        folder = write_digits_folder(resolve_digits_root(root), image_size=image_size)
        super().__init__(
            train_dir=str(folder / "train"),
            val_dir=str(folder / "val"),
            test_dir=str(folder / "test"),
            predict_paths=predict_paths if predict_paths is not None else [str(folder / "test")],
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            hflip=hflip,
            scale=scale,
            auto_augment=auto_augment,
            mean=mean,
            std=std,
            crop_pct=crop_pct,
            interpolation=interpolation,
        )
        self.root = folder
