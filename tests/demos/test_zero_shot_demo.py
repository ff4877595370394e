"""The CLIP zero-shot demo (demos/zero_shot.py) in headless Chromium: upload several images at
once, edit the labels and templates, press Score, and see every label ranked per image with the
same scores the Python API (`ZeroShotClassifier.predict_images`) gives for those files.
"""
from __future__ import annotations

import html
from pathlib import Path

import pytest
import torch
from playwright.sync_api import expect

from _browser import TIMEOUT_MS, open_app

LABELS = ["red circle", "blue star", "green cross"]
TEMPLATES = ["a {}", "a picture of a {}"]


@pytest.fixture(scope="module")
def clip_export(tmp_path_factory) -> tuple[Path, list[Path]]:
    """(export dir, 3 shape images at 40 px): a random-init dim-32 CLIP exported by CLIPTask with
    the shapes recipe's metadata (labels, templates, 16 px preprocessing). Untrained on purpose:
    a tiny CLIP stays in contrastive training's initial collapse for dozens of steps, where every
    image scores alike, while at init the images still differ by ~1e-3 in probability."""
    from mmkit.data import ShapesDataModule, write_shapes_folder
    from mmkit.models import CLIP
    from mmkit.tasks import CLIPTask

    root = tmp_path_factory.mktemp("zero_shot_demo")
    data = ShapesDataModule(image_size=16, train_samples=8, num_workers=0, context_length=12)
    torch.manual_seed(0)
    model = CLIP.from_config(dict(
        visual=dict(embed_dim=16, image_size=16, patch_size=8, dim=32, depth=1, num_heads=2, mlp_ratio=2.0),
        text=dict(embed_dim=16, max_len=12, dim=32, depth=1, num_heads=2, mlp_ratio=2.0)))
    CLIPTask(model).export(root / "export", data.inference_metadata())
    images = write_shapes_folder(root / "images", num_samples=3, split="train", image_size=40)
    return root / "export", sorted(images.glob("*.png"))


def _cell(page, row: int, col: int):
    return page.locator(f'#scores [data-testid="cell-{row}-{col}"]')


def test_demo_ranks_every_uploaded_image_like_the_api(page, serve_blocks, clip_export):
    from demos.zero_shot import build_app
    from mmkit.data import load_image
    from mmkit.inference import ZeroShotClassifier

    export, files = clip_export
    zs = ZeroShotClassifier.from_pretrained(export)
    expected = zs.predict_images([load_image(f) for f in files], LABELS, TEMPLATES)
    top = sorted(r[0][1] for r in expected)
    assert min(b - a for a, b in zip(top, top[1:])) > 3e-4  # rows of different images are told apart

    open_app(page, serve_blocks(build_app(zs)))
    # The checkpoint's zero-shot labels and templates are the starting point.
    expect(page.locator("#labels textarea")).to_have_value("\n".join(zs.labels))
    expect(page.locator("#templates textarea")).to_have_value("a {}")
    page.locator('#images input[type="file"]').set_input_files([str(f) for f in files])
    expect(page.locator("#images .file-preview tr.file")).to_have_count(3, timeout=TIMEOUT_MS)
    page.locator("#labels textarea").fill("red circle, blue star\ngreen cross")
    page.locator("#templates textarea").fill("\n".join(TEMPLATES))
    page.locator("#score").click()

    for i, (file, ranked) in enumerate(zip(files, expected)):
        for rank, (label, prob) in enumerate(ranked):
            row = i * len(LABELS) + rank
            expect(_cell(page, row, 0)).to_have_text(file.name, timeout=TIMEOUT_MS)
            expect(_cell(page, row, 1)).to_have_text(str(rank + 1))
            expect(_cell(page, row, 2)).to_have_text(label)
            assert float(_cell(page, row, 3).inner_text()) == pytest.approx(prob, abs=1e-4)
    expect(page.locator('#scores [data-testid^="cell-"][data-col="0"]')).to_have_count(3 * len(LABELS))
    captions = page.locator("#gallery .caption-label")
    expect(captions).to_have_count(3)
    assert captions.all_inner_texts() == [f"{f.name}: {r[0][0]} ({r[0][1]:.2f})" for f, r in zip(files, expected)]


