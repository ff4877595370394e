"""The text-to-image tab (demos/text_to_image.py): previews stream before the final images, which
equal the API's; in headless Chromium the gallery fills and the grid is offered for download; an
empty prompt is an error message, not a crash."""
from __future__ import annotations

import pytest
from _browser import TIMEOUT_MS, open_app
from _dalle import tiny_text_to_image
from playwright.sync_api import expect
from PIL import Image


@pytest.fixture(scope="module")
def t2i():
    return tiny_text_to_image()


def test_previews_then_the_api_images(t2i):
    import gradio as gr

    from demos.text_to_image import generate_images

    states = list(generate_images(t2i, "a red circle", 3, 5, 1.0, 4))
    assert len(states) >= 2 and all(path is None for _, path in states[:-1]) and states[-1][1].endswith(".png")
    api = t2i.generate(["a red circle"], 3, 5, 1.0, top_k=4)[0].images
    final = states[-1][0]
    assert len(final) == 3
    assert [im.resize(api[0].size, Image.NEAREST).tobytes() for im in final] == [im.tobytes() for im in api]
    with pytest.raises(gr.Error, match="empty prompt"):
        list(generate_images(t2i, " ", 1, 0, 1.0, 4))


def test_demo_fills_the_gallery(page, serve_blocks, t2i):
    from demos.text_to_image import build_app

    open_app(page, serve_blocks(build_app(t2i)))
    page.locator("#t2i-prompt textarea").fill("a large blue star at the top")
    page.locator("#t2i-generate").click()
    expect(page.locator("#t2i-gallery img")).to_have_count(4, timeout=TIMEOUT_MS)
    expect(page.locator("#t2i-download a").first).to_be_visible(timeout=TIMEOUT_MS)
    page.locator("#t2i-prompt textarea").fill("  ")
    page.locator("#t2i-generate").click()
    expect(page.get_by_text("empty prompt").first).to_be_visible(timeout=TIMEOUT_MS)


def test_mmkit_demo_knows_the_family(tmp_path):
    from _dalle import write_tiny_export

    from mmkit.cli.demo import DEMOS, _checkpoint_problem, dalle_tab

    export = write_tiny_export(tmp_path / "export")
    assert DEMOS["dalle"].default == "runs/dalle_shapes/export"
    assert _checkpoint_problem("dalle", export) is None
    assert callable(dalle_tab(export, 5))
