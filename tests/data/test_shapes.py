"""mmkit.data.shapes: the rendered image shows what its caption says (colour, place, size,
shape), samples are deterministic, held-out colour-shape pairs never reach training, and the
files written by `write_shapes_folder` load through both caption DataModules.
"""
from __future__ import annotations

import random
import re

import numpy as np
import pytest

from mmkit.data import CaptionTableDataModule, ShapesDataModule, SidecarCaptionDataModule, write_shapes_folder
from mmkit.data.shapes import COLOURS, POSITIONS, SHAPES, Shape, all_pairs, combinations, default_held_out, render


def _mask(image) -> np.ndarray:
    """Pixels clearly brighter than the dark background: the shape."""
    return np.asarray(image, dtype=np.float32).max(-1) > 90


@pytest.mark.parametrize("position", list(POSITIONS))
def test_the_shape_is_drawn_where_the_caption_says(position):
    spec = Shape("square", "blue", position, "small")
    mask = _mask(render(spec, 48, random.Random(0)))
    ys, xs = np.nonzero(mask)
    (fx, fy), phrase = POSITIONS[position]
    assert abs(xs.mean() / 48 - fx) < 0.07 and abs(ys.mean() / 48 - fy) < 0.07
    assert spec.caption() == f"a small blue square {phrase}"


@pytest.mark.parametrize("colour", list(COLOURS))
def test_the_shape_has_its_colour_and_size(colour):
    small = render(Shape("circle", colour, "centre", "small"), 48, random.Random(1))
    large = render(Shape("circle", colour, "centre", "large"), 48, random.Random(1))
    assert _mask(large).sum() > 2.5 * _mask(small).sum()
    mean = np.asarray(large, dtype=np.float32)[_mask(large)].mean(0)
    nearest = min(COLOURS, key=lambda c: np.abs(np.array(COLOURS[c]) - mean).sum())
    assert nearest == colour


def test_a_plain_background_changes_only_the_background():
    spec = Shape("star", "green", "left", "large")
    jittered, plain = render(spec, 48, random.Random(3)), render(spec, 48, random.Random(3), background=40)
    a = np.asarray(plain)
    assert (a[:4, :4] == 40).all() and (a[-4:, -4:] == 40).all()  # corners: the grey asked for
    # the same draws: same place, size, angle and colour (only antialiased edge pixels may differ)
    assert (_mask(jittered) ^ _mask(plain)).sum() <= 0.05 * _mask(plain).sum()
    with pytest.raises(ValueError, match="grey level"):
        from mmkit.data.shapes import ShapesDataset

        ShapesDataset(combinations(), 4, 32, None, "train", background=300)


def test_shapes_differ_in_outline():
    # Same colour, place, size and seed: only the outline differs, so the masks must too.
    masks = {s: _mask(render(Shape(s, "red", "centre", "large"), 48, random.Random(2))) for s in SHAPES}
    for a in SHAPES:
        for b in SHAPES:
            if a < b:
                assert (masks[a] ^ masks[b]).sum() > 40, (a, b)


def test_caption_dropout_varies_the_detail_but_never_names_another_attribute():
    spec = Shape("star", "yellow", "top", "large")
    assert spec.caption() == "a large yellow star at the top"
    draws = [spec.caption(random.Random(i), dropout=0.5) for i in range(2000)]
    sizes, places = ("", "large "), ("", " at the top")
    things = ("yellow star", "star", "yellow shape")  # colour or shape left out, never both
    assert set(draws) == {f"a {z}{t}{p}" for z in sizes for t in things for p in places}
    assert 0.4 < sum("large" in c for c in draws) / len(draws) < 0.6
    assert 0.15 < sum("yellow star" not in c for c in draws) / len(draws) < 0.35  # dropout / 2
    assert all(spec.caption(random.Random(i)) == "a large yellow star at the top" for i in range(5))


def test_held_out_pairs_never_reach_training_and_are_all_of_evaluation():
    dm = ShapesDataModule(train_samples=500, val_samples=60, test_samples=60, num_workers=0)
    held = set(default_held_out())
    assert len(held) == len(COLOURS) == 7  # one pair per colour, every shape among them
    assert {p.split()[0] for p in held} == set(COLOURS) and {p.split()[1] for p in held} == set(SHAPES)
    train = dm.datasets["train"]
    assert {c.pair for c in train.combos} == set(all_pairs()) - held
    assert len(train.combos) == (35 - 7) * 5 * 2  # every place and size of every other pair
    for split in ("val", "test"):
        assert {c.pair for c in dm.datasets[split].combos} == held
    for i in range(0, 500, 7):  # the captions agree, and no training caption names a held-out pair
        _, caption, _, target = train[i]
        spec = train.sample(i)[2]
        assert all_pairs()[target] == spec.pair and spec.pair not in held
        c, s, phrase = spec.colour, spec.shape, POSITIONS[spec.position][1]
        assert re.fullmatch(rf"a ({spec.size} )?({c} {s}|{s}|{c} shape)( {phrase})?", caption), caption
    batch = next(iter(dm.val_dataloader()))
    assert {dm.zeroshot_labels[t] for t in batch["targets"].tolist()} <= held
    assert all(dm.zeroshot_labels[t] in c for t, c in zip(batch["targets"].tolist(), batch["captions"]))
    assert dm.zeroshot_templates[0].format("red square") in [f"a {p}" for p in all_pairs()]


def test_samples_are_deterministic_and_splits_differ():
    a, b = ShapesDataModule(train_samples=50, num_workers=0), ShapesDataModule(train_samples=50, num_workers=0)
    for i in (0, 17, 49):
        x, y = a.datasets["train"][i], b.datasets["train"][i]
        assert x[1:] == y[1:] and x[0].equal(y[0])
    val, test = a.datasets["val"], a.datasets["test"]
    assert not val[0][0].equal(test[0][0])  # same combination, another draw
    c = ShapesDataModule(train_samples=50, num_workers=0, seed=1)
    assert not c.datasets["train"][0][0].equal(a.datasets["train"][0][0])


def test_custom_held_out_pairs_are_validated():
    dm = ShapesDataModule(held_out=["red circle"], train_samples=10, num_workers=0)
    assert {c.pair for c in dm.datasets["val"].combos} == {"red circle"}
    assert len(combinations(exclude={"red circle"})) == 340
    with pytest.raises(ValueError, match="unknown colour-shape pairs"):
        ShapesDataModule(held_out=["pink circle"])


def test_written_folder_loads_through_both_caption_datamodules(tmp_path):
    root = write_shapes_folder(tmp_path / "shapes", num_samples=6, split="val", image_size=24)
    sidecar = SidecarCaptionDataModule(val_dir=str(root), image_size=24, batch_size=6, num_workers=0)
    table = CaptionTableDataModule(val_file=str(root / "captions.jsonl"), image_size=24, batch_size=6, num_workers=0)
    a, b = next(iter(sidecar.val_dataloader())), next(iter(table.val_dataloader()))
    assert a["captions"] == b["captions"] and len(a["captions"]) == 6
    assert all(any(p in c for p in default_held_out()) for c in a["captions"])  # val = held-out pairs
    assert a["images"].equal(b["images"])
