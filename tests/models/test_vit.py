"""ViT contract tests: shapes, gradients, named sizes, input-size handling (on-the-fly position
resampling checked against timm's dynamic_img_size path).
"""
from __future__ import annotations

import json
import re

import pytest
import timm
import torch

from mmkit.models import ViT
from mmkit.models.sizes import VIT_SIZES, vit_config
from mmkit.weights.from_timm import VIT_KEYS
from mmkit.weights.keymap import remap

TINY = dict(image_size=32, patch_size=8, dim=48, depth=2, num_heads=3, num_classes=5)
VARIANTS = {
    "token": {},
    "avg-cls": dict(global_pool="avg"),
    "avg-no-cls": dict(class_token=False, global_pool="avg"),
    "avg-no-fcnorm": dict(global_pool="avg", fc_norm=False),
    "features": dict(num_classes=0),
}


def _images(size: tuple[int, int] = (32, 32), batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_shapes(variant):
    kw = {**TINY, **VARIANTS[variant]}
    model = ViT(**kw).eval()
    x = _images()
    tokens = model.forward_features(x)
    prefix = 1 if kw.get("class_token", True) else 0
    assert tokens.shape == (2, prefix + 16, 48)
    assert model.pool(tokens).shape == (2, 48)
    assert model(x).shape == ((2, 5) if kw["num_classes"] else (2, 48))
    json.dumps(model.config)  # constructor arguments are the checkpoint config: must be JSON
    assert model.config == {**_defaults(), **kw}


def _defaults() -> dict:
    import inspect

    sig = inspect.signature(ViT.__init__)
    return {k: p.default for k, p in sig.parameters.items() if k != "self"}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_backward_reaches_every_parameter(variant):
    torch.manual_seed(0)
    model = ViT(**{**TINY, **VARIANTS[variant]}).train()
    out = model(_images())
    loss = torch.nn.functional.cross_entropy(out, torch.tensor([1, 3])) if out.shape[1] == 5 else out.square().mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_no_nan_on_extreme_inputs():
    model = ViT(**TINY).eval()
    with torch.no_grad():
        for x in (_images() * 1e3, torch.zeros(2, 3, 32, 32), torch.full((2, 3, 32, 32), -1e4)):
            assert torch.isfinite(model(x)).all()


def test_drop_path_is_stochastic_in_train_and_deterministic_in_eval():
    model = ViT(**{**TINY, "drop_path_rate": 0.5, "depth": 4})
    x = _images(batch=8)
    torch.manual_seed(0)
    a, b = model.train()(x), model(x)
    assert not torch.allclose(a, b)
    model.eval()
    assert torch.equal(model(x), model(x))


def test_patch_size_divisibility_errors():
    with pytest.raises(ValueError, match=re.escape("image size 30x30 is not divisible by patch size 8")):
        ViT(**{**TINY, "image_size": 30})
    model = ViT(**TINY)
    with pytest.raises(ValueError, match=re.escape("image size 33x32 is not divisible by patch size 8")):
        model(torch.zeros(1, 3, 33, 32))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, C, H, W\), got \(3, 32, 32\)"):
        model(torch.zeros(3, 32, 32))


def test_invalid_pooling_configs():
    with pytest.raises(ValueError, match="global_pool='token' needs class_token=True"):
        ViT(**TINY, class_token=False)
    with pytest.raises(ValueError, match="global_pool must be 'token', 'avg' or 'map', got 'max'"):
        ViT(**TINY, global_pool="max")
    with pytest.raises(ValueError, match="dim 48 is not divisible by num_heads 5"):
        ViT(**{**TINY, "num_heads": 5})


# ---------------------------------------------------------------- named sizes

# Independent of sizes.py: (dim, depth, num_heads) from the ViT paper (Table 1) and DeiT.
EXPECTED_WIDTHS = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}


@pytest.mark.parametrize("name", sorted(VIT_SIZES))
def test_every_named_size_builds(name):
    family, patch, size = re.fullmatch(r"vit_(\w+)_patch(\d+)_(\d+)", name).groups()
    dim, depth, heads = EXPECTED_WIDTHS[family]
    assert vit_config(name) == dict(dim=dim, depth=depth, num_heads=heads, patch_size=int(patch), image_size=int(size))
    with torch.device("meta"):  # no memory for the large ones
        model = ViT.from_name(name, num_classes=1000)
        ref = timm.create_model(name, pretrained=False, num_classes=1000) if timm.is_model(name) else None
    assert model.pos_embed.shape == (1, 1 + (int(size) // int(patch)) ** 2, dim)
    assert len(model.encoder.blocks) == depth
    if ref is not None:  # same parameter layout as timm's model of that name
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in remap(ref.state_dict(), VIT_KEYS, name).items()}
        assert ours == theirs


def test_from_name_overrides_and_typos():
    model = ViT.from_name("vit_tiny_patch16_224", depth=1, num_classes=3, image_size=64)
    assert (model.config["dim"], model.config["depth"], model.config["image_size"]) == (192, 1, 64)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match="unknown ViT size 'vit_tiny_patch16'; known sizes: vit_base_patch16_224"):
        ViT.from_name("vit_tiny_patch16")


