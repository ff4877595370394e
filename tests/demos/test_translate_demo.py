"""The translation demo (demos/translate.py) in headless Chromium: type a sentence, press
Translate, and see the translation the Python API (`Translator.translate`) gives, the
cross-attention heat map and its weights table equal to `Translator.cross_attention`; values the HTTP API
passes on (NaN, lone surrogates, invisible text, over-long sources) are one-line errors or warnings."""
from __future__ import annotations

import pytest
import torch
from playwright.sync_api import expect

from _browser import TIMEOUT_MS, open_app
from mmkit.inference.translator import load_translator
from tests.inference._translation_fixtures import write_native_export

SOURCE = "one hundred and twenty-three"


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    return load_translator(write_native_export(tmp_path_factory.mktemp("translate_demo")))


def test_demo_shows_the_api_translation_and_its_cross_attention(page, serve_blocks, translator):
    from demos.translate import build_app, heat_map

    expected = translator.translate([SOURCE])[0]
    source, target, weights = translator.cross_attention(SOURCE, expected.tokens)
    assert expected.text and weights.shape == (len(target), len(source))
    image = heat_map(source, target, weights)
    assert image.width > 28 * len(source) and image.height > 28 * len(target)

    open_app(page, serve_blocks(build_app(translator)))
    page.locator("#source textarea").fill(SOURCE)
    page.locator("#translate").click()
    expect(page.locator("#translation textarea")).to_have_value(expected.text, timeout=TIMEOUT_MS)
    expect(page.locator("#attention img").first).to_be_visible(timeout=TIMEOUT_MS)
    table = page.locator("#weights")
    t, s = divmod(int(torch.argmax(weights)), weights.shape[1])
    expect(table.get_by_role("gridcell", name=f"{float(weights[t, s]):.3f}".rstrip("0").rstrip(".")).first) \
        .to_be_visible(timeout=TIMEOUT_MS)
    expect(table.get_by_role("columnheader", name=f"0:{source[0]}").first).to_be_attached(timeout=TIMEOUT_MS)


def test_demo_reports_empty_and_unencodable_input(page, serve_blocks, translator):
    from demos.translate import build_app

    open_app(page, serve_blocks(build_app(translator)))
    page.locator("#translate").click()
    expect(page.get_by_text("Type a sentence to translate.").first).to_be_visible(timeout=TIMEOUT_MS)
    page.locator("#source textarea").fill("Привет мир")
    page.locator("#translate").click()
    expect(page.get_by_text("cannot encode 2 of 2 words").first).to_be_visible(timeout=TIMEOUT_MS)


@pytest.mark.parametrize("text, beam, message", [
    ("\u200b\u200b", 1, r"Nothing to translate: empty text \(only control or invisible characters\)"),
    ("a\x00b", 1, "Nothing to translate: holds NUL bytes"),
    ("one \ud800 two", 1, "the source is not valid Unicode: an unpaired surrogate"),
    (SOURCE, float("nan"), r"beam size must be a whole number in \[1, 8\], got nan"),
    (SOURCE, 0, r"beam size must be a whole number in \[1, 8\], got 0"),
])
def test_odd_values_from_the_http_api_are_one_line_errors(translator, text, beam, message):
    """Invisible-only text gave an empty translation and a heat map; a lone surrogate a pybind11
    RuntimeError; a NaN beam size int()'s ValueError."""
    import gradio as gr

    from demos.translate import translate_text

    with pytest.raises(gr.Error, match=message):
        translate_text(translator, text, beam)


def test_a_source_past_the_models_tokens_is_cut_with_a_warning(translator, monkeypatch):
    """The translator keeps a source's first max_source_tokens tokens; the browser user is told, and a
    source of megabytes is not tokenized past what the model reads."""
    from demos.translate import translate_text

    long = " ".join([SOURCE] * 40)
    limit = translator.max_source_tokens
    expected = translator.translate([long])[0].text
    with pytest.warns(UserWarning, match=f"the source has [0-9]+ tokens; the model reads only its first {limit - 1}"):
        text, _, _ = translate_text(translator, long, 1)
    assert text == expected
    huge = " ".join([SOURCE] * 100_000)
    encoded: list[int] = []
    encode = translator.codec.encode
    monkeypatch.setattr(translator.codec, "encode", lambda t: encoded.append(len(t)) or encode(t))
    with pytest.warns(UserWarning, match=f"the source has {len(huge)} characters; the model reads only"):
        text, _, _ = translate_text(translator, huge, 1)
    assert text == expected and max(encoded) <= 64 * limit


def test_a_beam_size_out_of_range_over_http_names_the_field(serve_blocks, translator, capfd):
    """Gradio's slider answered "Value 9 is greater than maximum value 8." with a server traceback; the endpoint
    was /run, or /run_N after the tabs served before it."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from demos.translate import build_app

    app = build_app(translator)
    assert [f.api_name for f in app.fns.values()] == ["translate"]
    client = Client(serve_blocks(app), verbose=False)
    capfd.readouterr()
    with pytest.raises(AppError, match=r"^beam size must be a whole number in \[1, 8\], got 9$"):
        client.predict(SOURCE, 9, api_name="/translate")
    assert "Traceback" not in capfd.readouterr().err


def test_the_api_returns_the_weights_table_itself(serve_blocks, translator):
    """/translate returned a component update ({"__type__": "update", "value": ...}), not the table."""
    from gradio_client import Client

    from demos.translate import build_app

    expected = translator.translate([SOURCE])[0]
    source, target, weights = translator.cross_attention(SOURCE, expected.tokens)
    text, _, table = Client(serve_blocks(build_app(translator)), verbose=False).predict(SOURCE, 1,
                                                                                      api_name="/translate")
    assert text == expected.text and "__type__" not in table
    assert table["headers"] == ["target \\ source"] + [f"{i}:{s}" for i, s in enumerate(source)]
    assert table["data"] == [[piece] + [round(float(w), 3) for w in row] for piece, row in zip(target, weights)]
