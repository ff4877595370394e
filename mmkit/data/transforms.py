"""The eval image transform, one for every family: timm's `transforms_imagenet_eval` (torchvision
Resize of the short side to image_size / crop_pct, CenterCrop; or open_clip's "squash" of both
sides), pixel for pixel, split in two so DataLoader workers pass uint8 (a quarter of float32)
and the model side normalises. ViT and CLIP differ only in the defaults their metadata fills in.
Extremely thin images resize only the crop's preimage, so memory follows the crop, not the aspect.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mmkit.data.images import DEFAULT_MAX_PIXELS, load_image

# Pixel statistics over 0..1 RGB (timm.data's constants, restated so data/ needs no timm import).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
            "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}
RESIZE_MODES = ("shortest", "squash")  # short side to size then a centre crop; or both sides to size
# Resize-then-crop (timm's, bit for bit) while the resized image has at most this many times the
# crop's pixels: an aspect up to ~50:1 at crop_pct 0.875, 64:1 without crop, i.e. every ordinary
# photo or panorama. Beyond, only the crop's preimage is resized (`_resize_crop`): a 300,000 x 1 PNG
# of a few hundred bytes would otherwise become 10,800,000 x 36 pixels (1.5 GB) for a 32-px model,
# 77 GB at 224 px. Not the box path everywhere: PIL takes the box in float32, so it differs from the
# whole resize by up to 2 levels (filters), or takes the other neighbour at an exact tie (nearest, box);
# tests/data/test_image_transforms.py measures both.
RESIZE_CROP_RATIO = 64
# Source pixels a filter reaches either side of an output pixel's centre, per unit of downscale
# (lanczos's 3 is PIL's widest); the crop before a box resize keeps this margin plus one.
_FILTER_SUPPORT = 3
# What a checkpoint's metadata may set; the rest come from the family's defaults.
EVAL_KEYS = ("image_size", "crop_pct", "mean", "std", "interpolation", "resize_mode")
# Per family: timm's ImageNet eval defaults for ViT, open_clip's for CLIP (no crop).
VIT_DEFAULTS: dict[str, Any] = {"image_size": 224, "crop_pct": 0.875, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                                "interpolation": "bicubic", "resize_mode": "shortest"}
CLIP_DEFAULTS: dict[str, Any] = {"image_size": 224, "crop_pct": 1.0, "mean": OPENAI_CLIP_MEAN,
                                 "std": OPENAI_CLIP_STD, "interpolation": "bicubic", "resize_mode": "shortest"}


@dataclass(frozen=True)
class EvalTransform:
    """RGB PIL image -> (3, S, S) model input. `pixels` (and `load`, from a file) gives the uint8
    crop, `normalize` a stacked batch of them; calling the transform does both for one image."""

    image_size: int = 224
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # or "squash": both sides resized (open_clip's SigLIP preprocessing)
    crop_pct: float = 1.0  # centre crop share of the resized short side (timm ViT: 0.875; CLIP: 1)
    draft: bool = True  # JPEG DCT-domain downscaling in `load` (load_image's min_side); False = exact pixels
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES or self.interpolation not in RESAMPLE:
            raise ValueError(f"unsupported preprocessing: resize_mode={self.resize_mode!r}, "
                             f"interpolation={self.interpolation!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")
        for name, values in (("mean", self.mean), ("std", self.std)):  # 3 finite numbers; std > 0 (divides)
            if (len(values) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
                    or (name == "std" and min(values) <= 0)):
                raise ValueError(f"{name} must be 3 finite numbers{', each > 0' if name == 'std' else ''}, "
                                 f"got {list(values)}")

    def normalized_as(self, preprocess: dict[str, Any], interpolation: bool = False,
                      ) -> tuple["EvalTransform", dict[str, Any]]:
        """This transform with the mean, std and resize_mode of a model's recorded preprocessing (`CLIP.preprocess`:
        SigLIP's 0.5 and squash) where they are given, its resize filter too with `interpolation` (where the user
        chose none), and those that changed ({} and this transform if none)."""
        def value(key: str, given: Any) -> Any:  # statistics as the tuples this transform holds
            return given if key in ("resize_mode", "interpolation") else tuple(given)

        keys = ("mean", "std", "resize_mode") + (("interpolation",) if interpolation else ())
        changed = {k: preprocess[k] for k in keys
                   if preprocess.get(k) is not None and value(k, preprocess[k]) != getattr(self, k)}
        if not changed:
            return self, {}
        return replace(self, **{k: value(k, v) for k, v in changed.items()}), changed

    @property
    def resize_to(self) -> int:
        """The short side (both sides when squashing) before the centre crop, as timm floors it."""
        return math.floor(self.image_size / self.crop_pct)

    def load(self, path: str | os.PathLike) -> Tensor:
        """File -> (3, S, S) uint8; raises ImageLoadError."""
        return self.pixels(load_image(path, self.max_pixels, self.resize_to if self.draft else None))

    def pixels(self, image: Image.Image) -> Tensor:
        """RGB PIL image -> (3, S, S) uint8, pixel for pixel torchvision's Resize + CenterCrop."""
        s, n, (w, h) = self.image_size, self.resize_to, image.size
        if self.resize_mode == "squash":
            size = (n, n)
        else:  # torchvision's Resize(int): short side -> n, long side -> int(n * long / short)
            size = (n, int(n * h / w)) if w <= h else (int(n * w / h), n)
        left, top = int(round((size[0] - s) / 2.0)), int(round((size[1] - s) / 2.0))
        resample = RESAMPLE[self.interpolation]
        if size[0] * size[1] > RESIZE_CROP_RATIO * s * s:
            image = _resize_crop(image, size, (left, top, left + s, top + s), resample)
        else:
            if size != (w, h):
                image = image.resize(size, resample)
            if size != (s, s):
                image = image.crop((left, top, left + s, top + s))
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # (3, S, S)

    def normalize(self, batch: Tensor) -> Tensor:
        """(B, 3, S, S) uint8 -> float32 (x / 255 - mean) / std, torchvision's ToTensor + Normalize."""
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return batch.float().div_(255).sub_(mean).div_(std)

    def __call__(self, image: Image.Image) -> Tensor:
        """RGB PIL image -> (3, S, S) float32, timm's eval transform."""
        return self.normalize(self.pixels(image)[None])[0]


