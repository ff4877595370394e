"""`mmkit predict --prediction_writer.precision/--prediction_writer.quantize` (issue 13 §2): the
LightningCLI predict path with int8 Linear weights or bf16 autocast (Lightning's mixed-precision
plugin), logged once; the labels agree with fp32 and the scores differ (the path really ran); wrong
combinations are one line, exit 2. fp32 stays the default and exact (tests/test_hardening_predict.py).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmkit.cli import main
from mmkit.models.vit import ViT

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

PREDICT = str(Path(__file__).resolve().parents[2] / "configs" / "vit_digits_predict.yaml")
TINY = ["--data.init_args.image_size", "16", "--data.init_args.num_workers", "0",
        "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny ViT export whose classes are well apart on its inputs, and 6 images."""
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    vit = ViT(image_size=16, patch_size=4, num_classes=3, dim=32, depth=1, num_heads=2)
    with torch.no_grad():
        vit.head.weight.mul_(30)  # decisive scores, as after training, so agreement is not a coin toss
    export = vit.save_pretrained(root / "export", metadata={"class_names": ["a", "b", "c"]})
    rng = np.random.default_rng(0)
    (root / "in").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / "in" / f"{i}.png")
    return export, root / "in"


def _predict(inputs: tuple[Path, Path], out: Path, *extra: str) -> int:
    export, folder = inputs
    return main(["predict", "--config", PREDICT, *TINY, "--model.init_args.model.init_args.checkpoint", str(export),
                 "--data.init_args.predict_paths", json.dumps([str(folder)]), "--prediction_writer.output", str(out),
                 *extra])


def _rows(path: Path) -> list[tuple[str, float]]:
    with open(path, newline="") as f:
        return [(r["label"], float(r["prob"])) for r in csv.DictReader(f)]


def test_int8_and_bf16_predictions_agree_with_fp32_and_are_logged_once(inputs, tmp_path, caplog):
    assert _predict(inputs, tmp_path / "f.csv") == 0
    fp32 = _rows(tmp_path / "f.csv")
    for name, extra, said in (("q", ["--prediction_writer.quantize", "int8"], "int8 Linear weights"),
                              ("b", ["--prediction_writer.precision", "bf16"], "bf16 autocast")):
        caplog.clear()
        with caplog.at_level("INFO", logger="mmkit"):
            assert _predict(inputs, tmp_path / f"{name}.csv", *extra) == 0
        assert sum(r.getMessage().startswith("predicting on cpu with") and said in r.getMessage()
                   for r in caplog.records) == 1, caplog.text
        low = _rows(tmp_path / f"{name}.csv")
        assert [label for label, _ in low] == [label for label, _ in fp32]
        diffs = [abs(p - q) for (_, p), (_, q) in zip(low, fp32)]
        assert 0 < max(diffs) < 0.05, diffs  # the reduced path ran, and stayed close


@pytest.mark.parametrize("extra, message", [
    (["--prediction_writer.quantize", "int4"], "quantize one of none, int8"),
    (["--prediction_writer.precision", "fp16"], "fp16 autocast is for GPUs"),
    (["--prediction_writer.quantize", "int8", "--prediction_writer.precision", "bf16"],
     "--precision bf16 with --quantize int8"),
    (["--prediction_writer.precision", "bf16", "--trainer.precision", "64-true"], "give one of the two"),
])
def test_wrong_choices_are_one_line(inputs, tmp_path, capsys, extra, message):
    assert _predict(inputs, tmp_path / "x.csv", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mmkit predict: error:") and message in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "x.csv").exists()
