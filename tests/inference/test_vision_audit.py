"""The image APIs against their references: a `ViT.from_timm` export classifies timm's model inputs
(timm's pretrained_cfg: mean/std, crop_pct, crop mode), `Classifier.predict_paths` batches the uint8 crops
rather than the decoded files, and `ZeroShotClassifier` refuses the label names `mmkit label` refuses.
All models are tiny and random-init; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from mmkit.cli import label as label_cli
from mmkit.data.images import load_image
from mmkit.data.transforms import EvalTransform
from mmkit.inference import zero_shot as Z
from mmkit.inference.classifier import Classifier, top_k_predictions
from mmkit.models.clip import CLIP
from mmkit.models.vit import ViT
from mmkit.weights import WeightsError

from _clip import WORD_CLIP
from _clip import word_tokens as _tokens

AUGREG = "vit_tiny_patch16_224.augreg_in21k"  # pretrained_cfg: mean/std 0.5, crop_pct 0.9, bicubic, center


def _timm(overlay: dict | None = None, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    kw = {"depth": 1, "embed_dim": 48, "num_heads": 2, "num_classes": 5, **kw}
    if overlay:
        kw["pretrained_cfg_overlay"] = overlay
    return timm.create_model(AUGREG, pretrained=False, **kw).eval()


def _photo(size: tuple[int, int] = (400, 300), seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# ---- 1. from_timm keeps timm's preprocessing

@pytest.mark.parametrize("overlay", [None, {"crop_mode": "squash", "crop_pct": 0.95, "interpolation": "bilinear"}],
                         ids=["augreg-center", "squash-bilinear"])
def test_classifier_of_a_from_timm_export_gets_timms_model_inputs(overlay, tmp_path):
    m = _timm(overlay)
    cfg = resolve_data_config(model=m)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["crop_pct"] != 0.875  # not timm's ImageNet defaults
    img = _photo()
    ref = create_transform(**cfg)(img)  # timm's own eval transform
    ViT.from_timm(m).save_pretrained(tmp_path / "export")
    clf = Classifier.from_pretrained(tmp_path / "export")
    ours = clf.transform(img)
    assert ours.shape == ref.shape and float((ours - ref).abs().max()) <= 1e-6
    (labels, probs), = clf.predict_images([img], top_k=5)
    with torch.no_grad():
        expected = m(ref[None]).softmax(-1)[0]
    assert [probs[labels.index(str(i))] for i in range(5)] == pytest.approx(expected.tolist(), abs=1e-5)


def test_the_export_metadata_holds_timms_preprocessing_beside_the_callers(tmp_path):
    vit = ViT.from_timm(_timm())
    assert vit.preprocess == {"image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
                              "crop_pct": 0.9, "resize_mode": "shortest"}
    vit.save_pretrained(tmp_path / "a", metadata={"class_names": list("abcde")})  # names only: kept beside them
    meta = json.loads((tmp_path / "a" / "config.json").read_text())["metadata"]
    assert meta == {**vit.preprocess, "class_names": list("abcde")}
    vit.save_pretrained(tmp_path / "b", metadata={"crop_pct": 1.0})  # the caller's keys win
    assert json.loads((tmp_path / "b" / "config.json").read_text())["metadata"]["crop_pct"] == 1.0
    assert ViT.from_pretrained(tmp_path / "a").preprocess == vit.preprocess  # and come back on load
    assert ViT.from_pretrained(tmp_path / "a", image_size=32).preprocess == {**vit.preprocess, "image_size": 32}
    assert Classifier(vit, list("abcde"), {}).transform.mean == (0.5, 0.5, 0.5)  # an in-memory model too


def test_a_model_built_at_another_size_keeps_its_own_size():
    # timm keeps the tag's input_size (224) when img_size= builds the model at 32: its transform would
    # feed a 224-px input the model refuses, so the model's own size is recorded
    vit = ViT.from_timm(_timm(img_size=32))
    assert resolve_data_config(model=_timm(img_size=32))["input_size"] == (3, 224, 224)
    assert vit.preprocess["image_size"] == 32 and vit.preprocess["mean"] == [0.5] * 3


def test_border_crop_mode_is_refused_by_name():
    with pytest.raises(WeightsError, match=r"crop_mode='border', outside mmkit's eval transform"):
        ViT.from_timm(_timm({"crop_mode": "border"}))


# ---- 2. predict_paths batches crops, not decoded files

def test_predict_paths_holds_uint8_crops_and_scores_as_before(tmp_path, monkeypatch):
    torch.manual_seed(0)
    clf = Classifier(ViT(image_size=32, patch_size=8, num_classes=3, dim=32, depth=1, num_heads=2), list("abc"),
                     {"image_size": 32})
    paths = []
    for i, size in enumerate([(2400, 1800), (50, 36), (36, 50)]):  # a large photo among small ones
        paths.append(tmp_path / f"{i}.png")
        _photo(size, seed=i).save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    paths.insert(1, tmp_path / "bad.png")
    held = []
    flush = Classifier._flush

    def spy(self, batch, k):
        held.extend(item for _, item in batch)
        return flush(self, batch, k)

    monkeypatch.setattr(Classifier, "_flush", spy)
    got = list(clf.predict_paths(paths, top_k=3, batch_size=4))
    crops = [h for h in held if not isinstance(h, Exception)]
    assert len(crops) == 3 and all(isinstance(c, torch.Tensor) and c.dtype == torch.uint8
                                   and c.shape == (3, 32, 32) for c in crops)  # 3 KB each, not 13 MB
    assert got[1].error and not got[1].labels
    good = [p for p in paths if p.name != "bad.png"]
    with torch.no_grad():  # the reference: the whole decoded file through the transform, as before
        logits = clf.model(torch.stack([clf.transform(load_image(p)) for p in good]))
    expected = top_k_predictions(logits, clf.class_names, 3)
    assert [(p.labels, p.probs) for p in got if not p.error] == expected
    assert [p.path for p in got] == [str(p) for p in paths]


# ---- 5. the API refuses the label names mmkit label refuses

@pytest.fixture(scope="module")
def scorer() -> Z.ZeroShotClassifier:
    torch.manual_seed(0)
    return Z.ZeroShotClassifier(CLIP.from_config(WORD_CLIP), _tokens, EvalTransform(image_size=32))


ONE = "one label ('cat') always scores 1.0: give at least two"
CASE = "labels 'cat' and 'Cat' differ only in case: give one"


def _cli_refusal(names: list[str]) -> str:
    args = argparse.Namespace(other_label="other", threshold=None, multi_label=False, top_k=1)
    with pytest.raises(ValueError) as refused:
        label_cli._check_names(args, names)
    return str(refused.value)


@pytest.mark.parametrize(("labels", "message"), [(["cat"], ONE), (["cat", " cat "], ONE),
                                                 (["cat", "Cat "], CASE), (["cat", "dog", "Cat"], CASE)])
def test_api_refuses_the_labels_the_cli_refuses_in_its_words(scorer, labels, message):
    assert _cli_refusal(list(dict.fromkeys(s.strip() for s in labels))).startswith(message)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        scorer.predict_images([_photo((40, 30))], labels)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Z.zero_shot_scores(scorer.model, _tokens, [_photo((40, 30))], labels, transform=scorer.transform)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        scorer.set_labels(labels)


def test_set_labels_takes_one_label_scored_on_its_own(scorer):
    with pytest.raises(ValueError, match=r"^one label \('cat'\) always scores 1.0: .* multi_label=True"):
        scorer.set_labels({"cat": ["a cat"]})
    scorer.set_labels(["cat"], multi_label=True)
    assert scorer.names == ["cat"]
    with pytest.raises(ValueError, match="differ only in case"):
        scorer.set_labels({"cat": ["a cat"]}, {"Cat": torch.nn.functional.normalize(torch.ones(16), dim=0)})
