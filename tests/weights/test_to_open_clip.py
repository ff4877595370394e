"""CLIP -> open_clip (`CLIP.save_open_clip`, `weights.to_open_clip`): the folder open_clip builds with
`create_model_and_transforms("local-dir:DIR")` gives the mmkit model's image and text embeddings (≤1e-4 in fp32)
and logit scale and bias, for each activation, norm and text-pooling variant both share; its tokenizer is CLIP's
BPE at the model's context length, its eval transform the model's preprocessing; the import back
(`CLIP.from_open_clip`) is the same model; what open_clip's CLIP does not build is refused by name."""
from __future__ import annotations

import pytest
import torch

from mmkit.models import CLIP
from mmkit.models.clip import CLIPTextTower, CLIPVisionTower
from mmkit.weights.native import WeightsError

open_clip = pytest.importorskip("open_clip")


def _clip(visual: dict | None = None, text: dict | None = None, **kw) -> CLIP:
    torch.manual_seed(0)
    return CLIP(CLIPVisionTower(**{"embed_dim": 24, "image_size": 32, "patch_size": 8, "dim": 32, "depth": 2,
                                   "num_heads": 4, **(visual or {})}),
                CLIPTextTower(**{"embed_dim": 24, "max_len": 16, "dim": 32, "depth": 2, "num_heads": 4,
                                 **(text or {})}), **kw).eval()


@pytest.mark.parametrize("visual, text, kw", [
    ({}, {}, {}),
    ({"act_layer": "quick_gelu"}, {"act_layer": "quick_gelu"}, {"init_logit_scale": 3.0}),
    ({"act_layer": "gelu_tanh", "norm_eps": 1e-6}, {"pool": "last", "proj_bias": True, "causal": False},
     {"init_logit_bias": -2.0}),
], ids=["clip", "quick-gelu", "siglip-like-text"])
def test_open_clip_builds_the_same_model_from_the_folder(tmp_path, visual, text, kw):
    model = _clip(visual, text, **kw)
    model.preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear",
                        "resize_mode": "squash"}
    model.save_open_clip(tmp_path / "oc")
    theirs, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    theirs.eval()
    ids = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'oc'}")(["a red circle", "a small blue star at the top"])
    assert ids.shape == (2, 16)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode_image(images), model.encode_image(images), rtol=0, atol=1e-4)
        torch.testing.assert_close(theirs.encode_text(ids), model.encode_text(ids), rtol=0, atol=1e-4)
    assert float(theirs.logit_scale.detach()) == pytest.approx(float(model.logit_scale.detach()))
    assert (theirs.logit_bias is None) == (model.logit_bias is None)
    cfg = open_clip.get_model_preprocess_cfg(theirs)
    assert (list(cfg["mean"]), list(cfg["std"]), cfg["interpolation"], cfg["resize_mode"]) == (
        [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], "bilinear", "squash")
    back = CLIP.from_open_clip(theirs)
    assert back.config["visual"] == {**model.config["visual"], "drop_path_rate": 0.0}
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("visual, text, message", [
    ({"global_pool": "map", "proj": False, "embed_dim": 32}, {"embed_dim": 32},
     "attention pooling in the image tower"),
    ({"pre_norm": False}, {}, "no norm before the image blocks"),
    ({}, {"vocab_size": 300}, "a vocabulary of 300 tokens (open_clip tokenizes with CLIP's BPE of 49408)"),
    ({"act_layer": "quick_gelu"}, {}, "quick_gelu in both towers or in neither"),
    ({"act_layer": "silu"}, {}, "activation 'silu' is not one open_clip's CLIP builds"),
])
def test_what_open_clip_cannot_build_is_refused_before_writing(tmp_path, visual, text, message):
    with pytest.raises(WeightsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _clip(visual, text).save_open_clip(tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("preprocess, message", [
    ({"crop_pct": 0.875}, "crop_pct 0.875 has no open_clip preprocessing"),
    ({"open_clip_tokenizer": "ViT-B-16-SigLIP"}, "tokenizes as open_clip's 'ViT-B-16-SigLIP', not with CLIP's BPE"),
])
def test_a_preprocessing_or_tokenizer_open_clip_cannot_give_is_refused(tmp_path, preprocess, message):
    model = _clip()
    model.preprocess = preprocess
    with pytest.raises(WeightsError, match=message):
        model.save_open_clip(tmp_path / "out")
    assert not (tmp_path / "out").exists()
