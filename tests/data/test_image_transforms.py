"""The one eval transform (`mmkit.data.transforms.EvalTransform`) equals timm's eval transform
(`create_transform(is_training=False)`, what the ViT family and open_clip use) pixel for pixel:
centre crop with crop_pct, squash, interpolations, portrait and landscape inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform

from mmkit.data.transforms import CLIP_DEFAULTS, VIT_DEFAULTS, EvalTransform, eval_transform


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.3, 1, (1, 1, 3))
    return Image.fromarray(np.clip(ramp + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("size, crop_pct, mode, interpolation", [
    (16, 0.875, "center", "bicubic"), (24, 1.0, "center", "bilinear"), (16, 1.0, "squash", "bicubic"),
    (20, 0.9, "squash", "bilinear"), (16, 0.875, "center", "nearest"),
])
@pytest.mark.parametrize("shape", [(50, 31), (31, 50), (16, 16)])
def test_matches_timm_eval_transform(size, crop_pct, mode, interpolation, shape):
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    timm_eval = create_transform(size, is_training=False, crop_pct=crop_pct, crop_mode=mode,
                                 interpolation=interpolation, mean=mean, std=std)
    ours = EvalTransform(size, mean, std, interpolation, "squash" if mode == "squash" else "shortest", crop_pct)
    image = _photo(*shape)
    expected = timm_eval(image)
    assert ours.pixels(image).dtype == torch.uint8 and ours.pixels(image).shape == (3, size, size)
    torch.testing.assert_close(ours(image), expected, atol=0, rtol=0)


def test_family_defaults_and_metadata():
    vit = eval_transform({"image_size": 32})
    assert (vit.crop_pct, vit.mean, vit.interpolation) == (0.875, VIT_DEFAULTS["mean"], "bicubic")
    clip = eval_transform({"image_size": [64, 64], "mean": [0.5] * 3, "resize_mode": "squash"}, CLIP_DEFAULTS)
    assert (clip.image_size, clip.crop_pct, clip.mean, clip.std) == (64, 1.0, (0.5,) * 3, CLIP_DEFAULTS["std"])
    assert clip.resize_mode == "squash"
    for bad in ({"resize_mode": "pad"}, {"interpolation": "cubic-ish"}, {"crop_pct": 1.5}):
        with pytest.raises(ValueError):
            eval_transform(bad)
