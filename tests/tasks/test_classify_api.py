"""The Python inference API (`Classifier`, `write_predictions`) on a tiny ViT trained on digits:
files and folders with unreadable entries, in-memory PIL images of every colour mode (classified
exactly like the same image on disk), the attention overlay, and atomic CSV/JSON/JSONL output.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmkit.data import load_image
from mmkit.inference import Classifier, Prediction, write_predictions
from mmkit.weights.native import WeightsError

DIGITS = [str(i) for i in range(10)]
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def clf(trained_export: Path) -> Classifier:
    return Classifier.from_pretrained(trained_export)


def _one_per_class(digits16: Path, classes: str = "0123456789") -> list[Path]:
    return [sorted((digits16 / "test" / c).glob("*.png"))[0] for c in classes]


def _check_top_k(p: Prediction, k: int) -> None:
    assert p.error is None, p
    assert len(p.labels) == len(p.probs) == k and len(set(p.labels)) == k
    assert set(p.labels) <= set(DIGITS)
    assert all(0.0 <= x <= 1.0 for x in p.probs) and sum(p.probs) <= 1.0 + 1e-5
    assert p.probs == sorted(p.probs, reverse=True)


def test_export_carries_class_names_and_the_training_eval_transform(clf, trained_export):
    assert clf.class_names == DIGITS
    # The data module's eval transform travels with the checkpoint, not timm's 224 px defaults.
    meta = json.loads((trained_export / "config.json").read_text())["metadata"]
    assert meta == {"class_names": DIGITS, "image_size": 16, "crop_pct": 1.0, "mean": [0.5] * 3,
                    "std": [0.5] * 3, "interpolation": "bicubic"}
    assert clf.transform(Image.new("RGB", (40, 30))).shape == (3, 16, 16)


def test_trained_model_beats_chance(clf, digits16):
    preds = list(clf.predict_paths([digits16 / "test"], top_k=1))
    assert len(preds) == len(list((digits16 / "test").glob("*/*.png")))
    accuracy = np.mean([p.labels[0] == Path(p.path).parent.name for p in preds])
    assert accuracy > 0.25  # chance is 0.10; 269 test images put chance+4 sd near 0.17; this model gets ~0.4


def test_predict_paths_folders_files_and_unreadable(clf, digits16, tmp_path, unreadable):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    good = _one_per_class(digits16, "147")
    for i, f in enumerate(good):
        shutil.copy(f, (folder / "sub" if i else folder) / f"digit{i}.png")
    bad = unreadable(folder)
    (folder / "notes.txt").write_text("not listed: no image extension")
    (folder / ".hidden.png").write_bytes(b"skipped: hidden")
    extra, missing = _one_per_class(digits16, "9")[0], tmp_path / "missing.png"

    preds = list(clf.predict_paths([folder, extra, missing], top_k=3, batch_size=2))
    by_path = {p.path: p for p in preds}
    expected = {str(folder / "digit0.png"), str(folder / "sub/digit1.png"), str(folder / "sub/digit2.png"),
                str(extra), str(missing), *map(str, bad)}
    assert len(preds) == len(by_path) and set(by_path) == expected  # one each, nothing dropped
    for path, reason in {**bad, missing: "cannot read file"}.items():
        p = by_path[str(path)]
        assert reason in p.error and p.labels == [] and p.probs == []
    for path in expected - {str(missing), *map(str, bad)}:
        _check_top_k(by_path[path], 3)
        (labels, probs), = clf.predict_images([load_image(path)], 3)
        assert labels == by_path[path].labels  # batching does not change the result
        assert probs == pytest.approx(by_path[path].probs, abs=2e-6)


def test_predict_images_any_mode_matches_the_file(clf, tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    gray = rgb[..., 0]
    alpha = np.where(np.arange(24) < 12, 255, 0).astype(np.uint8)[None].repeat(20, 0)
    images = {
        "rgb.png": Image.fromarray(rgb),
        "l.png": Image.fromarray(gray),
        "p.png": Image.fromarray(rgb).convert("P"),
        "rgba.png": Image.fromarray(np.dstack([rgb, alpha])),  # right half transparent -> white
        "i16.png": Image.fromarray(gray.astype(np.uint16) * 257),  # 16-bit -> rescaled, not clipped
        "f.tif": Image.fromarray(gray.astype(np.float32) / 255),
        "cmyk.tif": Image.fromarray(rgb).convert("CMYK"),
    }
    for name, im in images.items():
        im.save(tmp_path / name)
    results = clf.predict_images(list(images.values()), top_k=4)  # one batch, mixed modes and sizes
    from_files = list(clf.predict_paths([tmp_path / name for name in images], top_k=4))
    for name, (labels, probs), p in zip(images, results, from_files):
        assert Image.open(tmp_path / name).mode == images[name].mode
        assert labels == p.labels, name
        assert probs == pytest.approx(p.probs, abs=1e-6), name
    # The images are chosen so that PIL's plain convert("RGB") (black under alpha, 16-bit and
    # float clipped) would be told apart: the checks above could not pass by accident.
    names = list(images)
    for name in ("rgba.png", "i16.png", "f.tif"):
        naive, = clf.predict_images([images[name].convert("RGB")], top_k=4)
        assert naive != results[names.index(name)], name


def test_attention_overlay_has_the_input_size(clf):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (23, 37, 3), dtype=np.uint8))
    overlay = clf.attention_overlay(image)
    assert (overlay.mode, overlay.size) == ("RGB", (37, 23))
    assert clf.attention_overlay(image.convert("L")).size == (37, 23)
    assert np.array_equal(np.asarray(clf.attention_overlay(image, alpha=0.0)), np.asarray(image))
    heat = np.asarray(clf.attention_overlay(image, alpha=1.0)).astype(int)  # the colour map alone
    assert np.all(heat[..., 1] == 0) and np.all(np.abs(heat[..., 0] + heat[..., 2] - 255) <= 1)
    assert heat[..., 0].max() - heat[..., 0].min() > 100  # rollout is not flat over the patches


def test_classifier_checks_its_inputs(clf, tmp_path):
    with pytest.raises(ValueError, match="3 class names for a model with 10 outputs"):
        Classifier(clf.model, ["a", "b", "c"], clf.meta)
    with pytest.raises(WeightsError, match=str(tmp_path / "nowhere")):
        Classifier.from_pretrained(tmp_path / "nowhere")


ROWS = [Prediction("a.png", ["3", "8"], [0.75, 0.125]), Prediction("b,c.png", error="zero-byte file"),
        Prediction("d.png", ["1", "7"], [0.5, 0.25])]


def test_write_predictions_csv(tmp_path):
    out = tmp_path / "sub" / "preds.csv"
    assert write_predictions(iter(ROWS), out) == {"ok": 2, "failed": 1}
    with out.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["path", "label", "prob", "top_k_labels", "top_k_probs", "error"],
                    ["a.png", "3", "0.75", "3|8", "0.750000|0.125000", ""],
                    ["b,c.png", "", "", "", "", "zero-byte file"],
                    ["d.png", "1", "0.5", "1|7", "0.500000|0.250000", ""]]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_write_predictions_json(tmp_path, suffix):
    out = tmp_path / f"preds{suffix}"
    write_predictions(ROWS, out)
    text = out.read_text()
    docs = json.loads(text) if suffix == ".json" else [json.loads(line) for line in text.splitlines()]
    assert docs == [r.__dict__ for r in ROWS]
    empty = tmp_path / f"empty{suffix}"
    assert write_predictions([], empty) == {"ok": 0, "failed": 0}
    assert empty.read_text() == ("[\n]\n" if suffix == ".json" else "")  # still valid JSON: []


def test_write_predictions_is_atomic(tmp_path):
    out = tmp_path / "preds.json"
    out.write_text("previous run\n")

    def failing():
        yield ROWS[0]
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_predictions(failing(), out)
    assert out.read_text() == "previous run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.json"]  # no temp file left
    with pytest.raises(ValueError, match="unsupported output"):
        write_predictions(ROWS, tmp_path / "preds.txt")
