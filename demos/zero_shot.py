"""CLIP zero-shot demo: upload several images, edit the candidate labels and prompt templates,
and see every label ranked per image. Thin over `mmkit.inference.zero_shot.ZeroShotClassifier`, the
same path as `mmkit label` and the training-time zero-shot evaluation.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import gradio as gr
import numpy as np
from PIL import Image

from demos.display import for_display
from demos.inputs import refused, warn
from mmkit.data.images import ImageLoadError, load_image
from mmkit.data.transforms import EvalTransform
from mmkit.inference import prompts
from mmkit.inference.text_rows import text_problem
from mmkit.inference.zero_shot import ZeroShotClassifier

HEADERS = ["image", "rank", "label", "score"]
# Per request. The label embeddings are recomputed on every click (labels x templates prompts through
# the text tower) and the table has files x labels rows: 1 MB of labels once took 51 s and sent a
# 450,000-row table.
MAX_FILES = 8
MAX_LABELS = 100
MAX_TEMPLATES = 16
GALLERY_SIDE = 512  # pixels: gallery images are shrunk to this, never sent back at full size


def parse_labels(text: str, max_labels: int = MAX_LABELS) -> list[str]:
    """One label per line, or comma-separated on one line, by `mmkit label`'s rules
    (`mmkit.inference.prompts.parse_labels`: no repeats, no names differing only in case, none over
    MAX_LABEL_CHARS) and the text tools' (`text_problem`: no NUL, not only invisible characters).
    At most `max_labels`; raises ValueError naming the first problem."""
    entries = [s.strip() for s in re.split(r"[\n,]", text or "") if s.strip()]
    if len(entries) > max_labels:
        raise ValueError(f"{len(entries):,} labels: at most {max_labels} at a time")
    for entry in entries:
        problem = text_problem(entry)
        if problem:  # its NUL message speaks of files
            raise ValueError(f"label {entry[:40]!r}: {'holds NUL characters' if chr(0) in entry else problem}")
    labels = prompts.parse_labels(entries)
    # The demo scores names through ZeroShotClassifier.predict_images, which takes no synonyms.
    odd = next((name for name, alternatives in labels.items() if alternatives != [name]), None)
    if odd is not None:
        raise ValueError(f"label {odd!r}: synonyms ('name: a | b') are for `mmkit label`; "
                         "here each label is its own prompt (no ':')")
    return list(labels)


def parse_templates(text: str, max_templates: int = MAX_TEMPLATES) -> list[str]:
    """One prompt template per line ("{}" marks the label); at most `max_templates`, each at most
    MAX_LABEL_CHARS long (ValueError otherwise)."""
    templates = [s.strip() for s in (text or "").splitlines() if s.strip()]
    if len(templates) > max_templates:
        raise ValueError(f"{len(templates):,} templates: at most {max_templates} at a time")
    long = next((t for t in templates if len(t) > prompts.MAX_LABEL_CHARS), None)
    if long is not None:
        raise ValueError(f"a template of {len(long):,} characters ({long[:40]!r}...): "
                         f"at most {prompts.MAX_LABEL_CHARS:,}")
    return templates


def prepare(path: str, transform: EvalTransform) -> tuple[Image.Image, Image.Image]:
    """(gallery copy, model input) of one upload, so the full-size decode is gone before the next
    file loads. The model input is the transform's own S x S output when the transform leaves that
    unchanged (no crop: crop_pct 1, CLIP's preprocessing), else the decoded image itself.

    Raises:
        ImageLoadError: unreadable (see `load_image`).
    """
    # Decoded at the model's size where the format allows (JPEG's DCT scaling), as `mmkit label` does.
    image = load_image(path, transform.max_pixels, min_side=transform.resize_to)
    shown = for_display(image, max_side=GALLERY_SIDE)
    if transform.resize_to != transform.image_size:
        return shown, image
    return shown, Image.fromarray(np.ascontiguousarray(transform.pixels(image).permute(1, 2, 0).numpy()))


def zero_shot_tab(classifier: ZeroShotClassifier, labels: Sequence[str] | None = None,
                  templates: Sequence[str] | None = None) -> None:
    """Render the zero-shot tab into the enclosing `gr.Blocks` (so apps can combine tabs)."""
    transform = classifier.transform
    labels = list(labels if labels is not None else classifier.labels)
    templates = list(templates or classifier.templates)
    # The starting labels and templates (the checkpoint's: ImageNet's are 1,000) always fit.
    max_labels, max_templates = max(MAX_LABELS, len(labels)), max(MAX_TEMPLATES, len(templates))

    def score(files: list[str] | None, labels_text: str, templates_text: str):
        if not files:
            raise refused("Upload one or more images first.")
        if len(files) > MAX_FILES:
            raise refused(f"{len(files)} images: at most {MAX_FILES} at a time.")
        try:
            chosen = parse_labels(labels_text, max_labels)
            written = parse_templates(templates_text, max_templates)
        except ValueError as e:
            raise refused(str(e)) from None
        if len(chosen) < 2:  # `mmkit label`'s rule and words (the demo has no --multi-label)
            raise refused(f"one label ({chosen[0]!r}) always scores 1.0: give at least two" if chosen else
                          "Enter at least two labels.")
        images, shown, names = [], [], []
        for path in files:
            try:
                thumb, image = prepare(path, transform)
            except ImageLoadError as e:
                warn(f"skipped {Path(path).name}: {e.reason}")
                continue
            shown.append(thumb)
            images.append(image)
            names.append(Path(path).name)
        if not images:
            raise refused("None of the uploaded files is a readable image.")
        try:
            ranked = classifier.predict_images(images, chosen, written or None)
        except ValueError as e:  # e.g. a template without "{}"
            raise refused(str(e)) from None
        rows = [[name, rank, label, round(p, 4)] for name, scores in zip(names, ranked)
                for rank, (label, p) in enumerate(scores, 1)]
        gallery = [(im, f"{name}: {scores[0][0]} ({scores[0][1]:.2f})")
                   for im, name, scores in zip(shown, names, ranked)]
        return rows, gallery

    with gr.Tab("Zero-shot", elem_id="zero-shot-tab"):
        with gr.Row():
            with gr.Column():
                # No file_types: Gradio judged a file by its name's extension (a PNG named scan.dat was refused,
                # and one PDF failed the whole batch); mmkit's loader judges each file's content in `score`.
                files = gr.File(file_count="multiple", type="filepath", label=f"Images (at most {MAX_FILES})",
                                elem_id="images")
                label_box = gr.Textbox("\n".join(labels), lines=6,
                                       label=f"Labels (one per line, or comma-separated; at most {max_labels})",
                                       elem_id="labels")
                template_box = gr.Textbox("\n".join(templates), lines=2,
                                          label=f"Prompt templates, one per line ({{}} = the label; "
                                                f"at most {max_templates})", elem_id="templates")
                button = gr.Button("Score", variant="primary", elem_id="score")
            with gr.Column():
                gallery = gr.Gallery(label="Top label per image", elem_id="gallery", columns=4, height="auto")
                table = gr.Dataframe(headers=HEADERS, datatype=["str", "number", "str", "number"],
                                     interactive=False, label="Ranked scores", elem_id="scores")
        button.click(score, [files, label_box, template_box], [table, gallery], api_name="zero_shot")


def build_app(classifier: ZeroShotClassifier, labels: Sequence[str] | None = None,
              templates: Sequence[str] | None = None, title: str = "mmkit CLIP zero-shot") -> gr.Blocks:
    """A Blocks app with the zero-shot tab; labels/templates default to the checkpoint's."""
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"## {title}\nScores are softmax(scale x cosine) over the labels, "
                    "each label's text averaged over the templates.")
        zero_shot_tab(classifier, labels, templates)
    return app
