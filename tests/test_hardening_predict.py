"""Issue 9 (hardening), the `mmkit predict` items: an unwritable output fails before predicting and
leaves nothing behind (#3), rows stream in input order, spreadsheet formulas are neutralised in
predictions.csv but not in JSON (#16), a self-referencing symlink is one unreadable row (#13), and
a non-finite score is an error, never a label (#7). On several processes (DDP on CPU, gloo) predict
writes the very file one process writes, and a process that fails leaves no output and no shard.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmkit.cli import main
from mmkit.inference.classifier import Prediction
from mmkit.inference.prediction_shards import SKIPPED_WHILE_LOADING, merged_predictions
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


def test_a_folder_with_no_images_or_a_missing_path_is_refused_alone_and_warned_about_beside_others(
        export, tmp_path, capsys, caplog):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    out = tmp_path / "out" / "p.csv"
    assert _predict(export, tmp_path / "empty", out) == 2
    err = capsys.readouterr().err
    assert f"predict_paths: no images found in {tmp_path / 'empty'} (looked for .bmp," in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not list(out.parent.glob(".p.csv.*"))

    assert _predict(export, tmp_path / "emptyy", out) == 2  # a typo'd folder: nothing of that name
    err = capsys.readouterr().err
    assert err.endswith(f"predict_paths: no such file or folder: {tmp_path / 'emptyy'}\n") and err.count("\n") == 1

    _images(tmp_path / "in", ["a.png"])
    with caplog.at_level("WARNING", logger="mmkit"):
        assert main(["predict", "--config", PREDICT, *TINY, VIT + "checkpoint", str(export),
                     "--data.init_args.predict_paths", json.dumps([str(tmp_path / "empty"), str(tmp_path / "in")]),
                     "--prediction_writer.output", str(out)]) == 0
    assert f"predict_paths: no images found in {tmp_path / 'empty'}" in caplog.text
    with open(out, newline="") as f:
        assert [row["path"] for row in csv.DictReader(f)] == [str(tmp_path / "in" / "a.png")]


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


@pytest.fixture(scope="module")
def varied(tmp_path_factory) -> tuple[Path, Path]:
    """A model whose scores differ from image to image (a row given another image's prediction shows) and
    9 inputs: 7 readable (an odd number: 2 processes predict 4 and 3 of them), among them a truncated BMP
    that passes the header check and fails to decode, and a file that is no image."""
    root = tmp_path_factory.mktemp("varied")
    torch.manual_seed(0)
    vit = ViT(image_size=16, patch_size=4, num_classes=3, dim=32, depth=1, num_heads=2)
    export = vit.save_pretrained(root / "export", metadata={"class_names": ["a", "=b", "c"]})
    _images(root / "in", [f"img{i}.png" for i in range(6)] + ["trunc.bmp"])
    data = (root / "in" / "trunc.bmp").read_bytes()
    (root / "in" / "trunc.bmp").write_bytes(data[:len(data) // 2])
    (root / "in" / "bad.png").write_bytes(b"not a png")
    return export, root / "in"


def _ddp_predict(export: Path, inputs: Path, out: Path, cwd: Path, script: Path | None = None
                 ) -> subprocess.CompletedProcess:
    """`mmkit predict` on 2 CPU processes that Lightning launches (the console script, or `script`)."""
    mmkit = Path(sys.executable).parent / "mmkit"
    assert mmkit.is_file(), "the mmkit console script is not installed (pip install -e .)"
    cmd = [sys.executable, str(script)] if script else [str(mmkit)]
    cmd += ["predict", "--config", PREDICT, *TINY, VIT + "checkpoint", str(export),
            "--data.init_args.predict_paths", json.dumps([str(inputs)]), "--data.init_args.batch_size", "2",
            "--prediction_writer.output", str(out),
            "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PL_GLOBAL_SEED", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_two_processes_write_the_file_one_process_writes(varied, tmp_path, suffix):
    export, inputs = varied
    one = tmp_path / f"one{suffix}"
    assert _predict(export, inputs, one, "--data.init_args.batch_size", "2") == 0
    out = tmp_path / "two" / f"p{suffix}"
    proc = _ddp_predict(export, inputs, out, tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and log.count("wrote 6 predictions (2 unreadable)") == 1
    assert out.read_bytes() == one.read_bytes()
    assert os.listdir(out.parent) == [out.name]  # no shard or temp file left
    if suffix == ".csv":
        with open(out, newline="") as f:
            rows = list(csv.DictReader(f))
        assert [Path(r["path"]).name for r in rows] == ["bad.png", *[f"img{i}.png" for i in range(6)], "trunc.bmp"]
        assert rows[-1]["error"] == SKIPPED_WHILE_LOADING and "not an image" in rows[0]["error"]
        assert len({r["top_k_probs"] for r in rows[1:-1]}) == 6  # each image its own scores


def test_a_failing_process_leaves_no_output_and_no_shard(varied, tmp_path):
    """Process 1 fails at its second batch, after writing rows to its shard; process 0 finishes its share
    and learns of it at the barrier before merging."""
    export, inputs = varied
    script = tmp_path / "failing.py"
    script.write_text("import sys\n"
                      "from mmkit.cli import main\n"
                      "from mmkit.tasks import ImageClassifier\n"
                      "step = ImageClassifier.predict_step\n"
                      "def failing(self, batch, batch_idx, dataloader_idx=0):\n"
                      "    if self.trainer.global_rank == 1 and batch_idx == 1:\n"
                      "        raise RuntimeError('process 1 fails on purpose')\n"
                      "    return step(self, batch, batch_idx, dataloader_idx)\n"
                      "ImageClassifier.predict_step = failing\n"
                      "sys.exit(main())\n")
    out = tmp_path / "out" / "p.csv"
    proc = _ddp_predict(export, inputs, out, tmp_path, script)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "process 1 fails on purpose" in log, log[-4000:]
    assert "error: predict: another process failed" in log
    assert list(out.parent.iterdir()) == []


def _refuse_launch(monkeypatch) -> None:
    from pytorch_lightning.strategies.launchers import subprocess_script

    from mmkit.tasks import ImageClassifier

    monkeypatch.setattr(subprocess_script._SubprocessScriptLauncher, "_call_children_scripts",
                        lambda self: pytest.fail("started the other processes anyway"))
    monkeypatch.setattr(ImageClassifier, "predict_step", lambda *a, **k: pytest.fail("predicted anyway"))


REFUSED = {"unwritable": "cannot write predictions to", "fewer readable inputs than processes":
           "1 readable input(s) for 2 processes", "no images": "predict_paths: no images found in"}


@pytest.mark.parametrize("case", list(REFUSED))
def test_several_processes_refuse_a_mistake_in_one_line_before_starting_them(varied, tmp_path, monkeypatch,
                                                                             capsys, case):
    export, inputs = varied
    _refuse_launch(monkeypatch)
    (tmp_path / "blocker").write_text("a file, not a folder")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "blocker" / "p.csv" if case == "unwritable" else tmp_path / "p.csv"
    paths = {"unwritable": [str(inputs)], "no images": [str(tmp_path / "empty")]}.get(
        case, [str(inputs / "img0.png"), str(inputs / "bad.png")])
    code = main(["predict", "--config", PREDICT, *TINY, VIT + "checkpoint", str(export),
                 "--data.init_args.predict_paths", json.dumps(paths), "--prediction_writer.output", str(out),
                 "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(err) == 1, err
    assert REFUSED[case] in err[0]
    assert not (tmp_path / "p.csv").exists()


def test_merge_puts_every_input_in_order_once():
    inputs = [("x", "not an image"), ("a", None), ("b", None), ("c", None), ("d", None), ("e", None)]
    rank0 = iter([(0, ["p"], [0.5]), (2, ["q"], [0.25]), (4, ["r"], [0.125])])
    rank1 = iter([(1, ["s"], [0.75])])  # input 3 (d) was predicted by no process: it failed to decode
    rows = list(merged_predictions(inputs, [rank0, rank1]))
    assert rows == [Prediction("x", error="not an image"), Prediction("a", ["p"], [0.5]),
                    Prediction("b", ["s"], [0.75]), Prediction("c", ["q"], [0.25]),
                    Prediction("d", error=SKIPPED_WHILE_LOADING), Prediction("e", ["r"], [0.125])]
    with pytest.raises(RuntimeError, match="input 1 was predicted twice"):
        list(merged_predictions(inputs, [iter([(1, [], [])]), iter([(1, [], [])])]))
    with pytest.raises(RuntimeError, match="input 5 was predicted, of 5 readable inputs"):
        list(merged_predictions(inputs, [iter([(5, [], [])])]))


def test_predictions_are_written_not_also_kept_in_memory(export, tmp_path, monkeypatch):
    """Lightning returns every batch's predictions unless told not to: the rows are in the file already."""
    import functools

    import pytorch_lightning as pl

    returned = []
    predict = pl.Trainer.predict

    @functools.wraps(predict)  # LightningCLI reads the signature for its options
    def recording(self, *args, **kwargs):
        returned.append(predict(self, *args, **kwargs))
        return returned[-1]

    monkeypatch.setattr(pl.Trainer, "predict", recording)
    _images(tmp_path / "in", ["a.png", "b.png"])
    assert _predict(export, tmp_path / "in", tmp_path / "p.csv") == 0
    assert _predict(export, tmp_path / "in", tmp_path / "q.csv", "--return_predictions", "true") == 0
    assert returned[0] is None and len(returned[1]) == 1  # asked for: one batch's predictions
    assert (tmp_path / "p.csv").read_bytes() == (tmp_path / "q.csv").read_bytes()
