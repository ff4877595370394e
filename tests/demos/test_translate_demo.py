"""The translation demo (demos/translate.py) in headless Chromium: type a sentence, press
Translate, and see the translation the Python API (`Translator.translate`) gives, the
cross-attention heat map and its weights table equal to `Translator.cross_attention`."""
from __future__ import annotations

import pytest
import torch
from playwright.sync_api import expect

from _browser import TIMEOUT_MS, open_app
from mmkit.inference.translator import load_translator
from tests.inference._translation_fixtures import write_native_export

pytestmark = pytest.mark.browser
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
