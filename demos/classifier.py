"""Image classification demo: upload an image, see the top-k labels and where the ViT looked
(attention rollout overlay). Thin over `mmkit.inference.Classifier`, the same path as
`mmkit predict` and the Python API.
"""
from __future__ import annotations

import gradio as gr
from gradio.data_classes import ImageData
from gradio.processing_utils import save_base64_to_cache
from PIL import Image

from demos.display import MAX_DISPLAY_SIDE, for_display
from demos.inputs import refused
from mmkit import demo_harness
from mmkit.data.images import ImageLoadError, load_image
from mmkit.inference.classifier import Classifier


def image_path_input(**kwargs: object) -> gr.Image:
    """A gr.Image input that hands the uploaded file's path over undecoded. Gradio's own preprocess
    opens the file with PIL even for type="filepath" (Gradio 6.31), so a PDF, an empty file or a
    200-megapixel bomb raised there as a bare "Error"; here mmkit's loader is the only decoder.
    The preprocess is replaced on the instance, not in a subclass: Gradio's component metaclass
    writes a `.pyi` file beside the module of every subclass, i.e. into the installed package."""
    image = gr.Image(type="filepath", **kwargs)

    def preprocess(payload: ImageData | None) -> str | None:
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):  # an API client's inline image: bytes, not decoded
            _check_inline_size(payload.url)
            return save_base64_to_cache(payload.url, image.GRADIO_CACHE)
        return payload.path

    image.preprocess = preprocess  # type: ignore[method-assign]
    return image


def _check_inline_size(url: str) -> None:
    """Refuse a data: URL whose bytes would exceed the upload cap (`demo_harness.MAX_FILE_SIZE`), from its
    length alone: it comes in the request's JSON, not through /upload, so Gradio's cap never saw it, and
    decoding it would hold a second copy and write it to the cache (a 210 MB image was accepted)."""
    header, _, data = url.partition(",")
    size = len(data) * 3 // 4 - data[-2:].count("=") if header.endswith(";base64") else len(data)
    cap = demo_harness.MAX_FILE_SIZE
    if size > cap:
        raise refused(f"the image is {size:,} bytes: at most {cap:,} (the upload limit)")


def classifier_tab(classifier: Classifier, top_k: int = 5) -> None:
    """Render the classification tab into the enclosing `gr.Blocks`."""

    def classify(path: str | None) -> tuple[dict[str, float], Image.Image, Image.Image]:
        if not path:
            raise refused("Upload an image first.")
        try:  # mmkit's decoder with its limits (decompression bombs refused from the header)
            image = load_image(path)
        except ImageLoadError as e:
            raise refused(f"Cannot read this image: {e.reason}") from None
        (labels, probs), = classifier.predict_images([image], top_k)
        shown = for_display(image)  # at most MAX_DISPLAY_SIDE a side: the overlay is drawn on it
        return dict(zip(labels, probs)), shown, classifier.attention_overlay(image, canvas=shown)

    with gr.Tab("Classify", elem_id="classify-tab"):
        gr.Markdown(f"{len(classifier.class_names)} classes; the overlay shows attention rollout "
                    f"(red = attended). Small images are shown enlarged, large ones at most "
                    f"{MAX_DISPLAY_SIDE} px a side.")
        with gr.Row():
            image = image_path_input(label="Image", elem_id="input-image")
            with gr.Column():
                label = gr.Label(num_top_classes=top_k, label="Prediction", elem_id="prediction")
                with gr.Row():
                    shown = gr.Image(type="pil", label="Input (as shown)", elem_id="shown", interactive=False)
                    overlay = gr.Image(type="pil", label="Attention", elem_id="attention", interactive=False)
        gr.Button("Classify", variant="primary", elem_id="classify").click(classify, image, [label, shown, overlay],
                                                                           api_name="classify")


def build_app(classifier: Classifier, top_k: int = 5, title: str = "mmkit ViT classifier") -> gr.Blocks:
    """A Blocks app with the classification tab."""
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"## {title}")
        classifier_tab(classifier, top_k)
    return app
