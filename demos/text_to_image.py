"""Text-to-image demo: a prompt, seed, guidance, top-k and the number of images; the gallery fills
with streaming previews (the partial code grid decoded every few rows) and then the final images,
with the grid PNG to download. Thin over `mmkit.inference.text_to_image.TextToImage.generate`, the
path of `mmkit generate` and the tests.

`mmkit demo dalle --model runs/dalle_shapes/export` serves it on http://127.0.0.1:7860.
"""
from __future__ import annotations

import queue
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import gradio as gr
from PIL import Image

from demos.display import for_display
from mmkit.inference.text_to_image import TextToImage, to_pil


def generate_images(t2i: TextToImage, prompt: str, num_images: float, seed: float | None, guidance: float,
                    top_k: float) -> Iterator[tuple[list[Image.Image], str | None]]:
    """Yield (gallery images, grid PNG path or None): previews while sampling, then the result."""
    updates: queue.Queue = queue.Queue()
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["result"] = t2i.generate([prompt or ""], int(num_images), None if seed is None else int(seed),
                                             float(guidance), top_k=int(top_k) or None,
                                             on_preview=lambda images: updates.put(to_pil(images)))[0]
        except ValueError as e:  # empty prompt, unknown words only, bad settings: shown, not a traceback
            outcome["error"] = str(e)
        finally:
            updates.put(None)

    threading.Thread(target=work, daemon=True).start()
    while (previews := updates.get()) is not None:
        yield [for_display(im) for im in previews], None
    if "error" in outcome:
        raise gr.Error(outcome["error"])
    images = outcome["result"].images
    from mmkit.cli.generate import grid

    path = Path(tempfile.mkdtemp(prefix="mmkit-t2i-")) / "grid.png"
    grid(images).save(path)
    yield [for_display(im) for im in images], str(path)


def text_to_image_tab(t2i: TextToImage) -> None:
    """Render the text-to-image tab into the enclosing `gr.Blocks`."""
    codebook = t2i.model.codebook_size

    def run(prompt: str, num_images: float, seed: float | None, guidance: float, top_k: float):
        yield from generate_images(t2i, prompt, num_images, seed, guidance, top_k)

    with gr.Tab("Text to image", elem_id="text-to-image-tab"):
        gr.Markdown(f"Words the model knows: {' '.join(t2i.tokenizer.vocab[2:])}. Guidance 1 is off; the "
                    "gallery shows previews while the image codes are sampled row by row.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", value="a small red circle on the left", elem_id="t2i-prompt")
                num = gr.Slider(1, 16, value=4, step=1, label="Images", elem_id="t2i-num")
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="t2i-seed")
                # the model's own defaults: the recipe's judged settings, or min-dalle's (guidance 16, top-k 256)
                g0, k0 = t2i.defaults["guidance"], t2i.defaults["top_k"] or 0
                guidance = gr.Slider(0.0, max(5.0, 2 * g0), value=g0, step=0.25, label="Guidance",
                                     elem_id="t2i-guidance")
                top_k = gr.Slider(0, codebook, value=k0, step=1, label="Top-k (0: off)", elem_id="t2i-top-k")
                button = gr.Button("Generate", variant="primary", elem_id="t2i-generate")
            with gr.Column():
                gallery = gr.Gallery(label="Images", columns=4, elem_id="t2i-gallery")
                download = gr.File(label="Grid PNG", elem_id="t2i-download")
        button.click(run, [prompt, num, seed, guidance, top_k], [gallery, download])


def build_app(t2i: TextToImage, title: str = "mmkit text to image") -> gr.Blocks:
    """A Blocks app with the text-to-image tab."""
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"## {title}")
        text_to_image_tab(t2i)
    return app
