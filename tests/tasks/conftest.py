"""Shared fixtures for task tests: the digits folder at 16 px and one tiny ViT trained on it
through ImageClassifier + pl.Trainer, exported by `on_fit_end` (written once per session).
"""
from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest
import torch


@contextlib.contextmanager
def one_thread():
    """Run torch ops on one thread: these models are tiny, and on a shared 2-core machine
    intra-op threads fight for the cores (10x slower measured), so one thread is fastest."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def single_thread():
    """Use with `pytestmark = pytest.mark.usefixtures("single_thread")` in a module of tiny models."""
    with one_thread():
        yield


TINY_VIT = dict(image_size=16, patch_size=4, dim=32, depth=1, num_heads=2, mlp_ratio=2.0)


def tiny_vit(num_classes: int = 10, **overrides):
    from mmkit.models import ViT

    return ViT(**{**TINY_VIT, "num_classes": num_classes, "global_pool": "avg", **overrides})


@pytest.fixture
def make_vit():
    """`make_vit(num_classes=10, **overrides)` -> a tiny ViT (16 px, 4 px patches, dim 32)."""
    return tiny_vit


@pytest.fixture(scope="session")
def digits16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmkit.data import write_digits_folder

    return write_digits_folder(tmp_path_factory.mktemp("cache") / "digits", image_size=16)


@pytest.fixture(scope="session")
def trained_export(tmp_path_factory: pytest.TempPathFactory, digits16: Path) -> Path:
    """A native checkpoint directory: 3 epochs of a 13k-parameter ViT (a few seconds on CPU)."""
    import pytorch_lightning as pl

    from mmkit.data import DigitsDataModule
    from mmkit.tasks import ImageClassifier

    # Init, shuffling (torch) and timm's crops (random); not seed_everything, which leaves
    # PL_GLOBAL_SEED set for every later test in the session.
    torch.manual_seed(0)
    random.seed(0)
    out = tmp_path_factory.mktemp("trained")
    data = DigitsDataModule(root=str(digits16), image_size=16, batch_size=16, num_workers=0)
    task = ImageClassifier(tiny_vit(), class_names=data.class_names, lr=5e-3, warmup_ratio=0.1,
                           export_dir=str(out / "export"))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=3, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(out))
    with one_thread():
        trainer.fit(task, data)
    return out / "export"


def write_unreadable(folder: Path) -> dict[Path, str]:
    """Three files with image names that cannot be classified -> the reason each must report.

    decode.png has an intact header and end chunk but garbled compressed pixels, so only
    decoding (not the header check) finds it.
    """
    from _images import corrupt_pixels_png

    folder.mkdir(parents=True, exist_ok=True)
    files = {"corrupt.png": (b"this is not a PNG\n", "not an image"), "empty.jpg": (b"", "zero-byte file"),
             "decode.png": (corrupt_pixels_png(), "truncated or corrupt image data")}
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {folder / name: reason for name, (_, reason) in files.items()}


@pytest.fixture
def unreadable():
    """`unreadable(folder)` writes corrupt.png, empty.jpg and decode.png; returns {path: reason}."""
    return write_unreadable
