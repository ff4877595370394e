"""The text-to-image tab (demos/text_to_image.py): previews stream before the final images, which
equal the API's; in headless Chromium the gallery fills and the grid is offered for download; an
empty prompt, one with no word the model knows and odd API values are error messages, not a crash; what
the model does not read of a prompt is a warning; the grid PNG does not outlive its request."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _browser import TIMEOUT_MS, open_app
from _dalle import tiny_text_to_image
from playwright.sync_api import expect
from PIL import Image

from mmkit.data.dalle_shapes import caption_vocabulary
from mmkit.data.dalle_text import WordTokenizer
from mmkit.inference.text_to_image import TextToImage
from mmkit.models import DALLE, VQGAN


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

    from mmkit.cli.demo import DEMOS, TabSettings, _checkpoint_problem, dalle_tab

    export = write_tiny_export(tmp_path / "export")
    assert DEMOS["dalle"].default == "runs/dalle_shapes/export"
    assert _checkpoint_problem("dalle", export, "--dalle") is None
    assert callable(dalle_tab(export, TabSettings()))


def _slow_text_to_image() -> TextToImage:
    """A 16 x 16 code grid: 7 previews per batch (every 2 rows), so a test can close the stream mid-way."""
    torch.manual_seed(0)
    vqgan = VQGAN(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(), z_channels=8, codebook_size=16, code_dim=8,
                  norm_groups=4)
    model = DALLE(text_vocab_size=32, text_len=8, codebook_size=16, image_grid=16, dim=32, depth=1, num_heads=2)
    return TextToImage(model, vqgan, WordTokenizer(caption_vocabulary(), 8))


def test_closing_the_stream_stops_the_sampling():
    """A cancelled request (Gradio closes the generator) left its sampling thread running to the end for nobody,
    and each cancel one more: now the next preview stops it."""
    import threading

    from demos.text_to_image import generate_images

    t2i = _slow_text_to_image()
    previews, preview = [], t2i.preview
    t2i.preview = lambda rows: previews.append(rows.shape[1]) or preview(rows)
    before = set(threading.enumerate())
    states = generate_images(t2i, "a red circle", 4, 0, 1.0, 4)
    next(states)
    workers = set(threading.enumerate()) - before
    states.close()
    for worker in workers:
        worker.join(timeout=60)
    assert workers and not any(w.is_alive() for w in workers)
    assert len(previews) < 3, previews  # 7 when it ran on (one batch of 4 images, a preview every 2 rows)
    assert len(list(generate_images(t2i, "a red circle", 1, 0, 1.0, 4))) == 8  # 7 previews, then the images


@pytest.mark.parametrize("prompt, refusal", [
    ("zebra " * 200_000, "no word the model knows"),
    ("a\ud800b " * 100_000, "not valid Unicode"),
])
def test_a_huge_prompt_is_refused_in_a_short_message(t2i, prompt, refusal):
    """A 1.2 MB prompt was quoted whole in the refusal (and the log)."""
    import gradio as gr

    from demos.text_to_image import generate_images

    with pytest.raises(gr.Error, match=refusal) as refused:
        list(generate_images(t2i, prompt, 1, 0, 1.0, 4))
    assert len(refused.value.message) < 400, refused.value.message[:500]


def test_a_huge_prompts_warnings_name_each_unknown_word_it_reads_once(t2i, caplog):
    """"red zebra zebra ..." (1.2 MB) named "zebra" 200,000 times in a warning of megabytes, quoted the whole prompt
    in the log, and the tokenizer logged it again on every request; unknown words past the text length (the model
    never reads them) were named too."""
    import warnings

    from demos.text_to_image import generate_images

    prompt = "a red zebra zebra circle " + " ".join(f"word{chr(97 + i % 26)}x{chr(97 + i // 26 % 26)}"
                                                    for i in range(1000)) + " zebra elephant" * 100_000
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING"):
        warnings.simplefilter("always")
        states = list(generate_images(t2i, prompt, 1, 0, 1.0, 4))
    assert len(states[-1][0]) == 1
    notes = [str(w.message) for w in caught]
    assert notes == ["words outside the vocabulary ignored: zebra, wordaxa, wordbxa, wordcxa",
                     "the prompt has 201,005 words; the model reads only the first 8"], notes
    assert caplog.records and all(len(r.getMessage()) < 400 for r in caplog.records), \
        [r.getMessage()[:200] for r in caplog.records]
    assert len(t2i.prompt_head(prompt)) < 100


def test_unknown_words_are_capped(t2i):
    from mmkit.inference.text_to_image import MAX_NAMED_WORDS

    t2i.tokenizer.text_len, text_len = 100, t2i.tokenizer.text_len  # reads 100 words: 98 of them unknown
    try:
        notes = t2i.check_prompt("a red " + " ".join(f"x{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(98)))
    finally:
        t2i.tokenizer.text_len = text_len
    named = notes[0].removeprefix("words outside the vocabulary ignored: ").split(", ")
    assert len(named) == MAX_NAMED_WORDS and named[-1].endswith(f"and {98 - MAX_NAMED_WORDS} more"), notes


@pytest.mark.parametrize("prompt", ["a red circle", "a red circle on the left at the top", "red,circle " * 10,
                                    "  a  red\tcircle\n" * 5, "elephant " * 3 + "a red circle"])
def test_the_prompt_head_gives_the_models_ids(t2i, prompt):
    head = t2i.prompt_head(prompt)
    assert torch.equal(t2i.tokenizer([head]), t2i.tokenizer([prompt])) and len(head) <= len(prompt)


@pytest.fixture(scope="module")
def min_dalle(tmp_path_factory):
    from _min_dalle import write_min_dalle_root

    return write_min_dalle_root(tmp_path_factory.mktemp("min_dalle") / "pretrained")[0]


@pytest.mark.parametrize("prompt", ["a red circle", "a red circle on the left " * 30, "avocado" * 40 + " red",
                                    "a  red   circle " * 20, "\u00e9t\u00e9 red " * 40])
def test_the_prompt_head_gives_dalle_minis_ids(min_dalle, prompt):
    from mmkit.inference.text_to_image import TextToImage as T2I

    t2i = T2I.from_pretrained(min_dalle)
    head = t2i.prompt_head(prompt)
    assert torch.equal(t2i.tokenizer([head]), t2i.tokenizer([prompt]))
    assert torch.equal(t2i.tokenizer.null_text([head]), t2i.tokenizer.null_text([prompt]))


def test_mmkit_demo_serves_a_min_dalle_download(min_dalle, tmp_path, capsys):
    """`mmkit generate` reads a min-dalle download (no config.json); `mmkit demo` refused it as no checkpoint,
    and past that the tab failed on the vocabulary note (BART's vocabulary is a dict, not a word list)."""
    import gradio as gr

    from _ranks import free_port
    from demos.app import build_app
    from mmkit.cli import main
    from mmkit.cli.demo import TabSettings, _checkpoint_problem, dalle_tab

    assert _checkpoint_problem("dalle", min_dalle, "--dalle") is None
    assert _checkpoint_problem("dalle", min_dalle / "dalle_bart_mini", "--dalle") is None
    app = build_app({"dalle": dalle_tab(min_dalle, TabSettings())})
    notes = [b.value for b in app.blocks.values() if isinstance(b, gr.Markdown)]
    assert any(n.startswith("**Prompt**: dalle-mini reads lower-cased ASCII text") for n in notes), notes
    (tmp_path / "half" / "vqgan").mkdir(parents=True)  # a download cut short: the loader's reason, one line
    (tmp_path / "half" / "vqgan" / "detoker.pt").write_bytes(b"")
    assert main(["demo", "dalle", "--model", str(tmp_path / "half"), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmkit demo: error: dalle:") and "incomplete min-dalle" in err[0], err


def test_out_of_range_sliders_over_http_are_one_line_errors_naming_the_field(t2i, serve_blocks, capfd):
    """Gradio's own bounds check answered "Value 1e+30 is greater than maximum value 16." (which field?) and
    printed a server traceback."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from demos.text_to_image import build_app

    client = Client(serve_blocks(build_app(t2i)), verbose=False)
    capfd.readouterr()
    for args, message in [(("a red circle", 1e30, 0, 1.0, 4), "images must be a whole number in [1, 16], got 1e+30"),
                          (("a red circle", 1, 0, -1.0, 4), "guidance must be a number in [0.0, 5.0], got -1.0"),
                          (("a red circle", 1, 0, 1.0, 17), "top-k must be a whole number in [0, 16], got 17")]:
        with pytest.raises(AppError) as refused:
            client.predict(*args, api_name="/generate_images")
        assert str(refused.value) == message
    assert "Traceback" not in capfd.readouterr().err
    gallery, _ = client.predict("a red circle", 2, 0, 1.0, 4, api_name="/generate_images")
    assert len(gallery) == 2


def test_a_stop_button_cancels_the_sampling(t2i):
    """Sampling with previews could only be left to run to its end: no Stop button."""
    from _events import stop_cancels

    from demos.text_to_image import build_app

    assert stop_cancels(build_app(t2i), "t2i-stop", "generate_images")
