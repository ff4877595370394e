"""Zero-shot (and few-shot) image classification with CLIP: the one scorer behind `mmkit label`,
the Python API, the Gradio demo and the training callback (`mmkit.tasks.clip_task.ZeroShotEvaluation`).

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (2021),
section 3.1.4: a label's embedding is the renormalised mean of its normalised prompt embeddings
(the prompt ensemble, open_clip's `build_zero_shot_classifier`) and an image's scores are
softmax(logit_scale * cosine). Few-shot labels add a prototype from example images, the mean
normalised image embedding of a folder (prototypical networks; Tip-Adapter's training-free cache).
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from mmkit.data.images import scan_images, to_rgb
from mmkit.data.transforms import CLIP_DEFAULTS, EvalTransform, eval_transform
from mmkit.inference.image_batches import ImageBatch, image_batches
from mmkit.inference.inputs import as_items
from mmkit.inference.label_names import check_label_names
from mmkit.inference.precision import autocast_for, check_multi_gpu, resolve_precision
from mmkit.inference.prompts import (BACKGROUND_WORDS, DEFAULT_TEMPLATES, Tokenizer, check_names, check_templates,
                                     clean_labels, encode_prompts, expand_prompts, label_embeddings)
from mmkit.inference.quantize import apply_quantization
from mmkit.models.clip import CLIP

log = logging.getLogger(__name__)

Scores = list[tuple[str, float]]  # (label, probability), most probable first


def default_image_metadata(model: CLIP) -> dict[str, Any]:
    """The model's preprocessing: what its import recorded (`CLIP.from_open_clip`: open_clip's preprocess_cfg,
    SigLIP's mean/std 0.5 and squash), over CLIP's own at the model's resolution (`CLIP_DEFAULTS`)."""
    return {**CLIP_DEFAULTS, "image_size": model.visual.config["image_size"],
            "mean": list(CLIP_DEFAULTS["mean"]), "std": list(CLIP_DEFAULTS["std"]), **(model.preprocess or {})}


def zero_shot_classifier(model: CLIP, tokenizer: Tokenizer, labels: Sequence[str],
                         templates: Sequence[str] = DEFAULT_TEMPLATES) -> Tensor:
    """(C, D) unit-norm class embeddings, one row per label, averaged over the templates; `labels` a list, not
    one string (whose letters would be the labels)."""
    check_names(labels, "labels")
    templates = check_templates(templates)
    return label_embeddings(model, tokenizer, [expand_prompts([label], templates) for label in labels])


def similarity_logits(model: CLIP, features: Tensor, embeddings: Tensor) -> Tensor:
    """(B, D) unit image features, (L, D) unit label embeddings -> (B, L) exp(logit_scale) * cosine."""
    return model.logit_scale.exp().float() * (features @ embeddings.T)


@torch.no_grad()  # not inference_mode: the training callback compares the result with batch targets
def zero_shot_logits(model: CLIP, images: Tensor, classifier: Tensor) -> Tensor:
    """(B, 3, H, W) preprocessed images, (C, D) classifier -> (B, C) float32 scaled cosine similarities
    (the images are cast to the model's dtype: fp32, or what the caller cast it to)."""
    images = images.to(classifier.device, next(model.visual.parameters()).dtype)
    return similarity_logits(model, model.encode_image(images, normalize=True).float(), classifier)


def _ranked(labels: Sequence[str], probs: Tensor) -> list[Scores]:
    if not torch.isfinite(probs).all():  # NaN sorts anywhere: never a label with a NaN probability
        raise NonFiniteScores("non-finite scores (NaN or infinity): the model's weights or the input are broken")
    order = probs.argsort(dim=-1, descending=True)
    return [[(labels[j], float(row[j])) for j in idx] for row, idx in zip(probs.tolist(), order.tolist())]


