"""Image classification demo: upload an image, see the top-k labels and where the ViT looked
(attention rollout overlay). Thin over `mmkit.inference.Classifier`, the same path as
`mmkit predict` and the Python API.
"""
from __future__ import annotations

import gradio as gr
from PIL import Image

from demos.display import for_display
from mmkit.data.images import ImageLoadError, load_image
from mmkit.inference.classifier import Classifier


def classifier_tab(classifier: Classifier, top_k: int = 5) -> None:
    """Render the classification tab into the enclosing `gr.Blocks`."""

    def classify(path: str | None) -> tuple[dict[str, float], Image.Image, Image.Image]:
        if not path:
            raise gr.Error("Upload an image first.")
        try:  # mmkit's decoder with its limits (decompression bombs refused from the header)
            image = load_image(path)
        except ImageLoadError as e:
            raise gr.Error(f"Cannot read this image: {e.reason}") from None
        (labels, probs), = classifier.predict_images([image], top_k)
        overlay = classifier.attention_overlay(image)
        return dict(zip(labels, probs)), for_display(image.convert("RGB")), for_display(overlay)

    with gr.Tab("Classify", elem_id="classify-tab"):
        gr.Markdown(f"{len(classifier.class_names)} classes; the overlay shows attention rollout "
                    "(red = attended). Small images are shown enlarged.")
        with gr.Row():
            # type="filepath": Gradio hands over the uploaded file undecoded, so mmkit's own loader
            # (bomb check, EXIF, alpha on white, like `mmkit predict`) is the only decoder.
            image = gr.Image(type="filepath", image_mode=None, label="Image", elem_id="input-image")
            with gr.Column():
                label = gr.Label(num_top_classes=top_k, label="Prediction", elem_id="prediction")
                with gr.Row():
                    shown = gr.Image(type="pil", label="Input (enlarged)", elem_id="shown", interactive=False)
                    overlay = gr.Image(type="pil", label="Attention", elem_id="attention", interactive=False)
        gr.Button("Classify", variant="primary", elem_id="classify").click(classify, image, [label, shown, overlay])


def build_app(classifier: Classifier, top_k: int = 5, title: str = "mmkit ViT classifier") -> gr.Blocks:
    """A Blocks app with the classification tab."""
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"## {title}")
        classifier_tab(classifier, top_k)
    return app