def test_demo_skips_an_unreadable_upload_and_says_so(page, serve_blocks, clip_export, tmp_path):
    from demos.zero_shot import build_app
    from mmkit.data import load_image
    from mmkit.inference import ZeroShotClassifier

    export, files = clip_export
    zs = ZeroShotClassifier.from_pretrained(export)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    (best, prob), *_ = zs.predict_images([load_image(files[0])], LABELS)[0]

    open_app(page, serve_blocks(build_app(zs, labels=LABELS)))
    expect(page.locator("#labels textarea")).to_have_value("\n".join(LABELS))
    page.locator('#images input[type="file"]').set_input_files([str(broken), str(files[0])])
    expect(page.locator("#images .file-preview tr.file")).to_have_count(2, timeout=TIMEOUT_MS)
    page.locator("#score").click()

    expect(page.get_by_text("skipped broken.png: not an image")).to_be_visible(timeout=TIMEOUT_MS)
    expect(_cell(page, 0, 2)).to_have_text(best, timeout=TIMEOUT_MS)
    assert float(_cell(page, 0, 3).inner_text()) == pytest.approx(prob, abs=1e-4)
    expect(page.locator('#scores [data-testid^="cell-"][data-col="0"]')).to_have_count(len(LABELS))
    expect(page.locator("#gallery .caption-label")).to_have_count(1)


def _score(classifier, labels=None):
    """The demo's event function, as Gradio calls it."""
    from demos.zero_shot import build_app

    return next(f.fn for f in build_app(classifier, labels).fns.values() if f.fn.__name__ == "score")


@pytest.mark.parametrize("labels, problem", [
    ("red circle\n\u200b", "label '\\u200b': empty text (only control or invisible characters)"),
    ("\ufeff, blue star", "label '\\ufeff': empty text"),
    ("red cir\x00cle", "holds NUL characters"),
    ("red circle,red circle,Red circle", "'red circle' is given twice"),  # was a silent 0.5/0.5 split
    ("red circle,Red circle", "differ only in case"),
    ("a" * 1001, "at most 1,000"),
    ("\n".join(f"label {i}" for i in range(101)), "101 labels: at most 100"),
    ("red circle: round | red disc", "synonyms"),  # predict_images would drop them silently
], ids=["zero-width-space", "bom", "nul", "repeat", "case", "long", "count", "synonyms"])
def test_labels_follow_the_cli_rules(clip_export, labels, problem):
    import gradio as gr

    from mmkit.inference import ZeroShotClassifier

    export, files = clip_export
    with pytest.raises(gr.Error) as refused:
        _score(ZeroShotClassifier.from_pretrained(export))([str(files[0])], labels, "a {}")
    assert problem in refused.value.message


def test_a_refusal_shows_the_users_text_as_text_and_logs_no_traceback(clip_export):
    """Gradio renders an error's message as HTML (a label "<b>" would vanish from it) and prints a server
    traceback for each one unless told not to: a user's mistake is neither."""
    import gradio as gr

    from mmkit.inference import ZeroShotClassifier

    export, files = clip_export
    with pytest.raises(gr.Error) as refused:
        _score(ZeroShotClassifier.from_pretrained(export))([str(files[0])], "<b>,<b>", "a {}")
    assert refused.value.message.startswith("label '&lt;b&gt;' is given twice")
    assert not refused.value.print_exception


