"""Tests for mmkit.data.digits: the written folder matches scikit-learn's digits, and
DigitsDataModule serves it like any class folder. The folder is written once per session
(conftest.digits_root) at 16 px to keep the suite fast.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from mmkit.data import DigitsDataModule, write_digits_folder
from mmkit.data.digits import resolve_digits_root


def test_folder_is_a_stratified_split_of_all_digits(digits_root):
    digits = load_digits()
    per_split = {}
    for split in ("train", "val", "test"):
        files = sorted(digits_root.glob(f"{split}/*/*.png"))
        per_split[split] = {int(f.stem) for f in files}
        assert all(int(f.parent.name) == digits.target[int(f.stem)] for f in files)  # right label
        for digit in range(10):
            share = sum(f.parent.name == str(digit) for f in files) / (digits.target == digit).sum()
            assert share == pytest.approx({"train": 0.7, "val": 0.15, "test": 0.15}[split], abs=0.02)
    assert set().union(*per_split.values()) == set(range(1797))
    assert sum(len(indices) for indices in per_split.values()) == 1797  # disjoint


def test_written_pixels_match_the_source(digits_root):
    digits = load_digits()
    path = next(digits_root.glob("val/7/*.png"))
    image = Image.open(path)
    assert (image.mode, image.size) == ("RGB", (16, 16))
    small = np.asarray(image.convert("L").resize((8, 8), Image.Resampling.BOX), dtype=float)
    assert np.corrcoef(small.ravel(), digits.images[int(path.stem)].ravel())[0, 1] > 0.9


def test_writing_again_is_a_no_op(digits_root):
    marker = next(digits_root.glob("*.json"))
    before = marker.stat().st_mtime_ns, next(digits_root.glob("test/0/*.png")).stat().st_mtime_ns
    assert write_digits_folder(digits_root, image_size=16) == digits_root
    assert (marker.stat().st_mtime_ns, next(digits_root.glob("test/0/*.png")).stat().st_mtime_ns) == before


def test_stale_folder_is_rebuilt_and_foreign_folder_refused(tmp_path, digits_root):
    root = tmp_path / "digits"
    (root / "train" / "3").mkdir(parents=True)
    (root / "train" / "3" / "old.png").write_bytes(b"from an older version")
    marker = next(digits_root.glob("*.json")).name
    (root / marker).write_text('{"key": {"version": 0, "image_size": 12, "seed": 0}}')
    write_digits_folder(root, image_size=12)
    assert not (root / "train" / "3" / "old.png").exists()
    assert Image.open(next(root.glob("train/3/*.png"))).size == (12, 12)
    assert len(list(root.glob("*/*/*.png"))) == 1797
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]  # no staging or stale leftovers
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        write_digits_folder(tmp_path / "mine")


def test_concurrent_writers_publish_one_whole_folder(tmp_path):
    # What DDP ranks constructing DigitsDataModule at once do.
    context = multiprocessing.get_context("fork")
    with context.Pool(2) as pool:
        roots = pool.starmap(write_digits_folder, [(tmp_path / "digits", 8)] * 2)
    assert roots == [tmp_path / "digits"] * 2
    assert len(list((tmp_path / "digits").glob("*/*/*.png"))) == 1797
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]


def test_cache_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MMKIT_CACHE", str(tmp_path))
    assert resolve_digits_root() == tmp_path / "digits"
    assert resolve_digits_root(str(tmp_path / "elsewhere")) == tmp_path / "elsewhere"
    monkeypatch.delenv("MMKIT_CACHE")
    assert resolve_digits_root() == Path.home() / ".cache/mmkit/digits"


def test_datamodule_serves_ten_classes(digits_root):
    dm = DigitsDataModule(root=str(digits_root), image_size=16, batch_size=32, num_workers=0)
    assert (dm.num_classes, dm.class_names) == (10, [str(d) for d in range(10)])
    dm.setup()
    sizes = {split: len(samples) for split, samples in dm.samples.items()}
    assert sizes["train"] + sizes["val"] + sizes["test"] == 1797 and dm.skipped == []
    assert len(dm.predict_files) == sizes["test"]  # prediction defaults to the test images
    images, targets, indices = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 3, 16, 16) and images.dtype == torch.float32
    assert targets.dtype == torch.long and 0 <= targets.min() and targets.max() <= 9
    assert -1.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.2  # mean/std 0.5
    assert indices.dtype == torch.long
