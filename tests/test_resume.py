"""`mmkit fit ... --ckpt_path last` after a crash continues from the last saved epoch: a real
`mmkit fit` subprocess is killed with SIGKILL mid-run and resumed; asking to resume where there is
nothing to resume from is an error (exit 2, one line), not a silent fresh start."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

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