def test_files_and_templates_are_capped(clip_export):
    """9 images, or 17 templates (each label's prompts through the text tower on every click), are refused."""
    import gradio as gr

    from mmkit.inference import ZeroShotClassifier

    export, files = clip_export
    score = _score(ZeroShotClassifier.from_pretrained(export))
    with pytest.raises(gr.Error, match="9 images: at most 8"):
        score([str(files[0])] * 9, "red circle", "a {}")
    with pytest.raises(gr.Error, match="17 templates: at most 16"):
        score([str(files[0])], "red circle", "\n".join(f"{{}} {i}" for i in range(17)))
    assert len(score([str(files[0])] * 8, "red circle, blue star", "\n".join(f"{{}} {i}" for i in range(16)))[0]) == 16


def test_gallery_images_are_shrunk_and_scores_are_the_apis(clip_export, tmp_path):
    """A 3,000 x 600 upload went back to the gallery at full size (an 80-megapixel one: 400 MB a file);
    now at most 512 px a side, with the scores the API gives for the full-size file."""
    import numpy as np
    from PIL import Image

    from mmkit.data import load_image
    from mmkit.inference import ZeroShotClassifier

    export, files = clip_export
    zs = ZeroShotClassifier.from_pretrained(export)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (6, 30, 3), dtype=np.uint8)).resize((3000, 600)).save(tmp_path / "wide.bmp")
    paths = [tmp_path / "wide.bmp", files[0]]
    expected = zs.predict_images([load_image(p) for p in paths], LABELS, TEMPLATES)
    rows, gallery = _score(zs)([str(p) for p in paths], "\n".join(LABELS), "\n".join(TEMPLATES))
    assert [im.size for im, _ in gallery] == [(512, 102), (280, 280)]  # the 40-px shape enlarged 7x
    assert [row[2] for row in rows] == [label for ranked in expected for label, _ in ranked]
    assert [row[3] for row in rows] == pytest.approx([round(p, 4) for ranked in expected for _, p in ranked], abs=1e-6)


