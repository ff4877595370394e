"""ViT -> timm (`ViT.save_timm`, `weights.to_timm`): the folder timm builds with `create_model("local-dir:DIR",
pretrained=True)` gives the mmkit model's logits (≤1e-4 in fp32) for every pooling and layout timm's ViT and
mmkit's share, its pretrained_cfg resolves to the model's preprocessing and carries the class names, the import
back (`ViT.from_timm`) is the same model, and what timm cannot express is refused by name, nothing written."""
from __future__ import annotations

import pytest
import torch

from mmkit.models import ViT
from mmkit.weights.native import WeightsError

timm = pytest.importorskip("timm")

PREPROCESS = {"image_size": 32, "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.4, 0.6], "interpolation": "bilinear",
              "crop_pct": 0.9, "resize_mode": "squash"}


def _vit(**kw) -> ViT:
    torch.manual_seed(0)
    return ViT(**{"image_size": 32, "patch_size": 8, "num_classes": 3, "dim": 32, "depth": 2, "num_heads": 4,
                  **kw}).eval()


@pytest.mark.parametrize("kw", [
    {}, {"global_pool": "avg", "class_token": False}, {"global_pool": "avg", "fc_norm": False},
    {"global_pool": "map", "act_layer": "gelu_tanh"}, {"pre_norm": True, "fc_norm": True},
    {"in_chans": 1, "qkv_bias": False, "mlp_ratio": 2.0},
], ids=["token", "avg-no-class-token", "avg-norm-first", "map-gelu-tanh", "pre-norm", "one-channel-no-qkv-bias"])
def test_timm_builds_the_same_model_from_the_folder(tmp_path, kw):
    from timm.data import resolve_data_config

    model = _vit(**kw)
    model.preprocess = {**PREPROCESS, "image_size": 32}
    model.save_timm(tmp_path / "timm", ["cat", "dog", "bird"])
    theirs = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    x = torch.randn(2, kw.get("in_chans", 3), 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), model(x), rtol=0, atol=1e-4)
    config = resolve_data_config(model=theirs)
    assert config == {"input_size": (kw.get("in_chans", 3), 32, 32), "interpolation": "bilinear",
                      "mean": PREPROCESS["mean"], "std": PREPROCESS["std"], "crop_pct": 0.9, "crop_mode": "squash"}
    assert theirs.pretrained_cfg["label_names"] == ["cat", "dog", "bird"]
    back = ViT.from_timm(theirs)
    assert back.preprocess == model.preprocess
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_standard_size_keeps_its_timm_name_and_no_preprocessing_is_timms_default(tmp_path):
    import json

    model = ViT(image_size=224, patch_size=16, num_classes=2, dim=192, depth=12, num_heads=3)  # ViT-Ti/16
    model.save_timm(tmp_path / "ti")
    doc = json.loads((tmp_path / "ti" / "config.json").read_text())
    assert doc["architecture"] == "vit_tiny_patch16_224" and "label_names" not in doc["pretrained_cfg"]
    assert (doc["pretrained_cfg"]["mean"], doc["pretrained_cfg"]["crop_pct"]) == ([0.485, 0.456, 0.406], 0.875)
    _vit().save_timm(tmp_path / "small")
    assert json.loads((tmp_path / "small" / "config.json").read_text())["architecture"] == "vit_base_patch16_224"


@pytest.mark.parametrize("kw, names, message", [
    ({"norm_eps": 1e-5}, None, "timm's ViT normalises with eps 1e-06, this model with 1e-05"),
    ({"act_layer": "quick_gelu"}, None, "activation 'quick_gelu' is not one timm's ViT builds by name"),
    ({}, ["one", "two"], "2 class names for a 3-class head"),
])
def test_what_timm_cannot_express_is_refused_before_writing(tmp_path, kw, names, message):
    with pytest.raises(WeightsError, match=message):
        _vit(**kw).save_timm(tmp_path / "out", names)
    assert not (tmp_path / "out").exists()
