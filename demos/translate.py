"""Translation demo: type a sentence, read the translation and see the decoder's cross-attention
as a source x target heat map (the alignment picture of Bahdanau et al., 2015): row t shows
which source pieces the decoder looked at while writing target piece t. Thin over
`mmkit.inference.translator.Translator`, the path `mmkit translate` and the tests use.

`mmkit demo translate --model runs/translate_numbers/export` serves it on http://127.0.0.1:7860.
"""
from __future__ import annotations

import gradio as gr
import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from demos import inputs
from mmkit.inference.text_rows import text_problem
from mmkit.inference.translator import Translator, TranslatorError

CELL = 28  # pixels per heat-map cell
BEAM_MAX = 8  # the beam-size slider's largest value, checked for API callers too
MAX_CHARS_PER_TOKEN = 64  # far more than a token spans: the first limit x this characters hold the tokens read


def _text_width(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont) -> int:
    return int(draw.textlength(text, font=font))


def heat_map(source: list[str], target: list[str], weights: Tensor) -> Image.Image:
    """(T, S) attention weights as an image: white (0) to dark blue (the row's maximum is 1
    after scaling by the largest weight), target pieces down the left, source pieces rotated on top."""
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = 8 + max((_text_width(probe, t, font) for t in target), default=0)
    top = 8 + max((_text_width(probe, s, font) for s in source), default=0)
    T, S = weights.shape
    image = Image.new("RGB", (left + S * CELL + 4, top + T * CELL + 4), "white")
    draw = ImageDraw.Draw(image)
    peak = float(weights.max()) or 1.0
    for t in range(T):
        for s in range(S):
            v = float(weights[t, s]) / peak
            colour = (int(255 * (1 - v)), int(255 * (1 - 0.8 * v)), 255 - int(120 * v))
            x, y = left + s * CELL, top + t * CELL
            draw.rectangle([x, y, x + CELL - 1, y + CELL - 1], fill=colour)
        draw.text((4, top + t * CELL + CELL // 2 - 5), target[t], fill="black", font=font)
    for s, piece in enumerate(source):
        label = Image.new("RGB", (top - 4, CELL), "white")
        ImageDraw.Draw(label).text((2, CELL // 2 - 5), piece, fill="black", font=font)
        image.paste(label.rotate(90, expand=True), (left + s * CELL, 2))
    return image


def _source_head(translator: Translator, text: str) -> str:
    """The part of `text` the model reads, with a `gr.Warning` when the translator will cut the source.

    Only its first `max_source_tokens` tokens are translated; a token spans a few characters, so the first
    `MAX_CHARS_PER_TOKEN` x that many characters hold them all and the rest is not even tokenized."""
    limit = translator.max_source_tokens
    head = text[: limit * MAX_CHARS_PER_TOKEN]
    n = len(translator.codec.encode(translator.prefix + head))
    if n > limit:
        size = f"{n} tokens" if len(head) == len(text) else f"{len(text)} characters"
        inputs.warn(f"the source has {size}; the model reads only its first {limit - 1} tokens (and the end "
                   "of sentence): the rest is not translated")
    return head


def translate_text(translator: Translator, text: str, beam_size: float):
    """(translation, heat map, weights table) for the tab, after checking the values (the HTTP API passes
    anything: NaN, lone surrogates, invisible-only text)."""
    text = inputs.text(text, "the source")
    beam_size = inputs.whole(beam_size, "beam size", 1, BEAM_MAX)
    problem = text_problem(text)  # empty, only invisible characters (U+200B ...), NUL bytes
    if problem:
        raise inputs.refused("Type a sentence to translate." if not text.strip()
                             else f"Nothing to translate: {problem}.")
    text = _source_head(translator, text)
    try:
        result = translator.translate([text], translator.default_options(beam_size=beam_size))[0]
        if result.error:
            raise TranslatorError(result.error.removeprefix("line 1: "))
        source, target, weights = translator.cross_attention(text, result.tokens)
    except TranslatorError as e:
        raise inputs.refused(str(e)) from None
    return result.text, heat_map(source, target, weights), weights_table(source, target, weights, "target \\ source")


def weights_table(columns: list[str], rows: list[str], weights: Tensor, corner: str) -> pd.DataFrame:
    """(R, C) weights as a table: a row per piece of `rows`, a column per piece of `columns` ("i:piece": a piece
    can occur twice, a column name cannot). A DataFrame, not a `gr.Dataframe` update: the HTTP API then returns
    the table itself ({"headers", "data"}), not an update naming its value; the headers differ per request."""
    values = [[piece] + [round(float(w), 3) for w in row] for piece, row in zip(rows, weights)]
    return pd.DataFrame(values, columns=[corner] + [f"{i}:{piece}" for i, piece in enumerate(columns)])


def translate_tab(translator: Translator) -> None:
    """Render the translation tab into the enclosing `gr.Blocks`."""

    def run(text: str, beam_size: float):
        return translate_text(translator, text, beam_size)

    with gr.Tab("Translation", elem_id="translate-tab"):
        # the prefix in a code span: Markdown would read its "<" or "*" as markup
        read_as = f" Each sentence is read after the prefix `{translator.prefix}`." if translator.prefix else ""
        gr.Markdown("Type a sentence and press Translate. The heat map is the decoder's cross-attention "
                    "(mean over layers and heads): each row is a target piece, each column a source piece." + read_as)
        with gr.Row():
            with gr.Column():
                source = gr.Textbox(label="Source", lines=2, elem_id="source")
                beam = inputs.slider(1, BEAM_MAX, value=min(translator.defaults.get("beam_size", 1), BEAM_MAX), step=1,
                                     label="Beam size (1: greedy; the model's own to start)", elem_id="beam-size")
                button = gr.Button("Translate", variant="primary", elem_id="translate")
            with gr.Column():
                output = gr.Textbox(label="Translation", lines=2, interactive=False, elem_id="translation")
                picture = gr.Image(label="Cross-attention (target x source)", type="pil", elem_id="attention")
        weights = gr.Dataframe(label="Cross-attention weights", interactive=False, elem_id="weights")
        button.click(run, [source, beam], [output, picture, weights], api_name="translate")


def build_app(translator: Translator, title: str = "mmkit translation") -> gr.Blocks:
    """A Blocks app with the translation tab (see `translate_tab`)."""
    with gr.Blocks(title=title) as app:
        gr.Markdown(f"## {title}")
        translate_tab(translator)
    return app
