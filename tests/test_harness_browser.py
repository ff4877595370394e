"""The demo harness end to end: a Gradio app launched by mmkit.demo_harness, driven in Chromium.

A tiny image -> label app stands in for the real classifier demos: upload a PNG through
the gr.Image file input, press the button, read the gr.Label.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from _browser import label_confidence, label_top_class, open_app, upload_image


def brightness(image: Image.Image) -> dict[str, float]:
    """Label an image bright or dark by its mean pixel value."""
    if image is None:
        raise ValueError("no image received")
    bright = float(np.asarray(image.convert("L")).mean()) / 255.0
    return {"bright": bright, "dark": 1.0 - bright}


def build_app():
    import gradio as gr

    with gr.Blocks() as app:
        image = gr.Image(type="pil", label="Input image", elem_id="input-image")
        label = gr.Label(label="Prediction", elem_id="prediction")
        button = gr.Button("Classify", elem_id="classify")
        button.click(brightness, inputs=image, outputs=label)
    return app


@pytest.fixture(scope="module")
def app_url():
    from mmkit.demo_harness import launch

    url, close = launch(build_app())
    yield url
    close()


def test_launch_serves_and_close_stops():
    from mmkit.demo_harness import launch

    url, close = launch(build_app())
    assert httpx.get(url, timeout=30).status_code == 200
    close()
    with pytest.raises(httpx.TransportError):
        httpx.get(url, timeout=5)


@pytest.mark.browser
@pytest.mark.parametrize(
    ("pixel", "expected", "confidence"),
    [(230, "bright", 230 / 255), (20, "dark", 1 - 20 / 255)],
)
def test_upload_image_and_classify(page, app_url, tmp_path, pixel, expected, confidence):
    png = tmp_path / "square.png"
    Image.new("RGB", (48, 48), (pixel, pixel, pixel)).save(png)

    open_app(page, app_url)
    upload_image(page.locator("#input-image"), png)
    page.locator("#classify").click()

    prediction = page.locator("#prediction")
    expect(label_top_class(prediction)).to_have_text(expected, timeout=60_000)
    meter = label_confidence(prediction, expected)
    assert float(meter.get_attribute("value")) == pytest.approx(confidence, abs=1e-3)
