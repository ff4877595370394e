"""`--trainer.precision auto` (issue 13 §3): bf16-mixed where the accelerator has native bf16, fp32
elsewhere (emulated bf16 is ~100x slower in matmuls); other values pass through to Lightning."""
from __future__ import annotations

import pytest
import torch

import mmkit.inference.precision as precision
from mmkit.cli import main
from mmkit.cli.lightning import training_precision
from tests.test_cli import FIT, TINY as CLI_TINY  # the CLI tests' tiny ViT recipe run

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

# the same tiny run without the CLI tests' precision pin: here the recipe's `precision: auto` decides
assert CLI_TINY[-2:] == ["--trainer.precision", "32-true"]
TINY = CLI_TINY[:-2]


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_mixed_only_where_the_cpu_has_it(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: native)
    assert training_precision("auto", "cpu") == ("bf16-mixed" if native else "32-true")
    for explicit in ("32-true", "bf16-mixed", 32, None):
        assert training_precision(explicit, "cpu") == explicit


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_on_a_gpu():
    assert training_precision("auto", "gpu") == ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed")


@pytest.mark.parametrize("native", [True, False])
def test_the_recipe_trains_with_the_resolved_precision(monkeypatch, tmp_path, caplog, native):
    """The shipped ViT recipe's `precision: auto`, end to end through LightningCLI: two training steps
    and an export (bf16 emulated where the CPU lacks it, which only makes the tiny model slower)."""
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: native)
    monkeypatch.setenv("MMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    with caplog.at_level("INFO"):
        assert main(["fit", "--config", FIT, *TINY, "--model.init_args.export_dir", str(tmp_path / "export"),
                     "--trainer.default_root_dir", str(tmp_path)]) == 0
    expected = "bf16-mixed" if native else "32-true"
    assert f"precision auto -> {expected}" in caplog.text
    assert ("Using bfloat16 Automatic Mixed Precision" in caplog.text) == native
    assert (tmp_path / "export" / "model.safetensors").is_file()


def test_bf16_mixed_clips_the_gradients_of_a_fused_optimizer(tmp_path):
    """mmkit's AdamW is fused on the CPU; Lightning refuses clipping with a fused optimizer under any
    AMP (a GradScaler unscales inside its step). bf16 has no scaler: mmkit's Trainer clips as in fp32."""
    import pytorch_lightning as pl
    from torch import nn

    from mmkit.cli.lightning import Trainer
    from mmkit.tasks.optim import adamw_warmup_cosine

    norms = []

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(8, 8)

        def training_step(self, batch, batch_idx):
            return (self.layer(batch[0]) * 100).pow(2).mean()  # large gradients, so clipping acts

        def configure_optimizers(self):
            return adamw_warmup_cosine(self, lr=1e-3, weight_decay=0.0, warmup_ratio=0.0, total_steps=2)

        def optimizer_step(self, *args, **kwargs):
            super().optimizer_step(*args, **kwargs)  # the closure ran forward, backward and clipping
            norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.parameters()])).item())

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 8)), batch_size=4)
    trainer = Trainer(accelerator="cpu", precision="bf16-mixed", gradient_clip_val=0.5, max_steps=2, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path)
    model = Tiny()
    assert model.configure_optimizers()["optimizer"].defaults["fused"]
    trainer.fit(model, data)
    assert len(norms) == 2 and all(n <= 0.5 + 1e-4 for n in norms), norms
