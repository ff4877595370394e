"""Text-to-image demo: a prompt, seed, guidance, top-k and the number of images; the gallery fills
with streaming previews (the partial code grid decoded every few rows) and then the final images,
with the grid PNG to download. Thin over `mmkit.inference.text_to_image.TextToImage.generate`, the
path of `mmkit generate` and the tests.

`mmkit demo dalle --model runs/dalle_shapes/export` serves it on http://127.0.0.1:7860.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import gradio as gr
from PIL import Image

from demos import inputs
from demos.display import for_display
from mmkit.inference.text_to_image import TextToImage, grid, to_pil
from mmkit.inference.thread_stream import ThreadStream

MAX_IMAGES = 16  # the images slider's largest value, checked for API callers too


def generate_images(t2i: TextToImage, prompt: str, num_images: float, seed: float | None, guidance: float,
                    top_k: float, folder: str | Path | None = None) -> Iterator[tuple[list[Image.Image], str | None]]:
    """Yield (gallery images, grid PNG path or None): previews while sampling, then the result. Values are
    checked first (the HTTP API passes anything); what the model does not read of the prompt (unknown
    words, words past its text length) is a `gr.Warning`, logged once by the sampler, which tokenizes only the
    part the model reads (`TextToImage.prompt_head`: a prompt of megabytes is not tokenized again). The grid PNG is
    written in `folder` (default: the system's temp folder) and removed when the generator finishes, after
    Gradio has copied it to its cache. Closing the generator early (a cancelled request, a client gone)
    stops the sampling at its next preview, as `TextGenerator.stream` does: it ran on for nobody, and each
    cancel left one more sampling thread."""
    prompt = inputs.text(prompt, "the prompt")
    num_images = inputs.whole(num_images, "images", 1, MAX_IMAGES)
    seed = inputs.seed(seed)
    guidance = inputs.real(guidance, "guidance", 0.0, guidance_max(t2i))
    top_k = inputs.whole(top_k, "top-k", 0, t2i.model.codebook_size)
    try:
        notes = t2i.check_prompt(prompt)
    except ValueError as e:  # empty prompt, no word the model knows: shown, not a traceback
        raise inputs.refused(str(e)) from None
    for note in notes:
        inputs.warn(note)
    # The whole prompt, not its head: the log then counts the words (or tokens) the prompt really has.
    value_range = t2i.vqgan.value_range  # previews convert as the final images (`to_pil`)
    sampled = ThreadStream(lambda put: t2i.generate([prompt], num_images, seed, guidance, top_k=top_k,
                                                    on_preview=lambda images: put(to_pil(images, value_range)))[0])
    try:
        for previews in sampled:
            yield [for_display(im) for im in previews], None
    except ValueError as e:  # bad settings: shown, not a traceback
        raise inputs.refused(str(e)) from None
    finally:
        sampled.close()
    images = sampled.result.images
    fd, path = tempfile.mkstemp(prefix="mmkit-t2i-", suffix=".png", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            grid(images).save(f, format="PNG")
        yield [for_display(im) for im in images], path
    finally:  # Gradio copies an output file to its cache before asking for the next value
        Path(path).unlink(missing_ok=True)


def guidance_max(t2i: TextToImage) -> float:
    """The guidance slider's largest value: the model's default guidance at least twice over."""
    return max(5.0, 2 * t2i.defaults["guidance"])


def text_to_image_tab(t2i: TextToImage) -> None:
    """Render the text-to-image tab into the enclosing `gr.Blocks`."""
    codebook = t2i.model.codebook_size
    # One folder for this app's grid PNGs, removed when the app is garbage-collected or Python exits; each
    # request's file is removed once Gradio has copied it (`generate_images`), so the folder stays small.
    grids = tempfile.TemporaryDirectory(prefix="mmkit-t2i-")

    def run(prompt: str, num_images: float, seed: float | None, guidance: float, top_k: float):
        yield from generate_images(t2i, prompt, num_images, seed, guidance, top_k, grids.name)

    with gr.Tab("Text to image", elem_id="text-to-image-tab"):
        gr.Markdown(f"**Prompt**: {t2i.vocabulary_note()}. Guidance 1 is off; the gallery shows previews while the "
                    "image codes are sampled row by row.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", value="a small red circle on the left", elem_id="t2i-prompt")
                num = inputs.slider(1, MAX_IMAGES, value=4, step=1, label="Images", elem_id="t2i-num")
                # precision None: gradio's own rounding (precision=0) fails on NaN before `generate_images` checks it
                seed = gr.Number(value=0, label="Seed", elem_id="t2i-seed")
                # the model's own defaults: the recipe's judged settings, or min-dalle's (guidance 16, top-k 256)
                g0, k0 = t2i.defaults["guidance"], t2i.defaults["top_k"] or 0
                guidance = inputs.slider(0.0, guidance_max(t2i), value=g0, step=0.25, label="Guidance",
                                     elem_id="t2i-guidance")
                top_k = inputs.slider(0, codebook, value=k0, step=1, label="Top-k (0: off)", elem_id="t2i-top-k")
                with gr.Row():
                    button = gr.Button("Generate", variant="primary", elem_id="t2i-generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="t2i-stop")
            with gr.Column():
                gallery = gr.Gallery(label="Images", columns=4, elem_id="t2i-gallery")
                download = gr.File(label="Grid PNG", elem_id="t2i-download")
        event = button.click(run, [prompt, num, seed, guidance, top_k], [gallery, download],
                             api_name="generate_images")
        # Cancelling closes `generate_images`, which stops the sampling at its next preview.
        stop.click(None, cancels=[event], api_visibility="private")


def build_app(t2i: TextToImage, title: str = "mmkit text to image") -> gr.Blocks:
    """A Blocks app with the text-to-image tab."""
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"## {title}")
        text_to_image_tab(t2i)
    return app
