"""The one eval transform (`mmkit.data.transforms.EvalTransform`) equals timm's eval transform
(`create_transform(is_training=False)`, what the ViT family and open_clip use) pixel for pixel:
centre crop with crop_pct, squash, interpolations, portrait and landscape inputs; and equals the
whole-image resize-then-crop bit for bit up to RESIZE_CROP_RATIO, resizing only the crop's preimage
beyond it (thin strips), so that memory follows the crop, not the aspect ratio."""
from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform

from mmkit.data.transforms import (CLIP_DEFAULTS, RESAMPLE, RESIZE_CROP_RATIO, VIT_DEFAULTS, EvalTransform,
                                   eval_transform)


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


def _resize_then_crop(t: EvalTransform, image: Image.Image) -> tuple[np.ndarray, tuple[int, int], int, int]:
    """(S, S, 3) pixels the way torchvision's Resize + CenterCrop make them: the whole image resized,
    then cropped; with the resized size and the crop's left/top."""
    s, n, (w, h) = t.image_size, t.resize_to, image.size
    size = (n, n) if t.resize_mode == "squash" else (n, int(n * h / w)) if w <= h else (int(n * w / h), n)
    left, top = int(round((size[0] - s) / 2.0)), int(round((size[1] - s) / 2.0))
    resized = image.resize(size, RESAMPLE[t.interpolation]) if size != (w, h) else image
    return np.asarray(resized.crop((left, top, left + s, top + s))), size, left, top


def _ties(start: int, count: int, src: int, dst: int, interpolation: str) -> set[int]:
    """Output indices (start..start+count in the resized image, relative to start) whose source
    position lies exactly on a pixel boundary: nearest and box sampling pick either neighbour there,
    depending on the last bit of a float (the box path's coordinates are float32 in PIL)."""
    scale = Fraction(src, dst)
    half = Fraction(max(scale, 1), 2)
    offsets = {-half, half} if interpolation == "box" else {Fraction(0)}
    shift = Fraction(1, 2) if interpolation == "box" else Fraction(0)
    return {j for j in range(count)
            if any(((start + j + Fraction(1, 2)) * scale + o - shift).denominator == 1 for o in offsets)}


SIDES = (1, 2, 3, 7, 16, 17, 36, 63, 100, 255, 601, 1000)  # odd and even; up- and downscales; aspects to 1000:1


@pytest.mark.parametrize("interpolation", sorted(RESAMPLE))
@pytest.mark.parametrize("size, crop_pct, mode", [(16, 0.875, "shortest"), (15, 1.0, "shortest"), (12, 0.9, "squash")])
def test_pixels_are_resize_then_crop_bit_for_bit_up_to_the_bound(size, crop_pct, mode, interpolation):
    """Every image whose resized copy has at most RESIZE_CROP_RATIO x the crop's pixels (aspect up to
    ~50:1) gets exactly the old whole-image resize then crop. Thinner ones resize only the crop's
    preimage: within 2 levels for the filters (float32 box coordinates in PIL move a coefficient's
    last bit), and for nearest/box the same pixels except where the source position is an exact tie."""
    t = EvalTransform(size, interpolation=interpolation, resize_mode=mode, crop_pct=crop_pct)
    rng = np.random.default_rng(0)
    exact = thin = 0
    for w, h in itertools.product(SIDES, SIDES):
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        expected, resized, left, top = _resize_then_crop(t, image)
        got = t.pixels(image).permute(1, 2, 0).numpy()
        if resized[0] * resized[1] <= RESIZE_CROP_RATIO * size * size:
            assert np.array_equal(got, expected), (w, h)
            exact += 1
            continue
        thin += 1
        diff = np.abs(got.astype(int) - expected.astype(int)).max(axis=2)
        if interpolation in ("nearest", "box"):
            rows = _ties(top, size, h, resized[1], interpolation)
            cols = _ties(left, size, w, resized[0], interpolation)
            wrong = [(y, x) for y, x in zip(*np.nonzero(diff)) if y not in rows and x not in cols]
            assert not wrong, (w, h, wrong[:5])
        else:
            assert diff.max() <= 2, (w, h)
    assert exact >= 100 and thin >= (0 if mode == "squash" else 10)


@pytest.mark.parametrize("interpolation", sorted(RESAMPLE))
@pytest.mark.parametrize("size, crop_pct", [(32, 0.875), (224, 0.875), (224, 1.0)])
def test_a_thin_strip_resizes_only_its_crop(monkeypatch, size, crop_pct, interpolation):
    """A 300,000 x 1 strip (and 1 x 300,000) became 10,800,000 x 36 pixels (1.5 GB) in the 32-px model's
    resize, 76,800,000 x 256 (77 GB) at 224 px; now no image made on the way is larger than the crop.
    The crop is the strip's middle: a 20-px blue patch there fills it, in every interpolation."""
    made: list[tuple[int, int]] = []
    for name in ("resize", "crop"):
        real = getattr(Image.Image, name)
        monkeypatch.setattr(Image.Image, name, lambda self, *a, _real=real, **k: _keep(made, _real(self, *a, **k)))
    t = EvalTransform(size, interpolation=interpolation, crop_pct=crop_pct)
    for shape in ((300_000, 1), (1, 300_000)):
        strip = np.zeros((shape[1], shape[0], 3), np.uint8)
        strip.reshape(-1, 3)[150_000 - 10:150_000 + 10] = (20, 60, 250)  # the middle 20 px
        made.clear()
        got = t.pixels(Image.fromarray(strip))
        assert got.shape == (3, size, size) and made
        assert max(w * h for w, h in made) <= size * size, made
        assert torch.equal(got, torch.tensor([20, 60, 250], dtype=torch.uint8).view(3, 1, 1).expand_as(got))


def _keep(made: list[tuple[int, int]], image: Image.Image) -> Image.Image:
    made.append(image.size)
    return image
