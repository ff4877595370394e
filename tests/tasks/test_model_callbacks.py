"""`mmkit.tasks.GradCheckpointing` and `mmkit.tasks.CompileModel` from a recipe's command line: the run trains to
the same weights as without them, and the checkpoint and export read as before (the parameter names unchanged)."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mmkit.cli import main
from mmkit.tasks import CompileModel, GradCheckpointing
from mmkit.tasks.model_callbacks import task_model
from tests.test_cli import FIT, TINY

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")


def _fit(tmp_path, name, *extra):
    root = tmp_path / name
    assert main(["fit", "--config", FIT, *TINY, "--trainer.default_root_dir", str(root),
                 "--model.init_args.export_dir", str(root / "export"), *extra]) == 0
    return root


def test_the_recipe_trains_to_the_same_weights_with_both(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    torch._dynamo.reset()
    plain = _fit(tmp_path, "plain")
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    with caplog.at_level("INFO"):
        both = _fit(tmp_path, "both", "--trainer.callbacks+=mmkit.tasks.GradCheckpointing",
                    "--trainer.callbacks+=mmkit.tasks.CompileModel", "--trainer.callbacks.backend", "aot_eager",
                    "--trainer.callbacks.fullgraph", "true")
    assert "gradient checkpointing on in 1 block stack of ViT" in caplog.text
    assert "torch.compile on 1 block stack of ViT (backend=aot_eager, fullgraph=True)" in caplog.text
    expected, got = (load_file(str(r / "export" / "model.safetensors")) for r in (plain, both))
    assert list(got) == list(expected)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    # the Lightning checkpoint resumes into a plain run: same parameter names
    ckpt = torch.load(both / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    plain_ckpt = torch.load(plain / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert list(ckpt["state_dict"]) == list(plain_ckpt["state_dict"])


def test_the_callbacks_refuse_what_they_cannot_act_on():
    import pytorch_lightning as pl

    with pytest.raises(ValueError, match="^LightningModule has no `model` module for this callback to act on$"):
        task_model(pl.LightningModule())
    with pytest.raises(ValueError, match="^backend must be one of inductor, aot_eager, cudagraphs, got 'eager'$"):
        CompileModel(backend="eager")

    class NoStacks(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="^Linear has no block stack that supports gradient checkpointing$"):
        GradCheckpointing().on_fit_start(None, NoStacks())
