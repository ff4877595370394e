"""The ViT classifier demo (demos/classifier.py) in headless Chromium: upload a digit, press
Classify, and see the same top-1 label and confidence as the Python API gives for that file,
plus the attention overlay. The model is a tiny ViT trained briefly on the digits folder.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from playwright.sync_api import expect

from _browser import TIMEOUT_MS, label_confidence, label_top_class, open_app, upload_image
from _training import fit_single_threaded


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory) -> tuple[Path, Path]:
    """(export dir, digits folder): a 16 px, dim-32 ViT after 10 training steps."""
    import pytorch_lightning as pl

    from mmkit.data import DigitsDataModule, write_digits_folder
    from mmkit.models import ViT
    from mmkit.tasks import ImageClassifier

    root = tmp_path_factory.mktemp("demo")
    digits = write_digits_folder(root / "digits", image_size=16)
    torch.manual_seed(0)
    data = DigitsDataModule(root=str(digits), image_size=16, batch_size=32, num_workers=0)
    vit = ViT(image_size=16, patch_size=4, num_classes=10, dim=32, depth=1, num_heads=2, global_pool="avg")
    task = ImageClassifier(vit, class_names=data.class_names, lr=5e-3, export_dir=str(root / "export"))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=10, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(root))
    fit_single_threaded(trainer, task, data)
    return root / "export", digits


def _transparent_digit(src: Path, dst: Path) -> Path:
    """The digit as RGBA: dark background pixels fully transparent (black underneath). Read as
    a file it is a digit on white; a demo that dropped the alpha would classify it on black."""
    rgb = np.asarray(Image.open(src).convert("RGB"))
    alpha = np.where(rgb.mean(-1) < 40, 0, 255).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(dst)
    return dst


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_demo_shows_the_api_prediction_and_attention(page, serve_blocks, digits_export, tmp_path, mode):
    from demos.classifier import build_app
    from mmkit.inference import Classifier

    export, digits = digits_export
    clf = Classifier.from_pretrained(export)
    assert clf.class_names == [str(i) for i in range(10)]
    src = sorted((digits / "test" / "7").glob("*.png"))[0]
    digit = Path(shutil.copy(src, tmp_path / "digit.png")) if mode == "RGB" else \
        _transparent_digit(src, tmp_path / "digit.png")
    expected, = clf.predict_paths([digit], top_k=3)  # the same file through the Python API

    open_app(page, serve_blocks(build_app(clf, top_k=3)))
    upload_image(page.locator("#input-image"), digit)
    page.locator("#classify").click()

    prediction = page.locator("#prediction")
    expect(label_top_class(prediction)).to_have_text(expected.labels[0], timeout=TIMEOUT_MS)
    meter = label_confidence(prediction, expected.labels[0])
    assert float(meter.get_attribute("value")) == pytest.approx(expected.probs[0], abs=1e-4)
    overlay = page.locator("#attention img")
    expect(overlay).to_be_visible(timeout=TIMEOUT_MS)
    # a 16-px digit is shown enlarged 16x (nearest-neighbour), input and overlay alike
    assert overlay.evaluate("img => img.naturalWidth") == 256
    assert page.locator("#shown img").evaluate("img => img.naturalWidth") == 256


def test_demo_refuses_a_decompression_bomb_without_decoding_it(page, serve_blocks, digits_export, tmp_path):
    """A 13,000 x 13,000 PNG (a few hundred KB on disk) is refused from its header by mmkit's loader:
    the demo's input hands the file's path over unopened, so the server never holds its 169 M pixels."""
    from demos.classifier import build_app
    from mmkit.inference import Classifier

    bomb = tmp_path / "bomb.png"
    Image.new("1", (13_000, 13_000)).save(bomb)
    open_app(page, serve_blocks(build_app(Classifier.from_pretrained(digits_export[0]))))
    upload_image(page.locator("#input-image"), bomb)
    page.locator("#classify").click()
    expect(page.get_by_text("decompression bomb", exact=False).first).to_be_visible(timeout=TIMEOUT_MS)


def test_small_images_are_enlarged_with_crisp_pixels():
    from demos.display import for_display

    small = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4))
    big = for_display(small, min_side=30)
    assert big.size == (40, 30)  # factor 10: the smallest integer bringing 3 px to >= 30
    assert np.array_equal(np.asarray(big)[::10, ::10], np.asarray(small))  # nearest-neighbour blocks
    large = Image.new("RGB", (300, 400))
    assert for_display(large, min_side=256) is large


def test_thin_and_large_images_are_shown_at_most_max_side():
    """A 3,000 x 2 strip was zoomed 128x to 384,000 x 256 (a 30,000 x 4 one to 1,920,000 x 256: 4.5 GB
    with its overlay); the zoom now stops at the longer side's limit, and larger images are shrunk."""
    from demos.display import MAX_DISPLAY_SIDE, for_display

    assert for_display(Image.new("L", (3000, 2))).size == (MAX_DISPLAY_SIDE, 1)
    assert for_display(Image.new("RGB", (5000, 3000))).size == (MAX_DISPLAY_SIDE, 1229)
    assert for_display(Image.new("RGB", (1000, 10))).size == (2000, 20)  # zoom 2, not the 26 that 256 px needs
    strip = Image.fromarray(np.arange(40, dtype=np.uint8).reshape(4, 10))
    assert np.array_equal(np.asarray(for_display(strip, max_side=100))[::10, ::10], np.asarray(strip))