# ---------------------------------------------------------------- other input sizes


@pytest.mark.parametrize("size", [(160, 160), (384, 384), (224, 160)])
@pytest.mark.parametrize("pool", ["token", "avg-no-cls"])
def test_other_input_size_matches_timm_dynamic_img_size(size, pool):
    kw = dict(depth=2) if pool == "token" else dict(depth=2, class_token=False, global_pool="avg")
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw).eval()
    dynamic = timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True, **kw).eval()
    dynamic.load_state_dict(ref.state_dict())
    ours = ViT.from_timm(ref).eval()
    x = _images(size)
    with torch.no_grad():
        out = ours(x)
        torch.testing.assert_close(out, dynamic(x), atol=1e-4, rtol=0)
    assert ours.pos_embed.shape == (1, ref.pos_embed.shape[1], 192)  # resampled per call, not stored


def test_class_token_pooling_computes_the_last_block_for_the_class_token_only(monkeypatch):
    torch.manual_seed(0)
    model = ViT(image_size=32, patch_size=8, dim=32, depth=2, num_heads=4, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    seen = []
    last_mlp = model.encoder.blocks[-1].mlp
    monkeypatch.setattr(last_mlp, "forward", lambda h, f=last_mlp.forward: seen.append(h.shape) or f(h))
    with torch.no_grad():
        logits = model(x)
        full = model.head(model.pool(model.forward_features(x)))  # every token through every block
    assert seen[0] == (2, 1, 32) and seen[1] == (2, 17, 32)
    torch.testing.assert_close(logits, full, rtol=1e-6, atol=1e-6)


# timm's model API on the mmkit ViT: what fine-tuning and feature-extraction code written for timm calls.

@pytest.mark.parametrize("pool", [{}, dict(global_pool="avg", class_token=False), dict(global_pool="map")],
                         ids=["token", "avg", "map"])
def test_timm_model_api_matches_timms_vision_transformer(pool):
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224.augreg_in21k", pretrained=False, depth=1, img_size=32,
                            num_classes=5, **pool).eval()
    ours = ViT.from_timm(ref).eval()
    assert (ours.num_features, ours.embed_dim) == (ref.num_features, ref.embed_dim) == (192, 192)
    assert ours.get_classifier() is ours.head and ours.head.weight.shape == ref.get_classifier().weight.shape
    x = _images()
    with torch.no_grad():
        tokens, ref_tokens = ours.forward_features(x), ref.forward_features(x)
        for pre_logits in (False, True):
            torch.testing.assert_close(ours.forward_head(tokens, pre_logits=pre_logits),
                                       ref.forward_head(ref_tokens, pre_logits=pre_logits), atol=1e-4, rtol=0)
    # timm's data config reads `pretrained_cfg` (default_cfg: its older name): the source's, at the model's size
    want = {**timm.data.resolve_data_config(model=ref), "input_size": (3, 32, 32)}
    assert timm.data.resolve_data_config(model=ours) == want and ours.default_cfg == ours.pretrained_cfg
    assert ours.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)


def test_pretrained_cfg_of_a_native_vit_is_timms_imagenet_default():
    cfg = timm.data.resolve_data_config(model=ViT(**TINY))
    assert cfg == {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": timm.data.IMAGENET_DEFAULT_MEAN,
                   "std": timm.data.IMAGENET_DEFAULT_STD, "crop_pct": 0.875, "crop_mode": "center"}


def test_reset_classifier_matches_timm_and_round_trips(tmp_path):
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32, num_classes=5).eval()
    ours = ViT.from_timm(ref).eval()
    x = _images()
    ref.reset_classifier(7)
    ours.reset_classifier(7)
    assert ours(x).shape == ref(x).shape == (2, 7) and ours.num_classes == ours.config["num_classes"] == 7
    assert ours.head.weight.shape == ref.head.weight.shape and ours.get_classifier() is ours.head
    ours.save_pretrained(tmp_path / "seven")
    again = ViT.from_pretrained(tmp_path / "seven")
    with torch.no_grad():
        torch.testing.assert_close(again(x), ours(x), atol=0, rtol=0)
    ref.reset_classifier(0)
    ours.reset_classifier(0)
    with torch.no_grad():  # no head: the pooled features, as timm's
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=0)
    assert ours.config["num_classes"] == 0 and isinstance(ours.get_classifier(), torch.nn.Identity)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 0, got -1"):
        ours.reset_classifier(-1)
