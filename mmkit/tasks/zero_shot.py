"""Zero-shot image classification with CLIP (Radford et al., 2021, section 3.1.4): each label is
written into prompt templates, its classifier is the renormalised mean of the normalised template
embeddings (the paper's prompt ensembling, open_clip's `build_zero_shot_classifier`), and images
are scored by softmax(logit_scale * cosine). Behind the training callback
(`mmkit.tasks.clip_task.ZeroShotEvaluation`) and the Gradio demo; prompts are expanded and encoded
by `mmkit.tasks.prompts`, as in `mmkit label`.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from torch import Tensor

from mmkit.data.images import to_rgb
from mmkit.data.text import CLIPTokenizer, open_clip_tokenizer
from mmkit.models.clip import CLIP, CLIP_MEAN, CLIP_STD, CLIP_VOCAB_SIZE
from mmkit.tasks.classify import eval_transform
from mmkit.tasks.prompts import Tokenizer, check_templates, expand_prompts, label_embeddings

DEFAULT_TEMPLATES = ("a photo of a {}.",)

Scores = list[tuple[str, float]]  # (label, probability), most probable first


def clean_labels(labels: Sequence[str]) -> list[str]:
    """Stripped, non-empty, first occurrence of each; raises ValueError when none is left."""
    out = list(dict.fromkeys(s.strip() for s in labels if s and s.strip()))
    if not out:
        raise ValueError("give at least one non-empty label")
    return out


def zero_shot_classifier(model: CLIP, tokenizer: Tokenizer, labels: Sequence[str],
                         templates: Sequence[str] = DEFAULT_TEMPLATES) -> Tensor:
    """(C, D) unit-norm class embeddings, one row per label, averaged over the templates."""
    templates = check_templates(templates)
    return label_embeddings(model, tokenizer, [expand_prompts([label], templates) for label in labels])


@torch.no_grad()
def zero_shot_logits(model: CLIP, images: Tensor, classifier: Tensor) -> Tensor:
    """(B, 3, H, W) preprocessed images, (C, D) classifier -> (B, C) scaled cosine similarities."""
    image_features = model.encode_image(images.to(classifier.device), normalize=True)  # (B, D)
    return model.logit_scale.exp() * image_features @ classifier.T


def default_image_metadata(model: CLIP) -> dict[str, Any]:
    """CLIP's own preprocessing at the model's resolution: resize the short side, centre crop,
    bicubic, OpenAI mean/std (the keys `mmkit.tasks.classify.eval_transform` reads)."""
    return {"image_size": model.visual.config["image_size"], "crop_pct": 1.0, "interpolation": "bicubic",
            "mean": list(CLIP_MEAN), "std": list(CLIP_STD)}


def zero_shot_scores(
    model: CLIP,
    tokenizer: Tokenizer,
    images: Tensor | Sequence[Image.Image],
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    transform: Callable[[Image.Image], Tensor] | None = None,
) -> list[Scores]:
    """Rank `labels` for each image.

    Args:
        model: a CLIP (put in eval mode by the caller when training).
        tokenizer: the tokenizer the model was trained with (its context length).
        images: (B, 3, H, W) preprocessed tensor, or PIL images in any mode.
        labels: candidate labels (stripped; empty and repeated ones dropped).
        templates: prompt templates with "{}" for the label.
        transform: PIL image -> (3, H, W) tensor; None = `default_image_metadata(model)`'s.

    Returns:
        Per image, every (label, probability) pair, most probable first; probabilities sum to 1.
    """
    labels = clean_labels(labels)
    if not isinstance(images, Tensor):
        transform = transform or eval_transform(default_image_metadata(model))
        images = torch.stack([transform(to_rgb(im)) for im in images])
    classifier = zero_shot_classifier(model, tokenizer, labels, templates)
    probs = zero_shot_logits(model, images, classifier).float().softmax(dim=-1)  # (B, C)
    order = probs.argsort(dim=-1, descending=True)
    return [[(labels[j], float(row[j])) for j in idx] for row, idx in zip(probs.tolist(), order.tolist())]


class ZeroShotClassifier:
    """A trained CLIP with its tokenizer and preprocessing, from a native checkpoint directory
    whose metadata may carry `context_length`, the eval transform keys (`resize_mode: "squash"`
    included), default `zeroshot_labels` / `zeroshot_templates` (what `CLIPTask` exports), and
    `open_clip_tokenizer`: the open_clip architecture whose tokenizer the model needs when it is
    not CLIP's BPE (e.g. "ViT-B-16-SigLIP", as in `mmkit label`).

    Example:
        >>> zs = ZeroShotClassifier.from_pretrained("runs/clip_shapes/export")
        >>> zs.predict_images([Image.open("x.png")], ["red circle", "blue star"])[0][0]
        ('red circle', 0.97)
    """

    def __init__(self, model: CLIP, meta: dict[str, Any] | None = None, device: str = "cpu") -> None:
        self.meta = {**default_image_metadata(model), **(meta or {})}
        self.model = model.eval().to(device)
        context = self.meta.get("context_length") or model.context_length
        arch = self.meta.get("open_clip_tokenizer")
        self.tokenizer: Tokenizer = (open_clip_tokenizer(arch, context_length=context) if arch
                                     else CLIPTokenizer(context_length=context))
        if isinstance(self.tokenizer, CLIPTokenizer) and model.text.vocab_size != CLIP_VOCAB_SIZE:
            raise ValueError(f"the text tower has {model.text.vocab_size} token ids, CLIP's BPE {CLIP_VOCAB_SIZE}: "
                             "name the model's tokenizer in its metadata ('open_clip_tokenizer': ARCH)")
        self.transform = eval_transform(self.meta)
        self.labels: list[str] = list(self.meta.get("zeroshot_labels") or [])
        self.templates: list[str] = list(self.meta.get("zeroshot_templates") or DEFAULT_TEMPLATES)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str = "cpu") -> "ZeroShotClassifier":
        meta = CLIP.read_config(directory).get("metadata", {})
        return cls(CLIP.from_pretrained(directory), meta, device)

    def predict_images(self, images: Sequence[Image.Image], labels: Sequence[str] | None = None,
                       templates: Sequence[str] | None = None) -> list[Scores]:
        """PIL images (any mode) -> ranked (label, probability) per image; labels and templates
        default to the checkpoint's."""
        labels = labels if labels is not None else self.labels
        return zero_shot_scores(self.model, self.tokenizer, images, labels, templates or self.templates,
                                self.transform)
