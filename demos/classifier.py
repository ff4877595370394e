"""Image classification demo: upload an image, see the top-k labels and where the ViT looked
(attention rollout overlay). Thin over `mmkit.tasks.Classifier`, the same path as
`mmkit predict` and the Python API.
"""
from __future__ import annotations

import gradio as gr
from PIL import Image

from mmkit.tasks.classify import Classifier


def build_app(classifier: Classifier, top_k: int = 5, title: str = "mmkit ViT classifier") -> gr.Blocks:
    """A Blocks app with an image input, a label output and an attention overlay."""

    def classify(image: Image.Image | None) -> tuple[dict[str, float], Image.Image | None]:
        if image is None:
            raise gr.Error("Upload an image first.")
        (labels, probs), = classifier.predict_images([image], top_k)
        return dict(zip(labels, probs)), classifier.attention_overlay(image)

    with gr.Blocks(title=title) as app:
        gr.Markdown(f"## {title}\n{len(classifier.class_names)} classes; "
                    "the overlay shows attention rollout (red = attended).")
        with gr.Row():
            # image_mode=None: the file's own mode reaches the Classifier, which converts it like
            # `mmkit predict` does (Gradio's default "RGB" would drop alpha instead of using white).
            image = gr.Image(type="pil", image_mode=None, label="Image", elem_id="input-image")
            with gr.Column():
                label = gr.Label(num_top_classes=top_k, label="Prediction", elem_id="prediction")
                overlay = gr.Image(type="pil", label="Attention", elem_id="attention", interactive=False)
        gr.Button("Classify", variant="primary", elem_id="classify").click(classify, image, [label, overlay])
    return app
