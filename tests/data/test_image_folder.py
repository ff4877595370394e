"""Tests for mmkit.data.image_folder: class discovery, skipping bad files, splits, loaders.

Uses the generated good_files / bad_files fixtures from conftest.py; images are tiny and
image_size is 16 so every loader runs in well under a second.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from pytorch_lightning.utilities.combined_loader import _shutdown_workers_and_reset_iterator

from mmkit.data import ImageFolderDataModule, SkippedSample, collate_skipping, load_image, stratified_split


def make_tree(root: Path, counts: dict[str, int]) -> Path:
    """``root/<class>/<i>.png``, each image a flat colour that encodes its class and number."""
    for c, (name, count) in enumerate(sorted(counts.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (20, 20), (40 * c, 10 * i, 0)).save(root / name / f"{i:03d}.png")
    return root


def module(**overrides) -> ImageFolderDataModule:
    args = dict(image_size=16, batch_size=4, num_workers=0, hflip=0.0, crop_pct=1.0)
    return ImageFolderDataModule(**{**args, **overrides})


def test_classes_known_at_construction_without_scanning(tmp_path):
    root = make_tree(tmp_path / "train", {"dog": 2, "cat": 3})
    (root / ".ipynb_checkpoints").mkdir()
    (root / "stray.png").write_bytes(b"")  # a file beside the class folders is not a class
    dm = module(train_dir=str(root))
    assert (dm.class_names, dm.num_classes) == (["cat", "dog"], 2)
    assert dm.samples == {} and dm.skipped == []


def test_setup_lists_unreadable_files_and_keeps_them_out(tmp_path, good_files, bad_files, caplog):
    root = tmp_path / "train"
    (root / "good").mkdir(parents=True)
    for path in [*good_files.values(), *bad_files]:
        shutil.copy(path, root / "good" / path.name)
    make_tree(root, {"another": 1})  # a second class: a class of only unreadable files is refused
    dm = module(train_dir=str(root))
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    reasons = {Path(path).name: reason for path, reason in dm.skipped}
    assert set(reasons) == {path.name for path in bad_files}
    for path, expected in bad_files.items():
        assert reasons[path.name].startswith(expected), (path.name, reasons[path.name])
    kept = {path.name for path, target in dm.samples["train"] if target == 1}
    assert kept == set(good_files)
    assert f"skipped 6 of {7 + len(good_files)} files in train_dir" in caplog.text
    batches = list(dm.train_dataloader())
    assert sum(len(targets) for _, targets, _ in batches) == len(good_files) + 1  # none skipped late
    assert all(images.shape[1:] == (3, 16, 16) for images, _, _ in batches)


def test_batches_carry_targets_and_indices(tmp_path):
    train, val = make_tree(tmp_path / "t", {"a": 3, "b": 3}), make_tree(tmp_path / "v", {"a": 2, "b": 3})
    dm = module(train_dir=str(train), val_dir=str(val))
    dm.setup("fit")
    seen = []
    for images, targets, indices in dm.val_dataloader():
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 16, 16)
        for target, index in zip(targets.tolist(), indices.tolist()):
            path, expected = dm.samples["val"][index]
            assert (target, path.parent.name) == (expected, dm.class_names[expected])
            seen.append(index)
    assert sorted(seen) == list(range(5))


def test_val_split_is_stratified_and_seeded(tmp_path):
    root = str(make_tree(tmp_path / "train", {"a": 10, "b": 20}))
    splits = []
    for seed in (0, 0, 1):
        dm = module(train_dir=root, val_split=0.2, seed=seed)
        dm.setup("fit")
        splits.append(sorted(str(p) for p, _ in dm.samples["val"]))
        assert [t for _, t in dm.samples["val"]].count(0) == 2  # 20% of each class
        assert len(dm.samples["val"]) == 6 and len(dm.samples["train"]) == 24
        assert not {p for p, _ in dm.samples["val"]} & {p for p, _ in dm.samples["train"]}
    assert splits[0] == splits[1] and splits[0] != splits[2]


@pytest.mark.parametrize("counts, val_split, detail, suggested", [
    ({"a": 4, "b": 4, "c": 4}, 0.1, "(4 per class, 12 in all); raise it to 0.25 or more, or give val_dir", 0.25),
    ({"a": 2, "b": 3}, 0.1, "(2 to 3 per class, 5 in all); raise it to 0.33 or more, or give val_dir", 0.33),
    ({"a": 1, "b": 1}, 0.5, "(1 per class, 2 in all); every class keeps its only image for training: give val_dir",
     None),
], ids=["equal-classes", "unequal-classes", "one-image-classes"])
def test_a_val_split_that_holds_out_no_image_is_refused(tmp_path, counts, val_split, detail, suggested):
    """It was an empty validation split: no val metric, no best checkpoint, and `--ckpt_path best` failing later."""
    root = str(make_tree(tmp_path / "train", counts))
    for stage in ("fit", "validate"):
        with pytest.raises(ValueError) as caught:
            module(train_dir=root, val_split=val_split).setup(stage)
        assert str(caught.value) == f"val_split {val_split} leaves no validation images {detail}"
    if suggested:  # the value the message suggests does hold images out
        dm = module(train_dir=root, val_split=suggested)
        dm.setup("fit")
        assert dm.samples["val"] and len(dm.samples["val"]) + len(dm.samples["train"]) == sum(counts.values())


def test_a_val_split_that_leaves_a_class_without_val_images_is_a_warning(tmp_path, caplog):
    root = str(make_tree(tmp_path / "train", {"a": 2, "b": 6}))
    dm = module(train_dir=root, val_split=0.2)  # a: round(0.4) = 0, b: round(1.2) = 1
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert [t for _, t in dm.samples["val"]] == [1] and len(dm.samples["train"]) == 7
    assert "val_split 0.2: no held-out images for class(es) a; the val scores cover the other classes only" \
        in caplog.text


def test_stratified_split_keeps_one_of_each_class():
    rest, held = stratified_split([0, 1, 1, 2, 2, 2], [0.9], seed=0)
    assert sorted(rest + held) == list(range(6))
    assert {0, 1, 2} <= {[0, 1, 1, 2, 2, 2][i] for i in rest}


def test_bad_configurations_fail_loudly(tmp_path):
    train = str(make_tree(tmp_path / "train", {"a": 1, "b": 1}))
    with pytest.raises(ValueError, match="val_dir or val_split"):
        module(train_dir=train, val_dir=train, val_split=0.1)
    with pytest.raises(ValueError, match="not one of"):
        module(train_dir=train, val_dir=str(make_tree(tmp_path / "val", {"zebra": 1}))).setup("validate")
    with pytest.raises(ValueError, match="test_dir"):
        module(train_dir=train).test_dataloader()
    with pytest.raises(ValueError, match="predict_paths"):
        module(train_dir=train).predict_dataloader()


def test_predict_indices_map_to_files(tmp_path, good_files, bad_files):
    loose = tmp_path / "loose.png"
    shutil.copy(good_files["rgb.png"], loose)
    paths = [str(good_files["rgb.jpg"].parent), str(loose), str(next(iter(bad_files)))]
    dm = module(predict_paths=paths)
    assert dm.num_classes == 0
    dm.setup("predict")
    assert dm.predict_files == sorted(str(p) for p in good_files.values()) + [str(loose)]
    assert [path for path, _ in dm.skipped] == [paths[2]]
    for images, targets, indices in dm.predict_dataloader():
        assert (targets == -1).all()
        for image, index in zip(images, indices.tolist()):
            expected = dm.eval_transform(load_image(dm.predict_files[index]))
            torch.testing.assert_close(image, expected)


def test_files_broken_after_setup_are_dropped_by_workers(tmp_path, corrupt_pixels_png):
    root = make_tree(tmp_path / "train", {"a": 6, "b": 6})
    dm = module(train_dir=str(root), val_dir=str(root), batch_size=3, num_workers=2)
    dm.setup("validate")
    files = [path for path, _ in dm.samples["val"]]
    files[0].write_bytes(corrupt_pixels_png)  # header fine, pixels garbled
    files[4].write_bytes(files[4].read_bytes()[:40])  # cut off
    files[5].write_bytes(b"")
    files[7].unlink()
    loader = dm.val_dataloader()
    try:
        for _ in range(2):  # a second epoch reuses the persistent workers
            indices = [i for batch in loader if batch is not None for i in batch[2].tolist()]
            assert sorted(indices) == sorted(set(range(12)) - {0, 4, 5, 7})
    finally:
        # What Lightning does at loop teardown. Left to the garbage collector, torch's
        # shutdown can race the queues' own finalizers and wait 5 s per worker.
        _shutdown_workers_and_reset_iterator(loader)


def test_skips_are_logged_once_and_empty_batches_are_none(tmp_path, caplog):
    path = tmp_path / "x.png"
    skipped = SkippedSample(str(path), "truncated or corrupt image data: test")
    good = (torch.zeros(3, 2, 2), 1, 5)
    with caplog.at_level(logging.WARNING):
        assert collate_skipping([skipped, skipped]) is None
        images, targets, indices = collate_skipping([skipped, good])
    assert caplog.text.count(f"skipping {path}: truncated") == 1
    assert images.shape == (1, 3, 2, 2) and targets.tolist() == [1] and indices.tolist() == [5]
