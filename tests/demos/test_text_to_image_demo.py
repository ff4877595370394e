"""The text-to-image tab (demos/text_to_image.py): previews stream before the final images, which
equal the API's; in headless Chromium the gallery fills and the grid is offered for download; an
empty prompt, one with no word the model knows and odd API values are error messages, not a crash; what
the model does not read of a prompt is a warning; the grid PNG does not outlive its request."""
from __future__ import annotations

from pathlib import Path

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


@pytest.mark.parametrize("prompt, note", [
    ("a red elephant circle", "words outside the vocabulary ignored: elephant"),
    ("a small red circle on the left at the top", "the prompt has 10 words; the model reads only the first 8"),
])
def test_what_the_model_does_not_read_is_a_warning(t2i, prompt, note):
    from demos.text_to_image import generate_images

    with pytest.warns(UserWarning, match=note):
        states = list(generate_images(t2i, prompt, 1, 0, 1.0, 4))
    assert len(states[-1][0]) == 1


@pytest.mark.parametrize("prompt", ["!!!", "123", "\u200b", "elephant giraffe"])
def test_a_prompt_that_encodes_to_nothing_is_refused(t2i, prompt):
    """"!!!", "123" or "\u200b" encoded to padding alone and still made images."""
    import gradio as gr

    from demos.text_to_image import generate_images

    with pytest.raises(gr.Error, match="no word the model knows"):
        list(generate_images(t2i, prompt, 1, 0, 1.0, 4))


@pytest.mark.parametrize("args, message", [
    (("a\ud800 red circle", 1, 0, 1.0, 4), "the prompt is not valid Unicode"),
    (("a red circle", float("nan"), 0, 1.0, 4), r"images must be a whole number in \[1, 16\], got nan"),
    (("a red circle", 1, float("nan"), 1.0, 4), r"seed must be a whole number in \[0, 2\*\*64 - 1\], got nan"),
    (("a red circle", 1, 1e30, 1.0, 4), r"seed must be a whole number in \[0, 2\*\*64 - 1\], got 1e\+30"),
    (("a red circle", 1, 0, float("nan"), 4), r"guidance must be a number in \[0.0, 5.0\], got nan"),
    (("a red circle", 1, 0, 1.0, 17), r"top-k must be a whole number in \[0, 16\], got 17"),
])
def test_odd_values_from_the_http_api_are_one_line_errors(t2i, args, message):
    import gradio as gr

    from demos.text_to_image import generate_images

    with pytest.raises(gr.Error, match=message):
        list(generate_images(t2i, *args))


def test_each_grid_png_is_removed_once_served(t2i, tmp_path):
    """Every request left a new /tmp/mmkit-t2i-*/grid.png behind: now the grid is written in the tab's one
    folder and removed when the generator finishes (Gradio has copied it to its cache by then)."""
    from demos.text_to_image import generate_images

    states = generate_images(t2i, "a red circle", 2, 1, 1.0, 4, folder=tmp_path)
    path = None
    for _, path in states:
        if path is not None:
            assert Path(path).parent == tmp_path and Image.open(path).size[0] > 0  # there while it is served
    assert path is not None and list(tmp_path.iterdir()) == []


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
