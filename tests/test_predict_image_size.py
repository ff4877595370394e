"""The image data module's sizes are bounded: `--data.init_args.image_size 100000` (or a crop_pct that
resizes past `MAX_RESIZE_SIDE`) is one line and exit 2 before anything is read or predicted, where it
ended in a MemoryError traceback (~30 GB asked for one image); every size the recipes use still loads.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mmkit.data.image_folder import MAX_IMAGE_SIDE, MAX_RESIZE_SIDE, ImageFolderDataModule, check_image_size

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    from mmkit.models.vit import ViT

    torch.manual_seed(0)
    vit = ViT(image_size=16, patch_size=4, num_classes=3, dim=32, depth=1, num_heads=2)
    return vit.save_pretrained(tmp_path_factory.mktemp("vit") / "export", metadata={"class_names": ["a", "b", "c"]})


@pytest.mark.parametrize("extra, message", [
    (["--data.init_args.image_size", "100000"], f"image_size must be an integer from 1 to {MAX_IMAGE_SIDE}"),
    (["--data.init_args.image_size", "0"], f"image_size must be an integer from 1 to {MAX_IMAGE_SIDE}"),
    (["--data.init_args.image_size", "32", "--data.init_args.crop_pct", "0.001"],
     f"resizes images to 32000 pixels a side before the centre crop; at most {MAX_RESIZE_SIDE}"),
])
def test_an_impossible_image_size_is_one_line_before_predicting(export, tmp_path, monkeypatch, capsys, extra,
                                                                message):
    from mmkit.cli import main
    from mmkit.tasks import ImageClassifier

    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "img" / "ok0.png")
    monkeypatch.setattr(ImageClassifier, "predict_step", lambda *a, **k: pytest.fail("predicted anyway"))
    out = tmp_path / "pr" / "b.csv"
    code = main(["predict", "--config", str(CONFIGS / "vit_digits_predict.yaml"),
                 "--model.init_args.model.init_args.checkpoint", str(export),
                 "--data.init_args.predict_paths", json.dumps([str(tmp_path / "img" / "ok0.png")]),
                 "--data.init_args.num_workers", "0", *extra, "--prediction_writer.output", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "MemoryError" not in err and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_bounds_and_every_recipe_size_is_accepted():
    check_image_size(MAX_IMAGE_SIDE)
    check_image_size(MAX_IMAGE_SIDE, MAX_IMAGE_SIDE / MAX_RESIZE_SIDE)  # the largest resize allowed
    for bad in (MAX_IMAGE_SIDE + 1, 0, -3, 32.0, True):
        with pytest.raises(ValueError, match="image_size must be an integer"):
            check_image_size(bad)  # type: ignore[arg-type]
    for crop_pct in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"crop_pct must be in \(0, 1\]"):
            check_image_size(224, crop_pct)
    with pytest.raises(ValueError, match="before the centre crop"):
        check_image_size(MAX_IMAGE_SIDE, 0.49)
    # the recipes' data sizes (and the largest timm eval setting, 224 / 0.875) all pass
    sizes = [(224, 0.875)]
    for config in CONFIGS.glob("*.yaml"):
        data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
        args = data.get("init_args") or {}
        if isinstance(args.get("image_size"), int):
            sizes.append((args["image_size"], args.get("crop_pct", 1.0)))
    assert len(sizes) > 2
    for size, crop_pct in sizes:
        check_image_size(size, crop_pct)
    module = ImageFolderDataModule(predict_paths=["x.png"], image_size=MAX_IMAGE_SIDE)
    assert module.eval_transform.image_size == MAX_IMAGE_SIDE


def test_the_digits_and_caption_data_modules_check_the_size_before_any_work(tmp_path, monkeypatch):
    """The digits module writes its images at image_size (before its parent's check ran), the caption
    modules size their transforms: an impossible size is the same one line there, before any of it."""
    from mmkit.data import digits
    from mmkit.data.captions import CaptionTableDataModule

    monkeypatch.setattr(digits, "write_digits_folder", lambda *a, **k: pytest.fail("wrote images anyway"))
    with pytest.raises(ValueError, match=f"image_size must be an integer from 1 to {MAX_IMAGE_SIDE}"):
        digits.DigitsDataModule(root=str(tmp_path), image_size=100_000)
    with pytest.raises(ValueError, match=f"image_size must be an integer from 1 to {MAX_IMAGE_SIDE}"):
        CaptionTableDataModule(train_file=str(tmp_path / "c.csv"), image_size=100_000)
