"""The `mmkit` command end to end, in-process through `mmkit.cli.main`: the shipped digits
recipes (shrunk to a 16 px, dim-32 ViT and two training batches) fit, export, validate and
test from the Lightning checkpoint, and predict to CSV/JSON with unreadable inputs reported.
"""
from __future__ import annotations

import csv
import functools
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from _images import corrupt_pixels_png
from PIL import Image

from mmkit.cli import TOOLS, main

# In-process runs pass `args` while sys.argv holds pytest's own arguments; that is intended here.
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

REPO = Path(__file__).resolve().parents[1]
FIT = str(REPO / "configs" / "vit_digits.yaml")
PREDICT = str(REPO / "configs" / "vit_digits_predict.yaml")
DIGITS = [str(i) for i in range(10)]
VIT = "--model.init_args.model.init_args."
TINY = [VIT + "image_size", "16", VIT + "patch_size", "4", VIT + "dim", "32", VIT + "depth", "1",
        VIT + "num_heads", "2",
        "--data.init_args.image_size", "16", "--data.init_args.batch_size", "16", "--data.init_args.num_workers", "0",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
        "--trainer.limit_test_batches", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.precision", "32-true"]  # exact on every CPU
# Batch limits are 2, never 1: `limit_*_batches` is `int | float`, and whether "1" parses as 1 batch
# or as 1.0 (= all batches) depends on import order: with scikit-learn (via mmkit.data) imported
# before pytorch_lightning, Trainer's annotation reads Union[float, int, None] and jsonargparse
# tries float first. 2 and 2.0 both mean two batches.
EVAL_BATCHES = 2
PREDICT_TINY = ["--data.init_args.image_size", "16", "--data.init_args.num_workers", "0",
                "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch cwd with MMKIT_CACHE inside it; one thread for the tiny models (shared CPUs)."""
    root = tmp_path_factory.mktemp("cli")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMKIT_CACHE", str(root / "cache"))
        mp.delenv("PL_GLOBAL_SEED", raising=False)  # seed_everything sets it; restored afterwards
        mp.chdir(root)
        yield root
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fitted(workdir) -> Path:
    out = workdir / "run"
    assert main(["fit", "--config", FIT, *TINY, "--model.init_args.export_dir", str(out / "export"),
                 "--trainer.default_root_dir", str(out)]) == 0
    return out


def _last_metrics(run: Path) -> dict[str, float]:
    """The metrics of the newest CSVLogger version under `run` (one row per logged step/epoch)."""
    newest = max((run / "lightning_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    merged = {}
    with (newest / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            merged.update({k: float(v) for k, v in row.items() if v})
    return merged


def _eval_loss(export: Path, split: str, cache: Path) -> float:
    """Mean cross-entropy of the exported weights on the first EVAL_BATCHES (unshuffled, full)
    batches of a digits split, as Lightning logs it for the epoch."""
    from mmkit.data import DigitsDataModule
    from mmkit.models import ViT

    data = DigitsDataModule(root=str(cache / "digits"), image_size=16, batch_size=16, num_workers=0)
    data.setup({"val": "validate", "test": "test"}[split])
    model = ViT.from_pretrained(export).eval()
    batches = zip(range(EVAL_BATCHES), getattr(data, f"{split}_dataloader")())
    with torch.no_grad():
        return float(np.mean([F.cross_entropy(model(images), targets).item() for _, (images, targets, _) in batches]))


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for sub in ("fit", "validate", "test", "predict", "bench", "demo"):
        assert sub in out
    assert "usage:" not in out.split("\n", 2)[2]  # mmkit's summary alone, not LightningCLI's help after it
    assert main([]) == 2  # bare `mmkit` prints the usage and fails
    tool_lines = [line for line in capsys.readouterr().out.splitlines()
                  if line.split()[:1] and line.split()[0] in TOOLS]
    assert len(tool_lines) == len(TOOLS)
    assert len({len(line) - len(line.split(maxsplit=1)[1]) for line in tool_lines}) == 1  # one column of help texts


def test_version_is_the_installed_distributions(capsys):
    from importlib.metadata import version

    import mmkit

    for flag in ("--version", "-V"):
        assert main([flag]) == 0
        assert capsys.readouterr().out == f"mmkit {version('mmkit')}\n"
    assert mmkit.__version__ == version("mmkit")


def test_a_missing_config_file_is_one_line(tmp_path, capsys):
    for argv in (["fit", "--config", str(tmp_path / "nope.yaml")], ["test", "-c", "nope.yaml"],
                 ["validate", f"--config={tmp_path / 'nope.yaml'}"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"mmkit {argv[0]}: error: --config ") and "no such file" in err


def test_ctrl_c_while_a_tool_imports_is_one_line(monkeypatch, capsys):
    """Ctrl-C in the seconds a tool's module spends importing torch: one line and the shell's 130, not a
    traceback through importlib (each tool reports an interruption itself once it runs)."""
    import importlib

    def interrupted(name, package=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib, "import_module", interrupted)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["label", "photos/", "--labels", "cat,dog"]) == 130
    assert capsys.readouterr().err == "mmkit label: interrupted while starting; nothing was written\n"
    assert signal.getsignal(signal.SIGTERM) is before  # the tool's own handlers take over once it runs


def test_sigterm_while_a_tool_imports_is_one_line():
    """SIGTERM (`timeout`, a scheduler) in those seconds: the same line and 130, not a silent death."""
    proc = subprocess.Popen([sys.executable, "-c", "import os, signal, sys, mmkit.cli, importlib\n"
                             "def slow(name, package=None):\n"
                             "    os.kill(os.getpid(), signal.SIGTERM)\n"
                             "    raise SystemExit('the signal was not acted on')\n"
                             "importlib.import_module = slow\n"
                             "sys.exit(mmkit.cli.main(['embed', 'rows.txt']))\n"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err == "mmkit embed: interrupted while starting; nothing was written\n", err


def test_an_unknown_command_names_every_command_and_the_closest(capsys):
    """LightningCLI's own refusal listed fit/validate/test/predict only, not the tools."""
    assert main(["transcrib", "talk.wav"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmkit: error: unknown command 'transcrib' (did you mean 'transcribe'?); commands: fit, ")
    assert all(tool in err for tool in TOOLS) and err.count("\n") == 1


def test_a_config_that_is_a_folder_or_not_utf8_is_one_line(tmp_path, capsys):
    """A UTF-16 recipe (as Windows Notepad may save it) was a UnicodeDecodeError traceback from jsonargparse."""
    (tmp_path / "u16.yaml").write_text("seed_everything: 0\n", encoding="utf-16")
    for given, why in ((tmp_path, "a folder, not a recipe file"), (tmp_path / "u16.yaml", "not UTF-8 text (byte 0)")):
        assert main(["fit", "--config", str(given)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"mmkit fit: error: --config {given}: {why}") and err.count("\n") == 1, err


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_shipped_recipe_parses_against_the_classes_it_names(recipe, capsys):
    # --print_config validates every key against the signatures (a renamed argument fails here).
    subcommand = "predict" if "predict" in recipe else "fit"
    with pytest.raises(SystemExit) as exit_:
        main([subcommand, "--config", str(REPO / "configs" / recipe), "--print_config"])
    assert exit_.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load((REPO / "configs" / recipe).read_text())
    assert cfg["model"]["class_path"] == written["model"]["class_path"]
    for key, value in written["model"].get("init_args", {}).items():
        if not isinstance(value, dict):
            assert cfg["model"]["init_args"][key] == value


def test_print_config_resolves_the_recipe(workdir, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", FIT, "--print_config"])
    assert exit_.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["class_path"] == "mmkit.tasks.ImageClassifier"
    recipe = yaml.safe_load(Path(FIT).read_text())
    vit = cfg["model"]["init_args"]["model"]
    assert vit["class_path"] == "mmkit.models.ViT"
    assert vit["init_args"] == {**vit["init_args"], **recipe["model"]["init_args"]["model"]["init_args"]}
    assert cfg["data"]["class_path"] == "mmkit.data.DigitsDataModule"
    # Class count and names come from the data (link_arguments), not from the recipe.
    assert "num_classes" not in vit["init_args"] and "class_names" not in cfg["model"]["init_args"]
    assert "num_classes" not in Path(FIT).read_text()


def test_fit_exports_a_checkpoint_with_linked_classes(fitted):
    doc = json.loads((fitted / "export" / "config.json").read_text())
    assert doc["architecture"] == "ViT"
    assert doc["config"]["num_classes"] == 10  # linked from DigitsDataModule.num_classes
    assert (doc["config"]["dim"], doc["config"]["depth"], doc["config"]["image_size"]) == (32, 1, 16)
    assert doc["metadata"]["class_names"] == DIGITS
    assert doc["metadata"]["image_size"] == 16 and doc["metadata"]["mean"] == [0.5] * 3
    assert (fitted / "export" / "model.safetensors").stat().st_size > 0
    assert (fitted / "checkpoints" / "last.ckpt")  # the fixed folder: --ckpt_path last finds it.is_file()


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_evaluate_from_the_lightning_checkpoint(fitted, workdir, stage):
    ckpt = fitted / "checkpoints" / "last.ckpt"
    assert main([stage, "--config", FIT, *TINY, "--trainer.default_root_dir", str(fitted),
                 "--ckpt_path", str(ckpt)]) == 0
    metrics = _last_metrics(fitted)
    split = {"validate": "val", "test": "test"}[stage]
    # The logged loss is that of the trained weights (equal to the export's), so the checkpoint loaded.
    assert metrics[f"{split}/loss"] == pytest.approx(_eval_loss(fitted / "export", split, workdir / "cache"), rel=1e-4)
    assert 0.0 <= metrics[f"{split}/acc"] <= 1.0


def _weights(export: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next(export.glob("*.safetensors"))))


class StopAfterFirstEpoch(pl.Callback):
    """A run stopped after its first epoch, as Ctrl-C or a lost machine would, its length unchanged."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = True


def test_a_resumed_run_trains_as_the_uninterrupted_one(workdir):
    """Stopped after its first epoch and resumed with `--ckpt_path last`, a run ends with the weights of the same
    run uninterrupted, bit for bit: the same batches (each epoch's shuffle is drawn from the seed and the epoch; it
    was the global generator's, re-seeded by the resumed run: epoch 0's order again), the same augmentations (the
    checkpoint keeps the random generators' states) and the same learning rates."""
    whole, part = workdir / "whole", workdir / "part"
    three = [*TINY, "--trainer.max_epochs", "3"]
    lr = ["--model.init_args.lr", "0.003", "--model.init_args.weight_decay", "0.01"]  # not the recipe's: resumed
    assert main(["fit", "--config", FIT, *three, *lr, "--trainer.default_root_dir", str(whole),  # without them,
                 "--model.init_args.export_dir", str(whole / "export")]) == 0  # the run keeps them (the checkpoint's)
    assert main(["fit", "--config", FIT, *three, *lr, "--trainer.default_root_dir", str(part), "--trainer.callbacks+",
                 f"{__name__}.StopAfterFirstEpoch", "--model.init_args.export_dir", str(part / "export")]) == 0
    assert torch.load(part / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True, mmap=True)[
        "epoch"] == 0
    assert main(["fit", "--config", FIT, *three, "--trainer.default_root_dir", str(part),
                 "--model.init_args.export_dir", str(part / "export"), "--ckpt_path", "last"]) == 0
    resumed, uninterrupted = _weights(part / "export"), _weights(whole / "export")
    assert max((resumed[k] - uninterrupted[k]).abs().max().item() for k in uninterrupted) == 0.0


def test_a_longer_resumed_run_follows_its_own_schedule(workdir, caplog):
    """Resumed with a larger max_epochs, the first step ran at the stopped run's last learning rate (0, its
    schedule's end) before the new schedule took over (then 63% of the peak); now it starts on the new schedule."""
    run = workdir / "longer"
    assert main(["fit", "--config", FIT, *TINY, "--trainer.default_root_dir", str(run),
                 "--model.init_args.export_dir", str(run / "export")]) == 0
    with caplog.at_level(logging.INFO, logger="mmkit"):
        assert main(["fit", "--config", FIT, *TINY, "--trainer.max_epochs", "3", "--trainer.default_root_dir",
                     str(run), "--model.init_args.export_dir", str(run / "export"), "--ckpt_path", "last"]) == 0
    assert "resumed at step 2: learning rate 0.0015 (the checkpoint's 0)" in caplog.text


def test_a_resume_with_nothing_left_to_train_leaves_the_export(workdir, caplog):
    """Resumed with the max_epochs it already reached, a run trains no step: it exported the same weights again
    (global_step, restored, was not 0), against "a fit without a training step leaves an earlier export"."""
    run = workdir / "done"
    assert main(["fit", "--config", FIT, *TINY, "--trainer.default_root_dir", str(run)]) == 0
    stamp = (run / "export" / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level(logging.WARNING):
        assert main(["fit", "--config", FIT, *TINY, "--trainer.default_root_dir", str(run), "--ckpt_path",
                     "last"]) == 0
    assert "no training step ran: nothing exported" in caplog.text
    assert (run / "export" / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_run_resumed_from_a_file_keeps_the_model_options_given(workdir, caplog, monkeypatch):
    """Lightning re-reads `--ckpt_path FILE`'s hyper-parameters over the command line's: resumed into another
    folder, the run exported over the first run's export, and a new learning rate or weight decay was dropped
    (the restored optimizer kept the checkpoint's too). Options given keep their values, each change logged.
    The hyper-parameters are read through a memory map: the restore is the one whole read of the file (Lightning
    read it whole twice)."""
    first, second = workdir / "given-a", workdir / "given-b"
    assert main(["fit", "--config", FIT, *TINY, "--trainer.default_root_dir", str(first),
                 "--model.init_args.export_dir", str(first / "export")]) == 0
    exported = (first / "export" / "model.safetensors").read_bytes()
    whole_reads, load = [], torch.load

    def counted(f, *args, **kwargs):
        if Path(str(getattr(f, "path", getattr(f, "name", f)))).name == "last.ckpt" and not kwargs.get("mmap"):
            whole_reads.append(f)
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    with caplog.at_level(logging.INFO):
        assert main(["fit", "--config", FIT, *TINY, "--trainer.max_epochs", "2", "--trainer.default_root_dir",
                     str(second), "--model.init_args.export_dir", str(second / "export"), "--model.init_args.lr=1e-4",
                     "--model.init_args.weight_decay", "0.01", "--ckpt_path",
                     str(first / "checkpoints" / "last.ckpt")]) == 0
    assert len(whole_reads) == 1
    monkeypatch.setattr(torch, "load", load)
    assert (first / "export" / "model.safetensors").read_bytes() == exported
    assert (second / "export" / "model.safetensors").is_file()
    assert f"--model.init_args.export_dir: '{second / 'export'}' as given (the checkpoint's: " in caplog.text
    assert "resumed with this run's base learning rate 0.0001 (the checkpoint's 0.002)" in caplog.text
    state = torch.load(second / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["hyper_parameters"]["lr"] == 1e-4
    groups = state["optimizer_states"][0]["param_groups"]
    assert {g["weight_decay"] for g in groups} - {0.0} == {0.01}
    assert max(g["initial_lr"] for g in groups) == pytest.approx(1e-4)


def test_the_recipes_outputs_follow_a_default_root_dir_given(workdir, caplog):
    """With --trainer.default_root_dir and no export_dir, the export went to the recipe's runs/vit_digits/export
    (over the digits run's, which the predict recipe serves); it follows the folder given, as the checkpoints do,
    and an export_dir given stays where it is."""
    own = workdir / "own"
    with caplog.at_level(logging.INFO):
        assert main(["fit", "--config", FIT, *TINY, "--trainer.default_root_dir", str(own)]) == 0
    assert (own / "export" / "model.safetensors").is_file() and not (workdir / "runs" / "vit_digits").exists()
    assert f"--model.init_args.export_dir: {own / 'export'} (the recipe's runs/vit_digits/export" in caplog.text
    assert main(["fit", "--config", FIT, *TINY, "--trainer.default_root_dir", str(own / "b"),
                 "--model.export_dir", str(own / "given")]) == 0
    assert (own / "given" / "model.safetensors").is_file() and not (own / "b" / "export").exists()


def test_last_follows_the_run_and_best_and_last_load_in_any_subcommand(workdir, caplog):
    """last.ckpt holds the newest epoch even where the monitored metric never improves (Lightning's own callback
    rewrote it only with a new best: `--ckpt_path last` resumed epoch 0); "best" in a new process is the one the
    run recorded (Lightning's "not configured to save the best model"); predict reads "last" from the recipe's
    folder (it found none and predicted with random weights), and asks for a run when there is none."""
    flat = workdir / "flat"
    assert main(["fit", "--config", FIT, *TINY, "--trainer.max_epochs", "3", "--trainer.default_root_dir", str(flat),
                 "--model.init_args.export_dir", str(flat / "export"), "--model.init_args.lr", "1e-12"]) == 0
    checkpoints = flat / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best-epoch=00.ckpt", "last.ckpt"]  # no new best
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True, mmap=True)
    assert (last["epoch"], last["global_step"]) == (2, 6)
    with caplog.at_level(logging.INFO):
        assert main(["test", "--config", FIT, *TINY, "--trainer.default_root_dir", str(flat),
                     "--ckpt_path", "best"]) == 0
        assert f"Restoring states from the checkpoint path at {checkpoints / 'best-epoch=00.ckpt'}" in caplog.text
        caplog.clear()
        assert main(["predict", "--config", FIT, *TINY, "--trainer.default_root_dir", str(flat), "--ckpt_path",
                     "last", "--data.init_args.predict_paths", f"[{workdir / 'cache' / 'digits' / 'test' / '3'}]",
                     "--prediction_writer.output", str(flat / "p.csv")]) == 0
        assert f"Restoring states from the checkpoint path at {checkpoints / 'last.ckpt'}" in caplog.text
        # a second run into the same folder writes last-v1.ckpt: "best" is that run's, as "last" is
        assert main(["fit", "--config", FIT, *TINY, "--trainer.default_root_dir", str(flat),
                     "--model.init_args.export_dir", str(flat / "export")]) == 0
        caplog.clear()
        assert main(["test", "--config", FIT, *TINY, "--trainer.default_root_dir", str(flat),
                     "--ckpt_path", "best"]) == 0
        assert f"checkpoint path at {checkpoints / 'best-epoch=00-v1.ckpt'}" in caplog.text


@pytest.mark.parametrize("subcommand", ["test", "predict"])
def test_a_missing_last_checkpoint_outside_fit_asks_for_a_run(workdir, capsys, subcommand):
    assert main([subcommand, "--config", FIT, *TINY, "--trainer.default_root_dir", str(workdir / "none"),
                 "--ckpt_path", "last", "--prediction_writer.output", str(workdir / "p.csv")]
                [:None if subcommand == "predict" else -2]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"mmkit {subcommand}: error: --ckpt_path last: no checkpoint at {workdir / 'none' / 'checkpoints'}/last.ckpt;"
        " train first (mmkit fit with this recipe and --trainer.default_root_dir) or give a checkpoint file")


def _predict_inputs(folder: Path, cache: Path) -> tuple[list[Path], dict[Path, str]]:
    folder.mkdir()
    good = []
    for digit in "258":
        src = sorted((cache / "digits" / "test" / digit).glob("*.png"))[0]
        good.append(Path(shutil.copy(src, folder / f"digit{digit}.png")))
    bad = {"corrupt.png": (b"not a png\n", "not an image"), "empty.jpg": (b"", "zero-byte file"),
           "decode.png": (corrupt_pixels_png(), "unreadable")}  # intact header: only decoding fails
    for name, (data, _) in bad.items():
        (folder / name).write_bytes(data)
    return good, {folder / name: reason for name, (_, reason) in bad.items()}


def _read_rows(out: Path) -> list[dict]:
    if out.suffix == ".json":
        return json.loads(out.read_text())
    with out.open(newline="") as f:
        return [{"path": r["path"], "labels": r["top_k_labels"].split("|") if r["top_k_labels"] else [],
                 "probs": [float(x) for x in r["top_k_probs"].split("|")] if r["top_k_probs"] else [],
                 "error": r["error"] or None} for r in csv.DictReader(f)]


@pytest.mark.parametrize(("suffix", "top_k"), [(".csv", None), (".json", 2)])
def test_predict_writes_one_row_per_input(fitted, workdir, tmp_path, suffix, top_k):
    from mmkit.inference import Classifier

    good, bad = _predict_inputs(tmp_path / "in", workdir / "cache")
    out = tmp_path / f"predictions{suffix}"
    args = ["predict", "--config", PREDICT, *PREDICT_TINY,
            VIT + "checkpoint", str(fitted / "export"),
            "--data.init_args.predict_paths", json.dumps([str(tmp_path / "in")]),
            "--prediction_writer.output", str(out)]
    assert main(args + (["--model.init_args.top_k", str(top_k)] if top_k else [])) == 0
    k = top_k or 3  # the predict recipe's top_k
    rows = _read_rows(out)
    assert [r["path"] for r in rows] == sorted(map(str, good + list(bad)))
    by_path = {r["path"]: r for r in rows}
    for path, reason in bad.items():
        row = by_path[str(path)]
        assert reason in row["error"] and row["labels"] == [] and row["probs"] == []
    # The same top-k as the Python API on the same files: one predict path behind both.
    api = {p.path: p for p in Classifier.from_pretrained(fitted / "export").predict_paths(good, top_k=k)}
    for path in map(str, good):
        row = by_path[path]
        assert row["error"] is None
        assert len(row["labels"]) == k and set(row["labels"]) <= set(DIGITS)
        assert row["probs"] == sorted(row["probs"], reverse=True) and all(0 <= p <= 1 for p in row["probs"])
        assert row["labels"] == api[path].labels
        assert row["probs"] == pytest.approx(api[path].probs, abs=1e-5)


@pytest.mark.parametrize("ckpt", ["last", "file"])
def test_predict_with_a_fit_recipe_on_own_images_reads_the_classes_from_the_checkpoint(fitted, workdir, tmp_path,
                                                                                       ckpt):
    """The fit recipe, own images to predict and no class folders: the head's size and the class names come from
    the checkpoint (the model was built with num_classes None: a TypeError, exit 1)."""
    digits = workdir / "cache" / "digits" / "train"
    for name, digit in zip(["cat", "dog", "fox"], "017"):
        (tmp_path / "train" / name).mkdir(parents=True)
        for src in sorted((digits / digit).glob("*.png"))[:6]:
            shutil.copy(src, tmp_path / "train" / name / src.name)
    own = ["--data", "mmkit.data.ImageFolderDataModule", *TINY, "--trainer.default_root_dir", str(tmp_path / "run")]
    assert main(["fit", "--config", FIT, *own, "--data.init_args.train_dir", str(tmp_path / "train"),
                 "--data.init_args.val_split", "0.34", "--model.init_args.export_dir", str(tmp_path / "export")]) == 0
    out = tmp_path / "p.jsonl"
    path = "last" if ckpt == "last" else str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert main(["predict", "--config", FIT, *own, "--data.init_args.predict_paths",
                 json.dumps([str(tmp_path / "train" / "dog")]), "--prediction_writer.output", str(out),
                 "--ckpt_path", path]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(set(r["labels"]) <= {"cat", "dog", "fox"} and r["labels"] for r in rows)


def test_predict_with_nothing_readable_still_reports_every_input(fitted, tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"not a png\n")
    inputs = [tmp_path / "corrupt.png", tmp_path / "no_such_folder"]
    out = tmp_path / "predictions.jsonl"
    assert main(["predict", "--config", PREDICT, *PREDICT_TINY, VIT + "checkpoint", str(fitted / "export"),
                 "--data.init_args.predict_paths", json.dumps(list(map(str, inputs))),
                 "--prediction_writer.output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["path"], r["labels"]) for r in rows] == [(str(p), []) for p in inputs]
    assert "not an image" in rows[0]["error"] and "cannot read file" in rows[1]["error"]


def test_predict_rejects_an_unknown_output_format_before_predicting(fitted, tmp_path, monkeypatch, capsys):
    from mmkit.tasks import ImageClassifier

    monkeypatch.setattr(ImageClassifier, "predict_step", lambda *a, **k: pytest.fail("predicted anyway"))
    code = main(["predict", "--config", PREDICT, *PREDICT_TINY, VIT + "checkpoint", str(fitted / "export"),
                 "--data.init_args.predict_paths", json.dumps([str(tmp_path)]),
                 "--prediction_writer.output", str(tmp_path / "predictions.txt")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "predictions.txt: use one of .csv, .json, .jsonl" in err


def test_predict_with_a_missing_checkpoint_names_it(workdir, tmp_path, capsys):
    missing = tmp_path / "no_such_export"
    code = main(["predict", "--config", PREDICT, VIT + "checkpoint", str(missing),
                 "--prediction_writer.output", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err  # one line, no traceback dump
    assert f"{missing}: not an mmkit checkpoint directory (no config.json)" in err
    assert not (tmp_path / "p.csv").exists()


def test_checkpoint_of_another_architecture_names_the_file(workdir, tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "GPT", "config": {}}))
    code = main(["predict", "--config", PREDICT, VIT + "checkpoint", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{tmp_path / 'config.json'}: holds a 'GPT' checkpoint, not ViT" in err


def test_unknown_class_path_is_a_usage_error(workdir, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", FIT, "--model.init_args.model.class_path", "mmkit.models.NoSuchViT",
              "--print_config"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "NoSuchViT" in err and "Traceback" not in err


def test_a_setting_lightning_refuses_at_run_time_is_one_line(workdir, tmp_path, capsys):
    # the recipe's LearningRateMonitor needs a logger: Lightning refuses when training starts
    code = main(["fit", "--config", FIT, *TINY, "--trainer.logger", "false", "--model.init_args.export_dir", "null",
                 "--trainer.default_root_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "mmkit fit: error: trainer: Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger" in err


def test_a_refusal_once_the_trainer_is_set_up_leaves_no_log_folder(workdir, tmp_path, capsys):
    """Refused after the trainer was built (an export_dir that is a file, a missing --ckpt_path file), a run left
    lightning_logs/version_N/config.yaml, one more per retry; a folder that logged something stays."""
    (tmp_path / "file").write_text("x")
    for extra in (["--model.init_args.export_dir", str(tmp_path / "file")],
                  ["--ckpt_path", str(tmp_path / "missing.ckpt")]):
        assert main(["fit", "--config", FIT, *TINY, "--trainer.default_root_dir", str(tmp_path / "run"), *extra]) == 2
        assert capsys.readouterr().err.count("mmkit fit: error: ") == 1
        assert not (tmp_path / "run" / "lightning_logs").exists()
    assert main(["fit", "--config", FIT, *TINY, "--trainer.default_root_dir", str(tmp_path / "run")]) == 0
    assert main(["fit", "--config", FIT, *TINY, "--trainer.default_root_dir", str(tmp_path / "run"),
                 "--model.init_args.export_dir", str(tmp_path / "file")]) == 2
    assert [p.name for p in (tmp_path / "run" / "lightning_logs").iterdir()] == ["version_0"]  # the run's, kept


def test_a_callback_or_logger_lightning_refuses_is_one_line(workdir, tmp_path, capsys, monkeypatch):
    """EarlyStopping monitoring a metric no step logs (Lightning says so once validation ends) and a logger whose
    package is missing were tracebacks of 40-94 lines, exit 1."""
    code = main(["fit", "--config", FIT, *TINY, "--trainer.default_root_dir", str(tmp_path / "a"),
                 "--model.init_args.export_dir", "null",
                 "--trainer.callbacks+=pytorch_lightning.callbacks.EarlyStopping", "--trainer.callbacks.monitor",
                 "val/accuracy"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "mmkit fit: error: trainer: Early stopping conditioned on metric `val/accuracy` which is not" in err
    import lightning_fabric.loggers.tensorboard as tensorboard

    monkeypatch.setattr(tensorboard, "_TENSORBOARD_AVAILABLE", False)  # as where neither package is installed
    monkeypatch.setattr(tensorboard, "_TENSORBOARDX_AVAILABLE", False)
    code = main(["fit", "--config", FIT, *TINY, "--trainer.default_root_dir", str(tmp_path / "b"),
                 "--model.init_args.export_dir", "null", "--trainer.logger",
                 "pytorch_lightning.loggers.TensorBoardLogger", "--trainer.logger.save_dir", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "mmkit fit: error: trainer: Neither `tensorboard` nor `tensorboardX` is available" in err


@pytest.mark.parametrize("option, value, message", [
    ("--model.init_args.lr", "-1", "--model.init_args.lr must be > 0, got -1.0"),
    ("--model.init_args.label_smoothing", "5", "--model.init_args.label_smoothing must be in [0, 1), got 5.0"),
    ("--model.init_args.warmup_ratio", "2", "--model.init_args.warmup_ratio must be in [0, 1), got 2.0"),
    ("--model.init_args.top_k", "0", "--model.init_args.top_k must be >= 1, got 0"),  # predicted empty rows
    ("--data.init_args.batch_size", "0", "--data.init_args.batch_size must be >= 1, got 0"),
    ("--data.init_args.num_workers", "-1", "--data.init_args.num_workers must be >= 0, got -1"),
])
def test_recipe_values_out_of_range_are_one_line_before_anything_is_built(workdir, tmp_path, capsys, option, value,
                                                                          message):
    from mmkit.tasks import ImageClassifier

    @functools.wraps(ImageClassifier.__init__)  # its signature kept: the recipe parses against it
    def refuse(*args, **kwargs):
        pytest.fail("built anyway")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ImageClassifier, "__init__", refuse)
        code = main(["fit", "--config", FIT, *TINY, option, value, "--trainer.default_root_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("classes", [[], ["a"]])
def test_a_train_dir_with_fewer_than_two_classes_is_one_line(workdir, tmp_path, capsys, classes):
    for name in classes:
        (tmp_path / "train" / name).mkdir(parents=True)
    (tmp_path / "train").mkdir(exist_ok=True)
    code = main(["fit", "--config", FIT, *TINY, "--data", "mmkit.data.ImageFolderDataModule",
                 "--data.init_args.train_dir", str(tmp_path / "train"), "--data.init_args.image_size", "16",
                 "--trainer.default_root_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"holds {len(classes)} class folder(s) {classes}: a classifier needs at least 2" in err


def test_class_names_that_do_not_fit_the_head_are_refused_at_load(fitted, tmp_path):
    from mmkit.models import ViT
    from mmkit.weights import WeightsError

    for names, message in ((list(range(10)), "must be a list of non-empty strings"),
                           (["a"] * 10, "metadata.class_names repeats ['a']"),
                           (["a", "b"], "has 2 names for a 10-class head")):
        export = tmp_path / "export"
        shutil.copytree(fitted / "export", export, dirs_exist_ok=True)
        doc = json.loads((export / "config.json").read_text())
        doc["metadata"]["class_names"] = names
        (export / "config.json").write_text(json.dumps(doc))
        with pytest.raises(WeightsError, match=re.escape(message)):
            ViT.from_pretrained(export)


def test_predict_says_when_the_data_preprocesses_unlike_the_checkpoint(fitted, tmp_path, caplog):
    import logging

    (tmp_path / "in").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "in" / "a.png")  # a folder with no image is refused
    args = ["predict", "--config", PREDICT, *PREDICT_TINY, VIT + "checkpoint", str(fitted / "export"),
            "--data.init_args.predict_paths", json.dumps([str(tmp_path / "in")]),
            "--prediction_writer.output", str(tmp_path / "p.csv")]
    for extra, warned in (([], False), (["--data.init_args.image_size", "24"], True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mmkit"):
            assert main(args + extra) == 0
        assert ("differs from the checkpoint's: image_size 24 (checkpoint: 16)" in caplog.text) is warned


@pytest.mark.parametrize("argv, message", [
    (["--trainer.precision", "foo"], "mmkit fit: error: --trainer.precision: invalid value 'foo' (mmkit fit --help"),
    (["--model.init_args.lr", "nan"], "mmkit fit: error: --model.init_args.lr: Expected a float. Got value: nan"),
    (["--no_such_option", "3"], "mmkit fit: error: unrecognized arguments: --no_such_option 3"),
])
def test_an_option_jsonargparse_refuses_is_one_line_not_the_usage(workdir, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", FIT, *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith(message), err


def test_an_empty_config_file_is_one_line(workdir, tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(tmp_path / "empty.yaml")])
    assert exit_.value.code == 2 and "a --config file holds no settings" in capsys.readouterr().err


def test_a_ckpt_path_of_another_recipe_is_one_line(workdir, tmp_path, capsys):
    ckpt = tmp_path / "other.ckpt"
    torch.save({"hyper_parameters": {"_class_path": "mmkit.tasks.MaskedLMTask", "lr": 0.1}}, ckpt)
    code = main(["validate", "--config", FIT, *TINY, "--ckpt_path", str(ckpt)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"--ckpt_path {ckpt}: saved by another model or recipe than this config's" in err


@pytest.mark.parametrize("folders", [["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"], ["0", "1", "2"]],
                         ids=["renamed", "three"])
def test_a_test_folder_of_other_classes_is_refused_by_name(fitted, workdir, tmp_path, capsys, folders):
    """A test_dir alone numbers its own class folders: ten renamed ones were scored against the digits' classes
    (a wrong accuracy, exit 0), three of them were "a checkpoint of other sizes" (num_classes 10, here 3)."""
    digits = workdir / "cache" / "digits" / "test"
    for name, digit in zip(folders, DIGITS):
        (tmp_path / "t" / name).mkdir(parents=True)
        shutil.copy(sorted((digits / digit).glob("*.png"))[0], tmp_path / "t" / name / "x.png")
    code = main(["test", "--config", FIT, "--data", "mmkit.data.ImageFolderDataModule", *TINY,
                 "--data.init_args.test_dir", str(tmp_path / "t"), "--trainer.default_root_dir", str(fitted),
                 "--ckpt_path", "last"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert (f"mmkit test: error: the data's classes ({', '.join(folders[:8])}" in err
            and "are not the checkpoint's (0, 1, 2, 3, 4, 5, 6, 7 and 2 more)" in err), err


def test_a_checkpoint_of_other_model_sizes_names_the_fields_that_differ(fitted, capsys):
    # `mmkit test --ckpt_path last` without the sizes the fit was given: which ones, not a size-mismatch table
    other = [a if a != "32" else "48" for a in TINY]  # dim 48 instead of 32
    code = main(["test", "--config", FIT, *other, "--trainer.default_root_dir", str(fitted),
                 "--ckpt_path", str(fitted / "checkpoints" / "last.ckpt")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "the checkpoint's ViT does not fit this run's: it has dim 32 (here 48)" in err, err
