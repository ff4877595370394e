"""CLIP zero-shot demo: upload several images, edit the candidate labels and prompt templates,
and see every label ranked per image. Thin over `mmkit.inference.zero_shot.ZeroShotClassifier`, the
same path as `mmkit label` and the training-time zero-shot evaluation.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import gradio as gr

from mmkit.data.images import ImageLoadError, load_image
from mmkit.inference.zero_shot import ZeroShotClassifier

HEADERS = ["image", "rank", "label", "score"]


def parse_labels(text: str) -> list[str]:
    """One label per line, or comma-separated on one line."""
    return [s.strip() for s in re.split(r"[\n,]", text or "") if s.strip()]


def parse_templates(text: str) -> list[str]:
    """One prompt template per line ("{}" marks the label)."""
    return [s.strip() for s in (text or "").splitlines() if s.strip()]


def zero_shot_tab(classifier: ZeroShotClassifier, labels: Sequence[str] | None = None,
                  templates: Sequence[str] | None = None) -> None:
    """Render the zero-shot tab into the enclosing `gr.Blocks` (so apps can combine tabs)."""

    def score(files: list[str] | None, labels_text: str, templates_text: str):
        if not files:
            raise gr.Error("Upload one or more images first.")
        labels, templates = parse_labels(labels_text), parse_templates(templates_text)
        if not labels:
            raise gr.Error("Enter at least one label.")
        images, names = [], []
        for path in files:
            try:
                images.append(load_image(path))
                names.append(Path(path).name)
            except ImageLoadError as e:
                gr.Warning(f"skipped {Path(path).name}: {e.reason}")
        if not images:
            raise gr.Error("None of the uploaded files is a readable image.")
        try:
            ranked = classifier.predict_images(images, labels, templates or None)
        except ValueError as e:  # e.g. a template without "{}"
            raise gr.Error(str(e)) from None
        rows = [[name, rank, label, round(p, 4)] for name, scores in zip(names, ranked)
                for rank, (label, p) in enumerate(scores, 1)]
        gallery = [(im, f"{name}: {scores[0][0]} ({scores[0][1]:.2f})")
                   for im, name, scores in zip(images, names, ranked)]
        return rows, gallery

    with gr.Tab("Zero-shot", elem_id="zero-shot-tab"):
        with gr.Row():
            with gr.Column():
                files = gr.File(file_count="multiple", file_types=["image"], type="filepath", label="Images",
                                elem_id="images")
                label_box = gr.Textbox("\n".join(labels if labels is not None else classifier.labels), lines=6,
                                       label="Labels (one per line, or comma-separated)", elem_id="labels")
                template_box = gr.Textbox("\n".join(templates or classifier.templates), lines=2,
                                          label="Prompt templates, one per line ({} = the label)",
                                          elem_id="templates")
                button = gr.Button("Score", variant="primary", elem_id="score")
            with gr.Column():
                gallery = gr.Gallery(label="Top label per image", elem_id="gallery", columns=4, height="auto")
                table = gr.Dataframe(headers=HEADERS, datatype=["str", "number", "str", "number"],
                                     interactive=False, label="Ranked scores", elem_id="scores")
        button.click(score, [files, label_box, template_box], [table, gallery])


def build_app(classifier: ZeroShotClassifier, labels: Sequence[str] | None = None,
              templates: Sequence[str] | None = None, title: str = "mmkit CLIP zero-shot") -> gr.Blocks:
    """A Blocks app with the zero-shot tab; labels/templates default to the checkpoint's."""
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"## {title}\nScores are softmax(scale x cosine) over the labels, "
                    "each label's text averaged over the templates.")
        zero_shot_tab(classifier, labels, templates)
    return app
