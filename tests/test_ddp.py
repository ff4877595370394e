"""`mmkit fit` under DDP on two CPU processes, through the installed console script: Lightning's
`ddp` strategy re-launches the script for rank 1, so this checks that the entry point survives
that, that both ranks train, and that only rank 0 exports.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VIT = "--model.init_args.model.init_args."


@pytest.mark.slow
def test_fit_with_ddp_on_two_cpu_processes(tmp_path):
    script = Path(sys.executable).parent / "mmkit"
    assert script.is_file(), "the mmkit console script is not installed (pip install -e .)"
    out = tmp_path / "run"
    cmd = [str(script), "fit", "--config", str(REPO / "configs" / "vit_digits.yaml"),
           VIT + "image_size", "16", VIT + "patch_size", "4", VIT + "dim", "32", VIT + "depth", "1",
           VIT + "num_heads", "2",
           "--data.init_args.image_size", "16", "--data.init_args.batch_size", "16",
           "--data.init_args.num_workers", "0",
           "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
           "--trainer.precision", "32-true",
           "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
           "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
           "--trainer.default_root_dir", str(out), "--model.init_args.export_dir", str(out / "export")]
    env = {**os.environ, "MMKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("PL_GLOBAL_SEED", None)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    assert log.count("exported model to") == 1  # rank 0 only
    assert "sync_dist=True" not in log  # Lightning warns when an epoch-level value is not reduced
    doc = json.loads((out / "export" / "config.json").read_text())
    assert doc["config"]["num_classes"] == 10 and doc["metadata"]["class_names"] == [str(i) for i in range(10)]
    assert (out / "export" / "model.safetensors").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()  # the fixed folder, written by rank 0
    assert not (out / "lightning_logs" / "version_1").exists()  # one run, not one per rank