def zero_shot_scores(model: CLIP, tokenizer: Tokenizer, images: Tensor | Sequence[Image.Image], labels: Sequence[str],
                     templates: Sequence[str] = DEFAULT_TEMPLATES,
                     transform: EvalTransform | None = None) -> list[Scores]:
    """Rank `labels` for each image, in fp32 (the model's mode is left as the caller set it).

    Args:
        model: a CLIP (put in eval mode by the caller when training).
        tokenizer: the tokenizer the model was trained with (its context length).
        images: (B, 3, H, W) preprocessed tensor, or PIL images in any mode (or HxW(xC) uint8 arrays).
        labels: candidate labels (stripped; empty and repeated ones dropped); a list, not one string; at least
            two, none differing from another only in case (`check_label_names`: `mmkit label`'s rules).
        templates: prompt templates with "{}" for the label.
        transform: PIL image -> (3, H, W) tensor; None = `default_image_metadata(model)`'s.

    Returns:
        Per image, every (label, probability) pair, most probable first; probabilities sum to 1.
        No images: [].
    """
    labels = clean_labels(labels)
    check_label_names(labels)
    if len(images) == 0:
        return []
    if not isinstance(images, Tensor):
        transform = transform or eval_transform(default_image_metadata(model), CLIP_DEFAULTS)
        images = torch.stack([transform(to_rgb(im)) for im in images])
    classifier = zero_shot_classifier(model, tokenizer, labels, templates)
    return _ranked(labels, zero_shot_logits(model, images, classifier).float().softmax(dim=-1))


class NonFiniteScores(ValueError):
    """The model gave NaN or infinite scores: an error for the run, never a label."""


@dataclass
class FileResult:
    """One image: per-label scores (in label order), or the reason it could not be read."""

    path: str
    scores: list[float] | None = None
    error: str | None = None