def _classify(classifier, top_k: int = 3):
    """The demo's event function, as Gradio calls it."""
    from demos.classifier import build_app

    return next(f.fn for f in build_app(classifier, top_k).fns.values() if f.fn.__name__ == "classify")


def test_overlay_is_drawn_on_the_display_copy(digits_export, tmp_path):
    """The attention overlay of a 4,000 x 1,000 image is blended on the 2,048 px copy that is shown,
    not at full size in float32 (an 80-megapixel image took 4.6 GB); the prediction is the API's."""
    from mmkit.inference import Classifier

    clf = Classifier.from_pretrained(digits_export[0])
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (10, 40, 3), dtype=np.uint8)).resize((4000, 1000))
    noise.save(tmp_path / "large.bmp")  # BMP: no 2 s of PNG compression
    expected, = clf.predict_paths([tmp_path / "large.bmp"], top_k=3)
    labels, shown, overlay = _classify(clf)(str(tmp_path / "large.bmp"))
    assert list(labels) == expected.labels and list(labels.values()) == pytest.approx(expected.probs, abs=1e-6)
    assert shown.size == overlay.size == (2048, 512)
    assert np.array_equal(np.asarray(clf.attention_overlay(noise, alpha=0.0, canvas=shown)), np.asarray(shown))
    heat = np.asarray(clf.attention_overlay(noise, alpha=1.0, canvas=shown)).astype(int)  # the colour map
    assert np.all(heat[..., 1] == 0) and heat[..., 0].max() - heat[..., 0].min() > 100


def test_thin_strips_are_classified_like_the_api(digits_export, tmp_path):
    """A 30,000 x 4 PNG (196 bytes) and a 2,000,000 x 1 one (2 KB) are classified and shown at 2,048 px.
    The second became 32,000,000 x 16 in the model's whole-image resize (1.5 GB as RGB), so the demo
    refused it; the eval transform now resizes only the crop's preimage."""
    from mmkit.inference import Classifier

    clf = Classifier.from_pretrained(digits_export[0])
    Image.new("L", (30_000, 4)).save(tmp_path / "strip.png")
    labels, shown, overlay = _classify(clf)(str(tmp_path / "strip.png"))
    assert len(labels) == 3 and shown.size == overlay.size == (2048, 1)
    thread = np.zeros((1, 2_000_000), np.uint8)
    thread[0, 999_990:1_000_010] = 255  # a white middle: the crop sees it
    Image.fromarray(thread).save(tmp_path / "thread.png")
    assert clf.transform.load(tmp_path / "thread.png").min() == 255
    expected, = clf.predict_paths([tmp_path / "thread.png"], top_k=3)
    labels, shown, overlay = _classify(clf)(str(tmp_path / "thread.png"))
    assert list(labels) == expected.labels and list(labels.values()) == pytest.approx(expected.probs, abs=1e-6)
    assert shown.size == overlay.size == (2048, 1)


@pytest.mark.parametrize("content, reason", [(b"%PDF-1.4\n%", "not an image"), (b"", "zero-byte file"),
                                             ("bomb", "decompression bomb")])
def test_bad_uploads_reach_mmkits_loader_over_http(serve_blocks, digits_export, tmp_path, content, reason):
    """Over HTTP, Gradio's gr.Image opened every upload with PIL before the demo saw it (even with
    type="filepath"), so a PDF, an empty file or a 200-megapixel PNG got a bare "Error"; the demo's
    input hands the path over undecoded and the user reads mmkit's reason."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from demos.classifier import build_app
    from mmkit.inference import Classifier

    upload = tmp_path / "upload.png"
    if content == "bomb":
        Image.new("1", (20_000, 10_000)).save(upload)  # 200 M pixels, ~30 KB
    else:
        upload.write_bytes(content)
    client = Client(serve_blocks(build_app(Classifier.from_pretrained(digits_export[0]))), verbose=False)
    with pytest.raises(AppError, match=f"Cannot read this image: {reason}"):
        client.predict(handle_file(str(upload)), api_name="/classify")


def test_an_inline_image_over_the_upload_cap_is_refused_before_decoding(monkeypatch, tmp_path):
    """An image sent as a data: URL (in the request's JSON, not through /upload) skipped Gradio's 200 MB cap: a
    210 MB one was decoded and written to the cache. The cap now holds for it too, judged from the URL's length."""
    import base64

    import gradio as gr
    from gradio.data_classes import ImageData

    import mmkit.demo_harness as harness
    from demos.classifier import image_path_input

    png = tmp_path / "px.png"
    Image.new("RGB", (2, 2)).save(png)
    data = png.read_bytes()
    monkeypatch.setattr(harness, "MAX_FILE_SIZE", len(data) + 1000)
    with gr.Blocks():
        component = image_path_input()
    monkeypatch.setattr(component, "GRADIO_CACHE", str(tmp_path / "cache"))

    def url(blob: bytes) -> str:
        return "data:image/png;base64," + base64.b64encode(blob).decode()

    assert Path(component.preprocess(ImageData(url=url(data)))).read_bytes() == data
    for size in (len(data) + 1001, len(data) + 1002, len(data) + 1003):  # each padding of base64
        with pytest.raises(gr.Error, match=f"the image is {size:,} bytes: at most {len(data) + 1000:,}"):
            component.preprocess(ImageData(url=url(data + bytes(size - len(data)))))
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the accepted one alone
    assert Path(component.preprocess(ImageData(url=url(data + bytes(1000))))).stat().st_size == len(data) + 1000
