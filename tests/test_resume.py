"""`mmkit fit ... --ckpt_path last` after a crash continues from the last saved epoch: a real
`mmkit fit` subprocess is killed with SIGKILL mid-run and resumed; asking to resume where there is
nothing to resume from is an error (exit 2, one line), not a silent fresh start. A resume refused after the
checkpoint restored its step, or of a run that had finished, leaves no new log folder, and model options given within
a mapping keep their values."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def _fit(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mmkit.cli", "fit", "--config", str(REPO / "configs" / "vit_digits.yaml"),
            "--trainer.default_root_dir", str(root), "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
            "--model.init_args.export_dir", str(root / "export"), "--data.init_args.num_workers", "0", *extra]


def _epoch(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]  # our own file, written just now


@pytest.mark.slow
def test_fit_killed_then_resumed_continues_from_the_last_epoch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    last = tmp_path / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(_fit(tmp_path, "--trainer.max_epochs", "200"), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if last.is_file() and _epoch_safe(last) >= 2:
                break
            assert proc.poll() is None, "fit ended before it could be killed"
            time.sleep(0.5)
        else:
            pytest.fail("no last.ckpt with epoch >= 2 within 240 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = _epoch(last)
    assert killed_at >= 2
    out = subprocess.run(_fit(tmp_path, "--trainer.max_epochs", str(killed_at + 2), "--ckpt_path", "last"),
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Restoring states from the checkpoint path" in out.stderr + out.stdout
    assert _epoch(last) == killed_at + 1  # trained the remaining epochs, not 0..killed_at+1 again
    assert not (tmp_path / "lightning_logs" / "version_0" / "checkpoints").exists()


def _epoch_safe(path: Path) -> int:
    try:  # the file may be half-written while we poll
        return _epoch(path)
    except Exception:  # noqa: BLE001
        return -1


def test_resume_with_nothing_to_resume_is_an_error(tmp_path):
    out = subprocess.run(_fit(tmp_path, "--trainer.max_epochs", "1", "--ckpt_path", "last"), cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.startswith("mmkit fit: error:")]
    assert lines and "no checkpoint to resume from" in lines[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "export").exists()


# ---- a resume's log folder and options, in-process with a tiny clip_shapes run ---------------------------------

CLIP = str(REPO / "configs" / "clip_shapes.yaml")
_TOWERS = "--model.init_args.model.init_args."
TINY_CLIP = [*(arg for tower in ("visual", "text") for key, value in (("dim", "32"), ("depth", "1"), ("num_heads", "2"))
               for arg in (f"{_TOWERS}{tower}.init_args.{key}", value)),
             "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "16", "--data.init_args.val_samples",
             "32", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
             "--trainer.precision", "32-true"]


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory) -> Path:
    """The last.ckpt of a one-epoch (two-step) tiny clip_shapes fit; one torch thread (shared CPUs)."""
    from mmkit.cli import main

    root = tmp_path_factory.mktemp("clip_run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("PL_GLOBAL_SEED", raising=False)  # seed_everything sets it
        assert main(["fit", "--config", CLIP, *TINY_CLIP, "--trainer.max_epochs", "1",
                     "--trainer.default_root_dir", str(root / "run")]) == 0
    torch.set_num_threads(threads)
    return root / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture
def resume(clip_checkpoint, tmp_path, monkeypatch):
    """`mmkit fit ... --ckpt_path last` (in-process) in a copy of the run's checkpoint folder, tmp_path/run: the
    returned function runs it with extra options and returns the exit code (exceptions that are no user error
    raised)."""
    from mmkit.cli import main

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    shutil.copy(clip_checkpoint, tmp_path / "run" / "checkpoints" / "last.ckpt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield lambda *extra: main(["fit", "--config", CLIP, *TINY_CLIP, "--trainer.default_root_dir",
                               str(tmp_path / "run"), "--ckpt_path", "last", "--trainer.max_epochs", "2", *extra])
    torch.set_num_threads(threads)


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
@pytest.mark.parametrize("refusal", ["tower locked since", "weights-only checkpoint"])
def test_a_resume_without_a_restorable_training_state_is_one_line_and_leaves_no_log_folder(resume, tmp_path, capsys,
                                                                                          refusal):
    """Optimizer states that do not fit this run's parameter groups (torch's ValueError) and a checkpoint without
    them (Lightning's KeyError, "contains only the model") were tracebacks raised as the optimizer's state was
    restored; each is refused in one line before Lightning restores anything of the training state, and the refused
    run's lightning_logs/version_N is removed (each retry left one more folder)."""
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    if refusal == "tower locked since":  # the optimizer's groups now lack the image tower
        extra = ["--model.init_args.lock_image", "true"]
        message = (f"--ckpt_path {last}: the checkpoint's optimizer state does not fit this run's parameter groups "
                   "(tensors per group: ")
        advice = ("an option that changes which parameters train differs from the run's: --model.init_args.lock_image "
                  "true, the run's false; resume with the run's options, or drop --ckpt_path to start a new run")
    else:  # as ModelCheckpoint(save_weights_only=True) writes it
        state = torch.load(last, weights_only=False)
        torch.save({k: v for k, v in state.items() if k not in ("optimizer_states", "lr_schedulers", "callbacks")},
                   tmp_path / "weights.ckpt")
        extra = ["--ckpt_path", str(tmp_path / "weights.ckpt")]
        message = (f"--ckpt_path {tmp_path / 'weights.ckpt'}: the checkpoint holds the model's weights only (saved "
                   "with save_weights_only: no optimizer_states or lr_schedulers), so it cannot resume training")
        advice = "score it with mmkit validate or test --ckpt_path, or drop --ckpt_path to start a new run"
    assert resume(*extra) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mmkit fit: error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"mmkit fit: error: {message}") and errors[0].endswith(advice), err
    assert "Traceback" not in err and err.rstrip().endswith(errors[0]), err
    assert not (tmp_path / "run" / "lightning_logs").exists()


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
def test_a_resume_refused_after_the_checkpoint_restored_its_step_leaves_no_log_folder(resume, tmp_path, monkeypatch):
    """The cleanup of a refused run's lightning_logs/version_N was skipped once the trainer's step was past 0,
    which a resume's restore sets before its later refusals: each retry left one more folder. (The refusals that
    came there, optimizer states that do not fit or are missing, are now refused before: one stands in for them.)"""
    from pytorch_lightning.trainer.connectors.checkpoint_connector import _CheckpointConnector

    def refuse(connector: _CheckpointConnector) -> None:
        assert connector.trainer.global_step > 0  # restored
        raise KeyError("refused after the step was restored")

    monkeypatch.setattr(_CheckpointConnector, "restore_optimizers_and_schedulers", refuse)
    with pytest.raises(KeyError, match="refused after the step was restored"):
        resume()
    assert not (tmp_path / "run" / "lightning_logs").exists()


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
def test_a_resume_that_trained_before_it_failed_keeps_its_log_folder(resume, tmp_path, capsys):
    assert resume("--trainer.callbacks+=pytorch_lightning.callbacks.EarlyStopping", "--trainer.callbacks.monitor",
                  "val/nothing") == 2  # refused at the end of the first validation, after its training steps
    assert "Early stopping conditioned on metric `val/nothing`" in capsys.readouterr().err
    metrics = (tmp_path / "run" / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    assert len(metrics) > 1 and "val/loss" in metrics[0]


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
@pytest.mark.parametrize("form", ["init_args json", "model json", "model file"])
def test_model_options_given_in_a_mapping_keep_their_values_on_a_resume(resume, tmp_path, form, caplog):
    """The checkpoint's hyper-parameters replace the recipe's on a resume, but not the command line's: given
    within a mapping (`--model.init_args '{...}'`, `--model FILE`), the new export_dir was replaced too, and the
    resumed run exported over the first run's export."""
    import logging

    mine = tmp_path / "mine"
    init_args = {"export_dir": str(mine), "lr": 0.002}
    if form == "init_args json":
        given = ["--model.init_args", json.dumps(init_args)]
    elif form == "model json":
        given = ["--model", json.dumps({"init_args": init_args})]
    else:
        (tmp_path / "model.yaml").write_text(yaml.safe_dump({"class_path": "mmkit.tasks.CLIPTask",
                                                             "init_args": init_args}))
        given = ["--model", str(tmp_path / "model.yaml")]
    caplog.set_level(logging.INFO, logger="mmkit")
    assert resume(*given) == 0
    assert (mine / "config.json").is_file()
    assert f"--model.init_args.export_dir: {str(mine)!r} as given" in caplog.text
    assert "--model.init_args.lr: 0.002 as given (the checkpoint's: 0.001)" in caplog.text


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
def test_a_resume_of_a_finished_run_says_so_and_leaves_no_log_folder(resume, tmp_path, caplog):
    """The checkpoint's run reached its max_epochs: the resume trains nothing, says so in one line and leaves no
    lightning_logs/version_N holding only its config (each such resume left one more)."""
    step = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    with caplog.at_level("WARNING", logger="mmkit"):
        assert resume("--trainer.max_epochs", "1") == 0
    assert f"nothing left to train: the checkpoint's run had finished at step {step}" in caplog.text
    assert not (tmp_path / "run" / "lightning_logs").exists()
