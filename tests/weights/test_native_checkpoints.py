"""Native checkpoints (config.json + model.safetensors): round trips, resampling to a new image
size on load, and the errors for wrong or damaged directories.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed
from torch import nn

from mmkit.models import ViT
from mmkit.weights import PretrainedMixin, WeightsError

TINY = dict(image_size=32, patch_size=8, dim=48, depth=2, num_heads=3, num_classes=5)


def _model(**overrides) -> ViT:
    torch.manual_seed(0)
    return ViT(**{**TINY, **overrides}).eval()


def _images(size: int = 32, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("overrides", [{}, dict(class_token=False, global_pool="avg"), dict(num_classes=0)])
def test_round_trip(tmp_path, overrides):
    model = _model(**overrides)
    out = model.save_pretrained(tmp_path / "ckpt", metadata={"dataset": "digits", "epochs": 3})
    assert out == tmp_path / "ckpt"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # nothing pickled
    doc = json.loads((out / "config.json").read_text())
    assert doc == {"format_version": 1, "architecture": "ViT", "config": model.config,
                   "metadata": {"dataset": "digits", "epochs": 3}}
    assert doc["config"]["dim"] == 48 and doc["config"]["global_pool"] == overrides.get("global_pool", "token")
    assert ViT.read_config(out)["metadata"] == {"dataset": "digits", "epochs": 3}
    assert set(load_file(str(out / "model.safetensors"))) == set(model.state_dict())

    loaded = ViT.from_pretrained(out).eval()
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = _images()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_from_pretrained_at_new_image_size_resamples_positions(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path)
    big = ViT.from_pretrained(tmp_path, image_size=48).eval()
    assert big.config["image_size"] == 48 and big.grid_size == (6, 6)
    assert big.pos_embed.shape == (1, 1 + 36, 48)
    # Same recipe as timm (bicubic, antialias, class token untouched).
    expected = resample_abs_pos_embed(model.pos_embed.detach(), new_size=(6, 6), old_size=(4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(big.pos_embed.detach(), expected, atol=1e-6, rtol=0)
    x = _images(48)
    with torch.no_grad():
        out = big(x)
        # Resampling once at load and on the fly at forward time are the same computation.
        torch.testing.assert_close(out, model(x), atol=1e-5, rtol=0)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    # And the resized checkpoint itself round-trips at its new size.
    big.save_pretrained(tmp_path / "big")
    assert ViT.from_pretrained(tmp_path / "big").pos_embed.shape == (1, 37, 48)


def test_from_pretrained_new_size_without_class_token(tmp_path):
    model = _model(class_token=False, global_pool="avg")
    model.save_pretrained(tmp_path)
    small = ViT.from_pretrained(tmp_path, image_size=16).eval()
    assert small.pos_embed.shape == (1, 4, 48)
    with torch.no_grad():
        torch.testing.assert_close(small(_images(16)), model(_images(16)), atol=1e-5, rtol=0)


def test_incompatible_override_is_a_weights_error(tmp_path):
    _model().save_pretrained(tmp_path)
    with pytest.raises(WeightsError, match=r"model\.safetensors.*shape mismatches: head\.bias"):
        ViT.from_pretrained(tmp_path, num_classes=9)


class _Other(PretrainedMixin, nn.Module):
    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.config = {"dim": dim}
        self.lin = nn.Linear(dim, dim)


def test_wrong_architecture_is_refused(tmp_path):
    _model().save_pretrained(tmp_path / "vit")
    with pytest.raises(WeightsError, match=r"config\.json: holds a 'ViT' checkpoint, not _Other"):
        _Other.from_pretrained(tmp_path / "vit")
    _Other().save_pretrained(tmp_path / "other")
    with pytest.raises(WeightsError, match="holds a '_Other' checkpoint, not ViT"):
        ViT.from_pretrained(tmp_path / "other")


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(WeightsError, match="not an mmkit checkpoint directory"):
        ViT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="config.json: invalid JSON"):
        ViT.from_pretrained(tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "deleted"])
def test_corrupt_weights_name_the_file(tmp_path, damage):
    _model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    if damage == "garbage":
        weights.write_bytes(b"\x00\x01 this is not a safetensors file")
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-1000])
    else:
        weights.unlink()
    with pytest.raises(WeightsError, match=str(weights)):
        ViT.from_pretrained(tmp_path)


def test_missing_and_unexpected_native_keys(tmp_path):
    _model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    state.pop("encoder.blocks.1.attn.qkv.weight")
    state["encoder.blocks.2.attn.qkv.weight"] = torch.zeros(1)
    save_file(state, str(weights))
    with pytest.raises(WeightsError) as e:
        ViT.from_pretrained(tmp_path)
    msg = str(e.value)
    assert str(weights) in msg
    assert "missing keys: encoder.blocks.1.attn.qkv.weight" in msg
    assert "unexpected keys: encoder.blocks.2.attn.qkv.weight" in msg


_SHAPE_CHECK_SCRIPT = """
import json, sys
import mmkit.models
for directory in sys.argv[1:]:
    with open(directory + "/config.json") as f:
        doc = json.load(f)
    getattr(mmkit.models, doc["architecture"]).check_weights(directory, doc["config"])
