"""Image classification inference (timm's ViT eval path): the one predict path behind `mmkit predict`,
the Python API and the Gradio demo. Loads a native checkpoint directory (config.json + safetensors)
whose metadata carries class names and the eval transform (size, crop, mean/std, interpolation);
attention rollout (Abnar & Zuidema, 2020) for the demo's overlay. fp32 is exact and the default;
bf16/fp16 autocast and int8 Linear weights (`mmkit.inference.quantize`) are opt-in paths whose
top-1 agreement with fp32 is measured (tests/inference/test_classifier_precision.py).
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mmkit.core import attention_maps
from mmkit.data.images import ImageLoadError, scan_images, to_rgb
from mmkit.data.transforms import VIT_DEFAULTS, eval_transform
from mmkit.inference.inputs import as_items, check_count
from mmkit.inference.precision import autocast_for, resolve_precision
from mmkit.inference.prompts import check_names, repeated_name
from mmkit.inference.quantize import apply_quantization, describe
from mmkit.models.vit import ViT

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Top-k result for one image; `error` is set (and labels empty) when it could not be read."""

    path: str
    labels: list[str] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    error: str | None = None


def top_k_predictions(logits: Tensor, class_names: Sequence[str], k: int) -> list[tuple[list[str], list[float]]]:
    """(B, C) logits -> per row the k most probable (labels, float32 probabilities)."""
    probs = logits.float().softmax(dim=-1)
    if not torch.isfinite(probs).all():  # NaN sorts anywhere: never a label
        raise ValueError("the model gave non-finite scores (NaN or infinity): its weights or its input "
                         "normalisation (std 0?) are broken")
    values, idx = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return [([class_names[i] for i in row_i], [round(float(p), 6) for p in row_p])
            for row_i, row_p in zip(idx.tolist(), values.tolist())]


top_k = top_k_predictions  # its old name, imported by mmkit.tasks.image_classifier