class ZeroShotClassifier:
    """A CLIP with its tokenizer and eval transform, scoring images against labels built from
    prompt ensembles and/or example images.

    Args:
        model: a CLIP (put in eval mode here).
        tokenizer: texts -> (B, T) ids for its text tower.
        transform: its image preprocessing; None = the one `meta` describes (CLIP's defaults).
        device: where to run ("cpu", "cuda", "cuda:1").
        precision: "fp32" (exact, the default), "bf16", "fp16" or "auto" (autocast; `resolve_precision`).
        multi_gpu: split image batches over all visible GPUs (nn.DataParallel on the image tower).
        quantize: "none", or "int8": int8 weights for every Linear layer of `quantize_tower` (CPU only; with
            it "auto" precision is fp32).
        quantize_tower: the tower that runs over many inputs: "visual" (the default: labeling images; the patch
            embedding stays an fp32 convolution, and the text tower fp32: it encodes the label prompts once, and
            its int8 copy would cost more to make, ~0.2 s for ViT-B/32, than it saves there) or "text"
            (embedding a file of texts, `mmkit embed`).
        meta: checkpoint metadata: eval transform keys, default `zeroshot_labels` / `zeroshot_templates`.

    Example:
        >>> zs = ZeroShotClassifier.from_pretrained("runs/clip_shapes/export")
        >>> zs.predict_images([Image.open("x.png")], ["red circle", "blue star"])[0][0]
        ('red circle', 0.97)
    """

    def __init__(self, model: CLIP, tokenizer: Tokenizer, transform: EvalTransform | None = None, device: str = "cpu",
                 precision: str = "fp32", multi_gpu: bool = False, meta: dict[str, Any] | None = None,
                 quantize: str = "none", quantize_tower: str = "visual") -> None:
        if quantize_tower not in ("visual", "text"):
            raise ValueError(f"quantize_tower must be 'visual' or 'text', got {quantize_tower!r}")
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device, quantize)
        self.model = model.eval().to(self.device)
        apply_quantization(getattr(self.model, quantize_tower), quantize)  # in place
        self.quantize = quantize
        self.tokenizer = tokenizer
        self.meta = {**default_image_metadata(model), **(meta or {})}
        self.transform = transform or eval_transform(self.meta, CLIP_DEFAULTS)
        self._autocast = autocast_for(self.precision, self.device)
        self.labels: list[str] = list(self.meta.get("zeroshot_labels") or [])
        self.templates: list[str] = list(self.meta.get("zeroshot_templates") or DEFAULT_TEMPLATES)
        self.image_tower: nn.Module = model.visual
        if multi_gpu:
            check_multi_gpu(self.device)
            self.image_tower = nn.DataParallel(model.visual)
        self.names: list[str] = []  # set_labels' labels, in order
        self.embeddings: Tensor | None = None  # (L, D) unit rows
        self.background: Tensor | None = None  # (D,) unit, for multi-label scoring of plain CLIP

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str = "cpu", precision: str = "fp32",
                        quantize: str = "none") -> "ZeroShotClassifier":
        """A native checkpoint directory; its metadata may name the tokenizer (`open_clip_tokenizer`:
        ARCH, e.g. "ViT-B-16-SigLIP"), the eval transform and default labels and templates."""
        from mmkit.inference.clip_loader import load_clip

        model, tokenizer = load_clip(str(directory))
        meta = CLIP.read_config(directory).get("metadata", {})
        return cls(model, tokenizer, None, device, precision, meta=meta, quantize=quantize)

    def encode_texts(self, prompts: str | Sequence[str]) -> Tensor:
        """Prompts (a lone string: one) -> (P, D) unit float32 embeddings; none: (0, D)."""
        return encode_prompts(self.model, self.tokenizer, prompts, self._autocast)

    @torch.inference_mode()
    def encode_images(self, pixels: Tensor) -> Tensor:
        """(B, 3, S, S) uint8 pixels (normalised here) or float model input -> (B, D) unit float32, whatever
        the model's dtype (the input is cast to it)."""
        x = pixels.to(self.device, non_blocking=True)
        x = self.transform.normalize(x) if x.dtype == torch.uint8 else x
        x = x.to(next(self.image_tower.parameters()).dtype)
        with self._autocast():
            return F.normalize(self.image_tower(x).float(), dim=-1)

    @torch.inference_mode()
    def set_labels(self, prompts: Mapping[str, Sequence[str]] | Sequence[str],
                   examples: dict[str, Tensor] | None = None, examples_weight: float = 0.5, multi_label: bool = False,
                   templates: Sequence[str] = DEFAULT_TEMPLATES) -> None:
        """Label embeddings: the renormalised mean of each label's unit prompt embeddings; with an
        image prototype p from examples, normalise((1 - w) * text + w * p), or p alone for a label
        with no prompts. Labels are those of `prompts`, then example-only ones in their order.

        `prompts`: {label: its prompts (a lone string: one)}, or a list of label names, each written
        into `templates` as `predict_images` does. `templates` also make the multi-label background.
        Labels equal but for case, and one label alone unless `multi_label`, are refused (`check_label_names`)."""
        if not isinstance(prompts, Mapping):  # label names ([]: examples only)
            templates = check_templates(templates)
            labels = clean_labels(prompts) if prompts else []
            prompts = {label: expand_prompts([label], templates) for label in labels}
        prompts = {label: list(as_items(p)) for label, p in prompts.items()}
        examples = examples or {}
        names = list(prompts) + [n for n in examples if n not in prompts]
        if not names:
            raise ValueError("no labels: give --labels, --labels-file or --examples")
        check_label_names(names, multi_label, "multi_label=True")
        text = label_embeddings(self.model, self.tokenizer, list(prompts.values()), self._autocast) if prompts else None
        row_of = {name: i for i, name in enumerate(prompts)}
        rows = []
        for name in names:
            proto = text[row_of[name]] if name in row_of else None  # type: ignore[index]
            if name in examples:
                image = examples[name].to(self.device)
                proto = image if proto is None else F.normalize((1 - examples_weight) * proto + examples_weight * image,
                                                                dim=-1)
            rows.append(proto)
        self.names, self.embeddings = names, torch.stack(rows)  # (L, D)
        if not torch.isfinite(self.embeddings).all():
            raise NonFiniteScores("the label embeddings are not finite: the model's weights (or the examples "
                                  "weight) hold NaN or infinity; no image can be labelled with them")
        self.background = None
        if multi_label and self.model.logit_bias is None:
            neutral = self.encode_texts(expand_prompts(BACKGROUND_WORDS, templates))
            self.background = F.normalize(neutral.mean(0), dim=-1)

    @torch.inference_mode()
    def scores(self, features: Tensor, multi_label: bool = False) -> Tensor:
        """(B, D) unit image embeddings -> (B, L) scores against `set_labels`' labels.

        Single-label: softmax(s * cos) over the labels (s = exp(logit_scale)). Multi-label, each
        label on its own: sigmoid(s * cos + logit_bias) for sigmoid-trained models (with a
        logit_bias, SigLIP-style); for softmax-trained CLIP, the two-way softmax of the label
        against the neutral BACKGROUND_WORDS prompts, sigmoid(s * (cos - cos_background)).
        """
        if self.embeddings is None:
            raise RuntimeError("no labels yet: call set_labels first")
        if not multi_label:
            return similarity_logits(self.model, features, self.embeddings).softmax(dim=-1)
        if self.model.logit_bias is not None:
            return torch.sigmoid(similarity_logits(self.model, features, self.embeddings)
                                 + self.model.logit_bias.float())
        if self.background is None:
            raise ValueError("multi-label scoring needs set_labels(..., multi_label=True)")
        cos = features @ self.embeddings.T  # (B, L)
        return torch.sigmoid(self.model.logit_scale.exp().float() * (cos - (features @ self.background)[:, None]))

    @torch.inference_mode()
    def predict_images(self, images: Image.Image | np.ndarray | Iterable[Image.Image | np.ndarray],
                       labels: Sequence[str] | None = None,
                       templates: str | Sequence[str] | None = None) -> list[Scores]:
        """PIL images (any mode) or HxW(xC) uint8 arrays (a lone one is one image; any iterable of them) ->
        ranked (label, probability) per image ([] for none); labels (a list, not one string; at least two, none
        differing from another only in case: `check_label_names`) and templates default to the checkpoint's.
        Leaves `set_labels`' state alone (a demo serves it concurrently)."""
        labels = clean_labels(labels if labels is not None else self.labels)
        check_label_names(labels)
        templates = check_templates(templates if templates is not None else self.templates)
        images = list(as_items(images, (Image.Image, np.ndarray)))
        if not images:
            return []
        embeddings = label_embeddings(self.model, self.tokenizer, [expand_prompts([label], templates)
                                                                   for label in labels], self._autocast)
        pixels = torch.stack([self.transform.pixels(to_rgb(im)) for im in images])  # (B, 3, S, S) uint8
        features = self.encode_images(pixels)
        return _ranked(labels, similarity_logits(self.model, features, embeddings).softmax(dim=-1).cpu())

    def predict(self, batches: Iterable[ImageBatch], paths: Sequence[str],
                multi_label: bool = False) -> Iterator[list[FileResult]]:
        """A generator: per decoded batch, one FileResult per file (unreadable ones with `error`),
        computed when asked for and never kept."""
        for batch in batches:
            results = [FileResult(paths[i], error=reason) for i, reason in batch.failed]
            if batch.images is not None:
                probs = self.scores(self.encode_images(batch.images), multi_label).cpu()
                if not torch.isfinite(probs).all():  # never a label: NaN sorts anywhere and writes as bare NaN
                    bad = [paths[i] for i, row in zip(batch.indices, torch.isfinite(probs).all(-1).tolist()) if not row]
                    raise NonFiniteScores(f"non-finite scores (NaN or infinity) for {len(bad)} image(s), first "
                                          f"{bad[0]}: the model's weights or preprocessing (std 0?) are broken")
                results += [FileResult(paths[i], scores=row) for i, row in zip(batch.indices, probs.tolist())]
            yield results

    def prototypes(self, root: str | os.PathLike, batch_size: int = 64, num_workers: int = 0) -> dict[str, Tensor]:
        """Few-shot prototypes from `root/<label>/<images>`: the renormalised mean unit embedding of
        each label's readable images (unreadable ones are skipped with a warning)."""
        root = Path(root).expanduser()
        folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        files = [(name, p.relative_to(root).as_posix()) for name in folders for p in scan_images(root / name)]
        sums: dict[str, Tensor] = {}
        counts: Counter[str] = Counter()
        for batch in image_batches(root, [f for _, f in files], self.transform, batch_size, num_workers):
            for i, reason in batch.failed:
                log.warning("example %s skipped: %s", files[i][1], reason)
            if batch.images is not None:
                for i, feature in zip(batch.indices, self.encode_images(batch.images).cpu()):
                    sums[files[i][0]] = sums.get(files[i][0], 0) + feature
                    counts[files[i][0]] += 1
        empty = [n for n in folders if not counts[n]]
        if empty:
            raise ValueError(f"{root}: no readable example images for {', '.join(empty)}")
        return {n: F.normalize(sums[n] / counts[n], dim=-1) for n in folders}
