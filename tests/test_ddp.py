"""`mmkit fit` under DDP on two CPU processes, through the installed console script: Lightning's
`ddp` strategy re-launches the script for rank 1, so this checks that the entry point survives
that, that both ranks train, and that only rank 0 exports; and that a resumed two-process run trains as the
uninterrupted one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

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


RANK_DRAWS = '''
import random

import pytorch_lightning as pl
import torch


class RankDraws(pl.Callback):
    """Each rank draws its own amount, as ranks given batches of other lengths do (SpecAugment, BERT's masking)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        for _ in range(trainer.global_rank + 1):
            torch.rand(1), random.random()


class EveryEpoch(pl.callbacks.ModelCheckpoint):
    def __init__(self):
        super().__init__(filename="every-{epoch}", save_top_k=-1, every_n_epochs=1)
'''


@pytest.mark.slow
def test_a_resumed_ddp_run_trains_as_the_uninterrupted_one(tmp_path):
    """Resumed from its first epoch's checkpoint, a two-process run ends with the uninterrupted run's weights bit
    for bit when its ranks' generators had diverged: the checkpoint keeps every rank's states (it kept the first
    process's, which the second then resumed from: other drop-path masks and crops there, other weights)."""
    script = Path(sys.executable).parent / "mmkit"
    (tmp_path / "rank_draws.py").write_text(RANK_DRAWS)
    env = {**os.environ, "MMKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    env.pop("PL_GLOBAL_SEED", None)

    def fit(out: Path, *more: str) -> None:
        cmd = [str(script), "fit", "--config", str(REPO / "configs" / "vit_digits.yaml"),
               VIT + "image_size", "16", VIT + "patch_size", "4", VIT + "dim", "32", VIT + "depth", "2",
               VIT + "num_heads", "2", VIT + "drop_path_rate", "0.5",
               "--data.init_args.image_size", "16", "--data.init_args.batch_size", "16",
               "--data.init_args.num_workers", "0",
               "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
               "--trainer.precision", "32-true", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
               "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
               "--trainer.enable_model_summary", "false", "--trainer.callbacks+", "rank_draws.RankDraws",
               "--trainer.default_root_dir", str(out), "--model.init_args.export_dir", str(out / "export"), *more]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    fit(tmp_path / "whole", "--trainer.callbacks+", "rank_draws.EveryEpoch")
    first = next((tmp_path / "whole").rglob("every-epoch=0.ckpt"))
    ranks = torch.load(first, map_location="cpu", weights_only=True)["mmkit_rng"]["ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])  # the ranks had diverged
    fit(tmp_path / "resumed", "--ckpt_path", str(first))
    whole = load_file(str(tmp_path / "whole" / "export" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "export" / "model.safetensors"))
    assert max((whole[k] - resumed[k]).abs().max().item() for k in whole) == 0.0