class Classifier:
    """Classify image files, folders or PIL images with a trained ViT.

    Args:
        model: a ViT with a classifier head (put in eval mode and on `device` here).
        class_names: one name per output.
        meta: checkpoint metadata (the eval transform's keys), over the model's imported `preprocess`
            (`ViT.from_timm`: timm's pretrained_cfg) and then timm's ImageNet defaults.
        device: where to run ("cpu", "cuda", "cuda:1").
        precision: "fp32" (exact, the default), "bf16", "fp16" or "auto" (`resolve_precision`).
        quantize: "none" or "int8" (int8 weights for every Linear layer, CPU only; the patch
            embedding stays an fp32 convolution). The model's layers are converted in place: it is then
            for inference only (`save_pretrained` refuses it).

    Example:
        >>> clf = Classifier.from_pretrained("runs/vit_digits/export")
        >>> for p in clf.predict_paths(["photos/"], top_k=3): print(p.path, p.labels, p.probs)
    """

    def __init__(self, model: ViT, class_names: Sequence[str], meta: dict[str, Any], device: str = "cpu",
                 precision: str = "fp32", quantize: str = "none") -> None:
        check_names(class_names, "class_names")
        if len(class_names) != model.num_classes:
            raise ValueError(f"{len(class_names)} class names for a model with {model.num_classes} outputs")
        repeated = repeated_name(class_names)
        if repeated:
            raise ValueError(f"class_names: {repeated}; give each class its own name")
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device, quantize)
        self.model = apply_quantization(model.eval().to(device), quantize)
        self.class_names = list(class_names)
        self.meta = meta
        # the model's own resolution unless the export's metadata says otherwise (timm's 224 resized a 32-px
        # model's inputs 7x: its positions were resampled and the probabilities came out different)
        self.transform = eval_transform({**(model.preprocess or {}), **meta},
                                        {**VIT_DEFAULTS, "image_size": model.config["image_size"]})
        self._autocast = autocast_for(self.precision, self.device)
        if (self.precision, quantize) != ("fp32", "none"):
            log.info("classifier: %s", describe(self.precision, quantize, self.device))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str = "cpu", precision: str = "fp32",
                        quantize: str = "none") -> "Classifier":
        meta = ViT.read_config(directory).get("metadata", {})
        model = ViT.from_pretrained(directory)
        names = meta.get("class_names") or [str(i) for i in range(model.num_classes)]
        return cls(model, names, meta, device, precision, quantize)

    @torch.inference_mode()
    def predict_images(self, images: Image.Image | np.ndarray | Iterable[Image.Image | np.ndarray], top_k: int = 5,
                       *, top_k_: int | None = None) -> list[tuple[list[str], list[float]]]:
        """PIL images (any mode) or HxW(xC) uint8 arrays (a lone one is one image; any iterable of them) ->
        top-k (labels, probabilities) per image, in float32 whatever the model's dtype (the input is cast to
        it). `top_k_`: the old name of `top_k`."""
        if top_k_ is not None:
            warnings.warn("predict_images(top_k_=...) is deprecated: use top_k", DeprecationWarning, stacklevel=3)
            top_k = top_k_
        check_count("top_k", top_k)
        images = list(as_items(images, (Image.Image, np.ndarray)))
        if not images:
            return []
        return self._predict_pixels(torch.stack([self.transform.pixels(to_rgb(im)) for im in images]), int(top_k))

    def _run(self, pixels: Tensor, forward: Callable[[Tensor], Tensor]) -> Tensor:
        """`forward` (the model, or its `pre_logits`) of (B, 3, S, S) uint8 crops, normalised on the device, cast
        to the model's dtype (fp32, or what the caller cast the model to), under the classifier's autocast."""
        dtype = next(self.model.parameters()).dtype
        batch = self.transform.normalize(pixels.to(self.device)).to(dtype)
        with self._autocast():
            return forward(batch)

    @torch.inference_mode()
    def _predict_pixels(self, pixels: Tensor, k: int) -> list[tuple[list[str], list[float]]]:
        """(B, 3, S, S) uint8 crops -> top-k (labels, probabilities) per crop."""
        return top_k_predictions(self._run(pixels, self.model), self.class_names, k)

    @torch.inference_mode()
    def encode_images(self, pixels: Tensor) -> Tensor:
        """(B, 3, S, S) uint8 crops -> (B, dim) float32 pooled features before the head (`ViT.pre_logits`: a
        timm model's with num_classes=0), at the classifier's precision."""
        return self._run(pixels, self.model.pre_logits).float()

    def predict_paths(self, paths: str | os.PathLike | Iterable[str | os.PathLike], top_k: int = 5,
                      batch_size: int = 32) -> Iterator[Prediction]:
        """Files and/or folders (scanned recursively; a lone str or path is one) -> one Prediction per
        image file, in the order of the files, streamed in batches of `batch_size` files; unreadable files
        yield a Prediction with `error` set instead of raising. Each file is cut to its uint8 crop as it is
        decoded, so a batch holds batch_size x 3 x S x S bytes, not its full-resolution sources."""
        check_count("batch_size", batch_size)
        check_count("top_k", top_k)
        batch: list[tuple[str, Tensor | ImageLoadError]] = []
        for path in _expand(as_items(paths, (str, os.PathLike))):
            try:
                batch.append((str(path), self.transform.load(path)))  # (3, S, S) uint8
            except ImageLoadError as e:
                batch.append((str(path), e))  # in its place: an unreadable file's row is not moved ahead
            if len(batch) == batch_size:
                yield from self._flush(batch, top_k)
                batch = []
        if batch:
            yield from self._flush(batch, top_k)

    def _flush(self, batch: list[tuple[str, Tensor | ImageLoadError]], k: int) -> Iterator[Prediction]:
        crops = [im for _, im in batch if isinstance(im, Tensor)]
        scored = iter(self._predict_pixels(torch.stack(crops), int(k)) if crops else [])
        for path, im in batch:
            if isinstance(im, ImageLoadError):
                yield Prediction(path, error=im.reason)
            else:
                labels, probs = next(scored)
                yield Prediction(path, labels, probs)

    @torch.inference_mode()
    def attention_overlay(self, image: Image.Image | np.ndarray, alpha: float = 0.5,
                          canvas: Image.Image | None = None) -> Image.Image:
        """The image with the model's attention rollout (Abnar & Zuidema, 2020) as a heat map.

        Args:
            image: the input (any mode), as `predict_images` takes it; the rollout is computed from it.
            alpha: weight of the heat map (0: the image alone, 1: the heat map alone).
            canvas: what the heat map is drawn on, default `image`: e.g. a display-sized copy, so that
                blending costs the copy's pixels, not an 80-megapixel input's (the demo's).

        Returns:
            An RGB image of the canvas's size.
        """
        if not (isinstance(image, Image.Image) and image.mode == "RGB"):  # to_rgb would copy an RGB image too
            image = to_rgb(image)
        x = self.transform(image)[None].to(self.device, next(self.model.parameters()).dtype)
        _, maps = attention_maps(self.model, lambda: self.model(x))
        heat = _rollout(maps, self.model.num_prefix_tokens, self.model.patch_embed.grid(x.shape[-2], x.shape[-1]))
        if canvas is not None and not (isinstance(canvas, Image.Image) and canvas.mode == "RGB"):
            canvas = to_rgb(canvas)
        return _blend(image if canvas is None else canvas, heat, alpha)


def _expand(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            yield from scan_images(p)
        else:
            yield p  # a missing or non-image file is reported by load_image, not dropped


def _rollout(maps: list[Tensor], num_prefix: int, grid: tuple[int, int]) -> np.ndarray:
    # Average heads, add the residual identity, renormalise, and multiply through the layers.
    tokens = maps[0].shape[-1]
    joint = torch.eye(tokens)
    for m in maps:
        a = m[0].mean(0).float().cpu()
        a = (a + torch.eye(tokens)) / 2
        joint = (a / a.sum(-1, keepdim=True)) @ joint
    # Relevance of each patch: from the class token if there is one, else averaged over patches.
    rel = joint[0, num_prefix:] if num_prefix else joint[:, :].mean(0)
    rel = rel.reshape(grid).numpy()
    return (rel - rel.min()) / (rel.max() - rel.min() + 1e-8)


def _blend(image: Image.Image, heat: np.ndarray, alpha: float) -> Image.Image:
    # In uint8 with PIL (3 bytes a pixel, not numpy float32's 12 per array): red = attended, blue = ignored.
    h = Image.fromarray((heat * 255).astype(np.uint8)).resize(image.size, Image.BILINEAR)
    colour = Image.merge("RGB", (h, Image.new("L", h.size, 0), h.point(lambda v: 255 - v)))
    return Image.blend(image, colour, alpha)