def _resize_crop(image: Image.Image, size: tuple[int, int], crop: tuple[int, int, int, int],
                 resample: int) -> Image.Image:
    """`image.resize(size, resample).crop(crop)` computed from the crop's preimage only: the source
    region the crop maps back to (plus the filter's reach) is cut out with integer coordinates, then
    resized with PIL's `box`, which reads pixels outside the box for the filter's support. Cut first
    because PIL takes the box as float32, whose step at x = 5,000,000 is 0.5 px; in the cut it is small."""
    sx, sy = image.width / size[0], image.height / size[1]  # source pixels per resized pixel
    x0, y0, x1, y1 = crop[0] * sx, crop[1] * sy, crop[2] * sx, crop[3] * sy
    mx, my = _FILTER_SUPPORT * max(sx, 1.0) + 1, _FILTER_SUPPORT * max(sy, 1.0) + 1
    cut = (max(0, math.floor(x0 - mx)), max(0, math.floor(y0 - my)),
           min(image.width, math.ceil(x1 + mx)), min(image.height, math.ceil(y1 + my)))
    box = (x0 - cut[0], y0 - cut[1], x1 - cut[0], y1 - cut[1])
    return image.crop(cut).resize((crop[2] - crop[0], crop[3] - crop[1]), resample, box=box)


def eval_transform(meta: dict[str, Any], defaults: dict[str, Any] = VIT_DEFAULTS, draft: bool = False) -> EvalTransform:
    """The eval transform a checkpoint's (or DataModule's) metadata describes; keys it lacks come
    from the family's `defaults` (VIT_DEFAULTS: timm's; CLIP_DEFAULTS: open_clip's)."""
    fields = {k: meta.get(k, defaults[k]) for k in EVAL_KEYS}
    fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in fields.items()}
    if isinstance(fields["image_size"], tuple):  # (H, W) from open_clip configs: square only
        fields["image_size"] = fields["image_size"][0]
    return EvalTransform(**fields, draft=draft)