def test_a_thin_strip_is_scored_like_the_api(clip_export, tmp_path):
    """600,000 x 1 (a 1 KB PNG) became 9,600,000 x 16 in the 16-px model's whole-image resize (460 MB
    as RGB), so the demo skipped it; the eval transform now resizes only the crop's preimage."""
    import warnings

    from PIL import Image

    from mmkit.data import load_image
    from mmkit.inference import ZeroShotClassifier

    export, files = clip_export
    zs = ZeroShotClassifier.from_pretrained(export)
    Image.new("L", (600_000, 1), 200).save(tmp_path / "thread.png")
    paths = [tmp_path / "thread.png", files[0]]
    expected = zs.predict_images([load_image(p) for p in paths], LABELS, TEMPLATES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows, gallery = _score(zs)([str(p) for p in paths], "\n".join(LABELS), "\n".join(TEMPLATES))
    assert not [w for w in caught if "skipped" in str(w.message)]
    assert [row[0] for row in rows] == [p.name for p in paths for _ in LABELS]
    assert [im.size for im, _ in gallery] == [(512, 1), (280, 280)]
    assert [row[3] for row in rows] == pytest.approx([round(p, 4) for ranked in expected for _, p in ranked], abs=1e-6)


def test_one_label_is_refused_as_mmkit_label_refuses_it(clip_export):
    """A single label always scored 1.0; `mmkit label` refuses it in these words."""
    import gradio as gr

    from mmkit.inference import ZeroShotClassifier

    export, files = clip_export
    with pytest.raises(gr.Error) as refused:
        _score(ZeroShotClassifier.from_pretrained(export))([str(files[0])], "red circle", "a {}")
    assert refused.value.message == "one label ('red circle') always scores 1.0: give at least two"
    with pytest.raises(gr.Error, match="Enter at least two labels"):
        _score(ZeroShotClassifier.from_pretrained(export))([str(files[0])], " , ", "a {}")


@pytest.fixture(scope="module")
def served(clip_export):
    """(url, app): the zero-shot app on a free local port, once for this module's HTTP tests."""
    from demos.zero_shot import build_app
    from mmkit.demo_harness import launch
    from mmkit.inference import ZeroShotClassifier

    app = build_app(ZeroShotClassifier.from_pretrained(clip_export[0]))
    url, close = launch(app)
    yield url, app
    close()


def test_mmkits_loader_judges_each_upload_over_http(served, clip_export, tmp_path, capfd):
    """Gradio judged uploads by their names' extensions: a PNG named scan.dat was refused, and one PDF among
    images failed the whole batch ("Invalid file type") with a server traceback."""
    import shutil

    from gradio_client import Client, handle_file

    export, files = clip_export
    scan = Path(shutil.copy(files[0], tmp_path / "scan.dat"))
    (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.4\n%")
    url, app = served
    assert [f.api_name for f in app.fns.values()] == ["zero_shot"]
    client = Client(url, verbose=False)
    capfd.readouterr()
    rows, gallery = client.predict([handle_file(str(scan)), handle_file(str(tmp_path / "doc.pdf"))],
                                   "red circle, blue star", "a {}", api_name="/zero_shot")
    assert [row[0] for row in rows["data"]] == ["scan.dat", "scan.dat"] and len(gallery) == 1
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("caller, shown", [
    ("api", lambda message: message),  # gradio_client's own header
    ("app", lambda message: html.escape(message, quote=False)),  # the header the browser sends
], ids=["gradio-client", "browser"])
def test_an_api_caller_reads_refusals_and_warnings_as_text_the_browser_as_html(served, clip_export, tmp_path,
                                                                              caller, shown):
    """The browser renders an error's or a warning's message as HTML, so `demos.inputs` escapes it there; a
    gradio_client caller was handed the escaped text too ("label '&lt;cat&gt;'"). The browser's form is asked
    for through the same client sending the browser's x-gradio-user header. ("<" and ">" do not survive an
    upload's file name; "&" does.)"""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, _ = served
    client = Client(url, verbose=False, headers={"x-gradio-user": caller})
    with pytest.raises(AppError) as refused:
        client.predict([handle_file(str(clip_export[1][0]))], "<cat>, <cat>", "a {}", api_name="/zero_shot")
    assert str(refused.value) == shown("label '<cat>' is given twice: give each label once")
    broken = tmp_path / "R&D.png"
    broken.write_bytes(b"not a png")
    job = client.submit([handle_file(str(broken)), handle_file(str(clip_export[1][0]))], "red circle, blue star",
                        "a {}", api_name="/zero_shot")
    assert len(job.result()[0]["data"]) == 2
    assert _logs(job) == [(shown("skipped R&D.png: not an image (cannot identify image file)"), "warning")]


def test_a_raw_http_call_without_gradios_header_gets_the_browsers_form(served, clip_export):
    """curl on /gradio_api/call/... sends no x-gradio-user header, so it cannot be told from the browser: it gets
    the escaped message, as documented in `demos.inputs.for_caller`."""
    import httpx

    url, _ = served
    api = url.rstrip("/") + "/gradio_api"
    with open(clip_export[1][0], "rb") as f:
        [path] = httpx.post(f"{api}/upload", files={"files": f}).json()
    data = [[{"path": path, "meta": {"_type": "gradio.FileData"}}], "<cat>, <cat>", "a {}"]
    event_id = httpx.post(f"{api}/call/zero_shot", json={"data": data}).json()["event_id"]
    stream = httpx.get(f"{api}/call/zero_shot/{event_id}", timeout=60).text
    assert "event: error" in stream and "label '&lt;cat&gt;' is given twice" in stream


def _logs(job) -> list[tuple[str, str]]:
    """The (message, level) pairs of the gr.Warning and gr.Info logs a finished gradio_client job received, from
    the queue `Job.__aiter__` reads (not run here: after a browser test, Playwright's event loop holds the
    thread)."""
    updates, logs = job.communicator.updates, []
    while not updates.empty():
        update = updates.get_nowait()
        if update.type == "status" and update.log:
            logs.append(update.log)
    return logs