print(sorted(m for m in sys.modules if m.startswith("torch._dynamo")))
"""


def test_weights_header_check_does_not_import_the_compiler(tmp_path):
    """`check_weights` builds each family on the meta device before every load. Random init there
    goes through Python decompositions whose first call imports torch._dynamo (~1.3 s of a command's
    start-up), so the build skips init and fixed tables are computed on the host: in a fresh
    process, checking every contract family's checkpoint imports nothing of the compiler."""
    import subprocess
    import sys

    from tests.models.test_contract import FAMILIES

    dirs = []
    for family in FAMILIES:
        torch.manual_seed(0)
        dirs.append(str(family.build().save_pretrained(tmp_path / family.name)))
    out = subprocess.run([sys.executable, "-c", _SHAPE_CHECK_SCRIPT, *dirs], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_fixed_tables_are_host_values_on_every_device():
    from mmkit.core import RotaryEmbedding, sinusoidal_positions, sinusoidal_positions_concat, sinusoidal_positions_halves

    for table in (sinusoidal_positions, sinusoidal_positions_concat, sinusoidal_positions_halves):
        host = table(12, 8)
        with torch.device("meta"):
            assert table(12, 8).device.type == "meta" and table(12, 8).shape == host.shape
        assert host.device.type == "cpu" and torch.isfinite(host).all()
    with torch.device("meta"):
        assert RotaryEmbedding(8).inv_freq.device.type == "meta"
    assert torch.equal(RotaryEmbedding(8).inv_freq, 10000.0 ** (-torch.arange(0, 8, 2, dtype=torch.float32) / 8))


def test_from_pretrained_gives_eval_mode(tmp_path):
    # the saved dropout / drop-path rates act only after train(): transformers' and timm's loaders do the same
    model = ViT(**TINY, drop_path_rate=0.5).train()
    model.save_pretrained(tmp_path / "ckpt")
    loaded = ViT.from_pretrained(tmp_path / "ckpt")  # was in training mode: random outputs for a forgotten eval()
    assert not any(m.training for m in loaded.modules())
    x = _images()
    with torch.no_grad():
        assert torch.equal(loaded(x), loaded(x))


def test_save_pretrained_leaves_an_earlier_export_whole_when_it_fails(tmp_path):
    _model().save_pretrained(tmp_path / "ckpt", metadata={"run": 1})
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
    with pytest.raises(TypeError):  # metadata JSON cannot hold: found before any file changes
        _model(dim=24).save_pretrained(tmp_path / "ckpt", metadata={"run": object()})
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()} == before
