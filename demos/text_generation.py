"""Text generation demo: type a prompt, watch a GPT continue it token by token (Gradio streams the
generator's pieces). Thin over `mmkit.inference.text_generation.TextGenerator.stream`, the path the
command line (`mmkit generate-text`) and the tests use. Temperature 0 decodes greedily.

`mmkit demo gpt --model runs/gpt_fortunes/export` serves it on http://127.0.0.1:7860.
"""
from __future__ import annotations

from typing import Iterator

import gradio as gr

from demos import inputs
from mmkit.core import GenerationOptions
from mmkit.inference.text_generation import TextGenerator

TEMPERATURE_MAX, TOP_K_MAX, TOP_P_MIN = 2.0, 200, 0.05  # the sliders' ranges, checked for API callers too


def continue_prompt(generator: TextGenerator, prompt: str, max_new_tokens: float, temperature: float, top_k: float,
                    top_p: float, seed: float | None) -> Iterator[str]:
    """Yield the prompt followed by the continuation so far, after each new piece of text. Values are checked
    first (the HTTP API passes anything: NaN, 1e30, lone surrogates); a prompt cut to fit the context is a
    `gr.Warning` saying so."""
    prompt = inputs.text(prompt, "the prompt")
    max_new_tokens = inputs.whole(max_new_tokens, "max new tokens", 1, max(1, generator.model.max_len - 1))
    temperature = inputs.real(temperature, "temperature", 0.0, TEMPERATURE_MAX)
    top_k = inputs.whole(top_k, "top-k", 0, TOP_K_MAX)
    top_p = inputs.real(top_p, "top-p", TOP_P_MIN, 1.0)
    seed = inputs.seed(seed)
    try:
        options = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature,
                                    top_k=(top_k or None) if temperature > 0 else None,
                                    top_p=top_p if temperature > 0 and top_p < 1 else None, seed=seed)
        prepared = generator.prepare_prompt(prompt, max_new_tokens)  # tokenized once; a bad prompt fails here
        pieces = generator.stream(prepared, options)
    except ValueError as e:  # empty prompt, no room in the context: shown, not a traceback
        raise inputs.refused(str(e)) from None
    if prepared.note:
        inputs.warn(prepared.note)
    text = prompt
    yield text
    for piece in pieces:
        text += piece
        yield text


def text_generation_tab(generator: TextGenerator, max_new_tokens: int = 64) -> None:
    """Render the text-generation tab into the enclosing `gr.Blocks`."""
    limit = max(1, generator.model.max_len - 1)

    def run(prompt: str, new_tokens: float, temperature: float, top_k: float, top_p: float,
            seed: float | None) -> Iterator[str]:
        yield from continue_prompt(generator, prompt, new_tokens, temperature, top_k, top_p, seed)

    with gr.Tab("Text generation", elem_id="text-generation-tab"):
        gr.Markdown("Type a prompt and press Generate; the continuation streams in as it is decoded. "
                    "Temperature 0 is greedy decoding; above 0 it samples (top-k, top-p, seed apply).")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt")
                new_tokens = inputs.slider(1, limit, value=min(max_new_tokens, limit), step=1, label="Max new tokens",
                                       elem_id="max-new-tokens")
                temperature = inputs.slider(0.0, TEMPERATURE_MAX, value=0.0, step=0.05, label="Temperature",
                                        elem_id="temperature")
                top_k = inputs.slider(0, TOP_K_MAX, value=40, step=1, label="Top-k (0: off)", elem_id="top-k")
                top_p = inputs.slider(TOP_P_MIN, 1.0, value=1.0, step=0.05, label="Top-p", elem_id="top-p")
                # precision None: gradio's own rounding (precision=0) fails on NaN before `continue_prompt` checks it
                seed = gr.Number(value=0, label="Seed", elem_id="seed")
                with gr.Row():
                    button = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Column():
                output = gr.Textbox(label="Text", lines=12, interactive=False, elem_id="generated")
        event = button.click(run, [prompt, new_tokens, temperature, top_k, top_p, seed], output,
                             api_name="generate_text")
        # Cancelling closes the stream, which stops the decoding (`TextGenerator.stream`); the text so far stays.
        stop.click(None, cancels=[event], api_visibility="private")


def build_app(generator: TextGenerator, title: str = "mmkit text generation") -> gr.Blocks:
    """A Blocks app with the text-generation tab (see `text_generation_tab`)."""
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"## {title}")
        text_generation_tab(generator)
    return app
