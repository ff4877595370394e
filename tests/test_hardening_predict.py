"""Issue 9 (hardening), the `mmkit predict` items: an unwritable output fails before predicting and
leaves nothing behind (#3), rows stream in input order, spreadsheet formulas are neutralised in
predictions.csv but not in JSON (#16), a self-referencing symlink is one unreadable row (#13), and
a non-finite score is an error, never a label (#7).
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmkit.cli import main
from mmkit.models.vit import ViT

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

PREDICT = str(Path(__file__).resolve().parents[1] / "configs" / "vit_digits_predict.yaml")
VIT = "--model.init_args.model.init_args."
TINY = ["--data.init_args.image_size", "16", "--data.init_args.num_workers", "0",
        "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    vit = ViT(image_size=16, patch_size=4, num_classes=3, dim=32, depth=1, num_heads=2)
    with torch.no_grad():
        vit.head.bias[0] = 100.0  # every image's top label is the formula-looking class name
    return vit.save_pretrained(tmp_path_factory.mktemp("vit") / "export",
                               metadata={"class_names": ["=HYPERLINK(1)", "b", "c"]})


def _images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / name)


def _predict(export: Path, inputs: Path, out: Path, *extra: str) -> int:
    return main(["predict", "--config", PREDICT, *TINY, VIT + "checkpoint", str(export),
                 "--data.init_args.predict_paths", json.dumps([str(inputs)]),
                 "--prediction_writer.output", str(out), *extra])


@pytest.mark.parametrize("where", ["sys", "under_a_file"])
def test_unwritable_output_fails_before_predicting(export, tmp_path, monkeypatch, capsys, where):
    from mmkit.tasks import ImageClassifier

    _images(tmp_path / "in", ["a.png"])
    (tmp_path / "blocker").write_text("a file, not a folder")
    out = Path("/sys/kernel/predictions.csv") if where == "sys" else tmp_path / "blocker" / "predictions.csv"
    if where == "sys" and (not out.parent.is_dir() or os.access(out.parent, os.W_OK | os.X_OK)
                           and _writable(out.parent)):
        pytest.skip("/sys/kernel is writable here")
    monkeypatch.setattr(ImageClassifier, "predict_step", lambda *a, **k: pytest.fail("predicted anyway"))
    assert _predict(export, tmp_path / "in", out) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"cannot write predictions to {out}" in err
    assert len(err.strip().splitlines()) == 1, err


def _writable(folder: Path) -> bool:
    try:
        (folder / ".mmkit-probe").touch()
    except OSError:
        return False
    (folder / ".mmkit-probe").unlink()
    return True


def test_rows_stream_in_input_order_and_csv_cells_are_spreadsheet_safe(export, tmp_path, monkeypatch):
    from mmkit.inference import writers

    _images(tmp_path / "in", ["=cmd.png", "+x.png", "b.png", "d.png", "'q.png"])
    (tmp_path / "in" / "c.png").write_bytes(b"not a png")
    os.symlink("loop.png", tmp_path / "in" / "loop.png")  # points at itself: ELOOP when opened
    os.symlink("self", tmp_path / "in" / "self")  # no extension: the scan cannot tell what it is
    streamed = []
    write = writers.PredictionFile.write

    def counting_write(self, rows):
        rows = list(rows)
        streamed.append(len(rows))
        write(self, rows)

    monkeypatch.setattr(writers.PredictionFile, "write", counting_write)
    out = tmp_path / "p.csv"
    assert _predict(export, tmp_path / "in", out, "--data.init_args.batch_size", "2") == 0
    # Per batch as they come: c.png's row (skipped by the header check) goes out just before d.png's.
    assert streamed == [2, 2, 2, 2]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    names = [Path(r["path"]).name for r in rows]
    assert names == ["'q.png", "+x.png", "=cmd.png", "b.png", "c.png", "d.png", "loop.png", "self"]
    scored = [r for r in rows if not r["error"]]
    assert len(scored) == 5 and all(r["label"] == "'=HYPERLINK(1)" for r in scored)  # OWASP: a leading quote
    assert all(r["top_k_labels"].startswith("'=HYPERLINK(1)|") for r in scored)
    assert not any(cell.startswith(("=", "+", "-", "@")) for r in rows for cell in r.values())
    assert "not an image" in rows[4]["error"]
    assert all("symbolic links" in r["error"] for r in rows[6:])
    json_out = tmp_path / "p.jsonl"
    assert _predict(export, tmp_path / "in", json_out) == 0
    raw = [json.loads(line) for line in json_out.read_text().splitlines()]
    assert [Path(r["path"]).name for r in raw] == names
    assert [r["labels"][0] for r in raw if not r["error"]] == ["=HYPERLINK(1)"] * 5  # JSON stays raw


def test_non_finite_weights_are_an_error_and_leave_no_output(tmp_path, capsys):
    torch.manual_seed(0)
    vit = ViT(image_size=16, patch_size=4, num_classes=3, dim=32, depth=1, num_heads=2)
    with torch.no_grad():
        vit.head.bias[1] = float("nan")
    export = vit.save_pretrained(tmp_path / "nan", metadata={"class_names": ["a", "b", "c"]})
    _images(tmp_path / "in", ["a.png", "b.png"])
    out = tmp_path / "out" / "p.jsonl"
    assert _predict(export, tmp_path / "in", out) == 2
    err = capsys.readouterr().err
    assert "model.safetensors: non-finite weights (NaN or infinity) in head.bias" in err and "Traceback" not in err
    assert not out.exists() and not list(out.parent.glob(".p.jsonl.*"))  # no half-written file either


def test_unknown_accelerator_is_one_line(export, tmp_path, capsys):
    _images(tmp_path / "in", ["a.png"])
    code = _predict(export, tmp_path / "in", tmp_path / "p.csv", "--trainer.accelerator", "banana")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "banana" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_accelerator_without_cuda_is_one_line(export, tmp_path, capsys):
    _images(tmp_path / "in", ["a.png"])
    code = _predict(export, tmp_path / "in", tmp_path / "p.csv", "--trainer.accelerator", "cuda")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
