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
    from mmkit.tasks import Classifier

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
    assert overlay.evaluate("img => img.naturalWidth") == 16  # the overlay has the input's size
