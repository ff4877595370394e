"""Every CLIP inference path preprocesses an export at the size its metadata records, the image tower's size only
the default (as `Classifier` does for ViT). A CLIP recipe trained with `--data.init_args.image_size 48` on a 32-pixel
image tower (positions resampled on the fly) records 48 and was validated at 48, as `ZeroShotClassifier` and
`ZeroShotEvaluation` preprocess it; `mmkit label` took the tower's 32 and scored other pixels than they did.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmkit.data import ShapesDataModule
from mmkit.inference import ZeroShotClassifier
from mmkit.inference.clip_loader import clip_eval_transform
from mmkit.models import CLIP
from mmkit.tasks import CLIPTask

from _clip import TINY_CLIP

TOWER, DATA = 32, 48  # the image tower's configured size, and the size the run's data gave it


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """What `CLIPTask.on_fit_end` writes for a shapes run at `--data.init_args.image_size 48` on a 32-pixel tower."""
    torch.manual_seed(0)
    model = CLIP.from_config(TINY_CLIP)
    assert model.visual.config["image_size"] == TOWER
    data = ShapesDataModule(image_size=DATA, train_samples=1, val_samples=1, test_samples=1, context_length=77)
    return CLIPTask(model).export(tmp_path_factory.mktemp("clip") / "export", data.inference_metadata())


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(70, 50), (40, 90)]):  # neither square nor either model size
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_the_export_records_the_datas_size_not_the_towers(export):
    doc = CLIP.read_config(export)
    assert (doc["config"]["visual"]["image_size"], doc["metadata"]["image_size"]) == (TOWER, DATA)
    assert clip_eval_transform(str(export)).image_size == DATA
    assert ZeroShotClassifier.from_pretrained(export).transform.image_size == DATA


def test_mmkit_label_and_zero_shot_classifier_feed_the_model_the_same_pixels(export, images, tmp_path, monkeypatch):
    """Both scorers' image-tower inputs, recorded: `mmkit label` (the CLI) and `ZeroShotClassifier.from_pretrained`
    give it the same (2, 3, 48, 48) pixels of the same files, and so write the same label."""
    from mmkit.cli.label import main as label_main

    seen: list[torch.Tensor] = []
    encode = ZeroShotClassifier.encode_images
    monkeypatch.setattr(ZeroShotClassifier, "encode_images",
                        lambda self, pixels: (seen.append(pixels.clone()), encode(self, pixels))[1])
    labels = ["red circle", "blue square", "yellow star"]
    out = tmp_path / "labels.csv"
    assert label_main([str(images), "--labels", ",".join(labels), "--template", "a {}", "--model", str(export),
                       "--out", str(out), "--precision", "fp32", "--num-workers", "0", "--exact-decode",
                       "--quiet"]) == 0
    (labelled,) = seen
    seen.clear()
    paths = sorted(images.iterdir())
    classifier = ZeroShotClassifier.from_pretrained(export)
    scored = classifier.predict_images([Image.open(p) for p in paths], labels, ["a {}"])
    (api,) = seen
    assert labelled.shape == api.shape == (2, 3, DATA, DATA)
    torch.testing.assert_close(labelled, api, rtol=0, atol=0)
    with open(out, newline="") as f:
        rows = {row["path"]: row["label"] for row in csv.DictReader(f)}
    assert [rows[p.name] for p in paths] == [ranked[0][0] for ranked in scored]
