"""Text generation demo: type a prompt, watch a GPT continue it token by token (Gradio streams the
generator's pieces). Thin over `mmkit.inference.text_generation.TextGenerator.stream`, the path the
command line (`mmkit generate-text`) and the tests use. The model's own decoding settings (a GPT-2 directory's
generation config, an export's) hold as in the command line: the sliders start at its sampling settings, its
repetition rules apply, and temperature 0 decodes without sampling (greedily, or with its beams).

`mmkit demo gpt --model runs/gpt_fortunes/export` serves it on http://127.0.0.1:7860.
"""
from __future__ import annotations

from typing import Iterator

import gradio as gr

from demos import inputs
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
    try:  # the sliders given over the model's own settings, as the command line's flags (top-k 0: off)
        sampling = {"top_k": top_k, "top_p": top_p} if temperature > 0 else {}
        options = generator.default_options(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                            **sampling)
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


def starting_values(generator: TextGenerator, max_new_tokens: int = 64) -> dict[str, float]:
    """The sliders' first values, within their ranges: the model's own settings (a sampling generation config's
    temperature, top-k and top-p; else, for the top-k and top-p, what its sampling takes where not given: a GPT-2's
    top-k 50; its max_new_tokens, else `max_new_tokens`, at most the context less one). Temperature 0 where the
    model does not sample; top-k 40 where it says nothing (0, off, where it samples among all tokens)."""
    own, fallbacks = generator.defaults, generator.sampling_fallbacks
    length = min(own.get("max_new_tokens", max_new_tokens), max(1, generator.model.max_len - 1))
    samples = (own.get("temperature") or 0) > 0 or "top_k" in own or "top_p" in own
    temperature = own.get("temperature", 1.0) if samples else 0.0
    top_k = own.get("top_k", fallbacks.get("top_k", 0 if samples else 40))
    top_p = own.get("top_p", fallbacks.get("top_p", 1.0))
    return {"temperature": min(temperature, TEMPERATURE_MAX), "top_k": min(top_k, TOP_K_MAX),
            "top_p": max(top_p, TOP_P_MIN), "max_new_tokens": length}


def text_generation_tab(generator: TextGenerator, max_new_tokens: int = 64) -> None:
    """Render the text-generation tab into the enclosing `gr.Blocks`."""
    limit = max(1, generator.model.max_len - 1)
    start = starting_values(generator, max_new_tokens)

    def run(prompt: str, new_tokens: float, temperature: float, top_k: float, top_p: float,
            seed: float | None) -> Iterator[str]:
        yield from continue_prompt(generator, prompt, new_tokens, temperature, top_k, top_p, seed)

    with gr.Tab("Text generation", elem_id="text-generation-tab"):
        gr.Markdown("Type a prompt and press Generate; the continuation streams in as it is decoded. "
                    "Temperature 0 does not sample (greedy decoding, or the model's own beam search); above 0 it "
                    "samples (top-k, top-p, seed apply). The sliders start at the model's own settings.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt")
                new_tokens = inputs.slider(1, limit, value=start["max_new_tokens"], step=1, label="Max new tokens",
                                           elem_id="max-new-tokens")
                temperature = inputs.slider(0.0, TEMPERATURE_MAX, value=start["temperature"], step=0.05,
                                            label="Temperature", elem_id="temperature")
                top_k = inputs.slider(0, TOP_K_MAX, value=start["top_k"], step=1, label="Top-k (0: off)",
                                      elem_id="top-k")
                top_p = inputs.slider(TOP_P_MIN, 1.0, value=start["top_p"], step=0.05, label="Top-p",
                                      elem_id="top-p")
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
