"""The BERT tab (demos/bert.py) in headless Chromium on a tiny transformers BertForMaskedLM: Fill
shows the API's top candidate and filled text, Show attention draws the heat map with the weights
`attention_view` gives for the chosen layer and head; a prompt without [MASK] is an error message."""
from __future__ import annotations

import pytest
from _bert import write_tiny_bert
from _browser import TIMEOUT_MS, label_top_class, open_app
from playwright.sync_api import expect

from mmkit.inference.encoder import load_encoder
from mmkit.inference.fill_mask import attention_view, fill_mask

TEXT = "the cat [MASK] the moon."


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bert")
    write_tiny_bert(directory, "mlm", seed=3)
    return load_encoder(directory)


def test_fill_and_attention_functions_match_the_api(encoder):
    from demos.bert import attention, fill

    [expected] = fill_mask(encoder, TEXT)
    candidates, filled = fill(encoder, TEXT, 5)
    assert list(candidates.items()) == expected.candidates and filled == expected.filled
    tokens, maps = attention_view(encoder, "the cat sees the moon.")
    image, _ = attention(encoder, "the cat sees the moon.", 2, 0)
    assert image.size[0] > 28 * len(tokens) and maps.shape[:2] == (2, 4)


def test_demo_fills_the_mask_and_shows_attention(page, serve_blocks, encoder):
    from demos.bert import build_app

    [expected] = fill_mask(encoder, TEXT)
    tokens, maps = attention_view(encoder, "the cat sees the moon.")
    open_app(page, serve_blocks(build_app(encoder)))
    page.locator("#mask-text textarea").fill(TEXT)
    page.locator("#fill").click()
    expect(label_top_class(page.locator("#mask-candidates"))).to_have_text(expected.candidates[0][0],
                                                                            timeout=TIMEOUT_MS)
    expect(page.locator("#filled textarea")).to_have_value(expected.filled, timeout=TIMEOUT_MS)
    page.locator("#attention-text textarea").fill("the cat sees the moon.")
    page.locator("#show-attention").click()  # layer 1, head 0: the mean of the heads
    expect(page.locator("#self-attention img").first).to_be_visible(timeout=TIMEOUT_MS)
    weights = maps[0].mean(0)
    table = page.locator("#attention-weights")
    expect(table.get_by_role("gridcell", name=f"{float(weights.max()):.3f}".rstrip("0").rstrip(".")).first) \
        .to_be_visible(timeout=TIMEOUT_MS)
    expect(table.get_by_role("columnheader", name=f"1:{tokens[1]}").first).to_be_attached(timeout=TIMEOUT_MS)
    page.locator("#mask-text textarea").fill("the cat sees the moon.")
    page.locator("#fill").click()
    expect(page.get_by_text("no [MASK] in the text").first).to_be_visible(timeout=TIMEOUT_MS)
