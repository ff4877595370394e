"""timm -> mmkit ViT import: parity with timm's VisionTransformer (random init, offline), the
checkpoint-file path (safetensors and weights-only torch files), and the refusals.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import checkpoint_filter_fn

from mmkit.models import ViT
from mmkit.weights import WeightsError, read_state_dict

from _pickle_payload import Payload

ATOL = 1e-4

# (timm name, timm kwargs): the plain ViT family, depth-reduced where a full model would be slow.
PARITY_CASES = {
    "tiny16": ("vit_tiny_patch16_224", {}),
    "small16-d2": ("vit_small_patch16_224", dict(depth=2)),
    "base32-d2": ("vit_base_patch32_224", dict(depth=2)),
    "small32-160": ("vit_small_patch32_224", dict(depth=2, img_size=160)),
    "small32-384": ("vit_small_patch32_224", dict(depth=2, img_size=384)),
    "no-cls-avg": ("vit_tiny_patch16_224", dict(depth=2, class_token=False, global_pool="avg")),
    "cls-avg-fcnorm": ("vit_tiny_patch16_224", dict(depth=2, global_pool="avg")),
    "avg-no-fcnorm": ("vit_tiny_patch16_224", dict(depth=2, global_pool="avg", fc_norm=False)),
    "features": ("vit_tiny_patch16_224", dict(depth=2, num_classes=0)),
    "classes10": ("vit_tiny_patch16_224", dict(depth=2, num_classes=10)),
    "no-qkv-bias-mlp2-gray": ("vit_tiny_patch16_224",
                              dict(depth=2, qkv_bias=False, mlp_ratio=2.0, in_chans=1, img_size=64)),
    # attention pooling ("map"): SigLIP's image tower, and with a class token and a classifier
    "siglip-b16-d2": ("vit_base_patch16_siglip_224", dict(depth=2)),
    "siglip-b16-d2-features": ("vit_base_patch16_siglip_224", dict(depth=2, num_classes=0)),
    "map-cls-classes10": ("vit_tiny_patch16_224", dict(depth=2, global_pool="map", num_classes=10)),
    # a norm before the blocks, no patch-embedding bias (CLIP-style towers); timm's act_layer names build its own
    # GELU classes, which import as nn.GELU's
    "pre-norm-act-names": ("vit_tiny_patch16_224", dict(depth=2, pre_norm=True, act_layer="gelu")),
    "gelu-tanh-name": ("vit_tiny_patch16_224", dict(depth=2, act_layer="gelu_tanh")),
}


def _timm(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kw).eval()


def _images(model: torch.nn.Module, batch: int = 2, size: tuple[int, int] | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    size = size or tuple(model.patch_embed.img_size)
    return torch.randn(batch, model.patch_embed.proj.in_channels, *size, generator=g)


def _assert_parity(ours: ViT, ref: torch.nn.Module, x: torch.Tensor) -> None:
    ours.eval()
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), atol=ATOL, rtol=0)
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_parity_from_instance(case):
    name, kw = PARITY_CASES[case]
    ref = _timm(name, **kw)
    ours = ViT.from_timm(ref)
    assert not ours.training  # the import keeps the reference's mode
    out = ours(_images(ref))
    assert out.shape == (2, ref.num_classes or ref.embed_dim)
    assert ours.config["depth"] == len(ref.blocks)
    assert ours.config["image_size"] == ref.patch_embed.img_size[0]
    _assert_parity(ours, ref, _images(ref))


# The file path for every depth-reduced case; the torch-file reader (same code path after
# reading) for two of them, to keep the suite fast.
FILE_CASES = [(c, ".safetensors") for c in PARITY_CASES if c != "tiny16"] + [
    ("no-cls-avg", ".pth"), ("small32-160", ".pth")]


@pytest.mark.parametrize("case, suffix", FILE_CASES)
def test_parity_from_checkpoint_file(case, suffix, tmp_path):
    name, kw = PARITY_CASES[case]
    ref = _timm(name, **kw)
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    torch.manual_seed(123)  # the name path builds a fresh timm model: its own init must be overwritten
    ours = ViT.from_timm(name, checkpoint_path=str(path), **kw)
    _assert_parity(ours, ref, _images(ref))


def test_wrapped_training_checkpoint_loads(tmp_path):
    # timm's train.py saves {"state_dict": ..., "epoch": ..., "arch": ...}: plain data, weights_only-safe.
    ref = _timm("vit_tiny_patch16_224", depth=1, img_size=32)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 3, "arch": "vit_tiny_patch16_224", "state_dict": ref.state_dict()}, path)
    _assert_parity(ViT.from_timm("vit_tiny_patch16_224", checkpoint_path=str(path), depth=1, img_size=32),
                   ref, _images(ref))


def test_224_checkpoint_into_384_model_matches_timm(tmp_path):
    name, kw = "vit_tiny_patch16_224", dict(depth=2)
    src = _timm(name, **kw)
    path = tmp_path / "in224.safetensors"
    save_file(src.state_dict(), str(path))
    ref = _timm(name, img_size=384, **kw)
    ref.load_state_dict(checkpoint_filter_fn(read_state_dict(path), ref))  # timm resamples 14x14 -> 24x24
    ours = ViT.from_timm(name, checkpoint_path=str(path), img_size=384, **kw)
    assert ours.pos_embed.shape == (1, 1 + 24 * 24, 192)
    assert not torch.equal(ref.pos_embed[:, 1:25], src.pos_embed[:, 1:25])  # really resampled
    _assert_parity(ours, ref, _images(ref))


def test_drop_path_rate_is_carried_over():
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=3, img_size=32, drop_path_rate=0.1)
    ours = ViT.from_timm(ref)
    assert ours.config["drop_path_rate"] == pytest.approx(0.1)
    theirs = [getattr(b.drop_path1, "drop_prob", 0.0) for b in ref.blocks]
    assert [b.drop_path.p for b in ours.encoder.blocks] == pytest.approx(theirs)
    assert ours.training


def test_tagged_timm_name_is_accepted():
    ours = ViT.from_timm("vit_tiny_patch16_224.augreg_in21k", depth=1, img_size=32, num_classes=5)
    assert ours.config["dim"] == 192 and ours.config["num_classes"] == 5


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "kw, feature",
    [
        (dict(reg_tokens=4), "register tokens"),
        (dict(qk_norm=True), "qk-norm"),
        (dict(init_values=1e-5), "layer scale"),
        (dict(no_embed_class=True), "no_embed_class"),
        (dict(pre_norm=True, norm_layer="rmsnorm"), "a pre-norm other than LayerNorm(eps=1e-6)"),
        (dict(global_pool="prr"), "attention pooling other than timm's default AttentionPoolLatent"),
        (dict(global_pool="max"), "global_pool='max'"),
        (dict(global_pool=""), "global_pool=''"),
        (dict(dynamic_img_size=True), "dynamic image size"),
        (dict(act_layer="silu"), "non-GELU"),
        (dict(global_pool="avg", pool_include_prefix=True), "pool_include_prefix"),
        (dict(norm_layer="rmsnorm"), "LayerNorm(eps=1e-6)"),
        (dict(img_size=(32, 48)), "non-square image size"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_unsupported_timm_features_are_refused_by_name(kw, feature):
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{"depth": 1, "img_size": 32, **kw})
    with pytest.raises(WeightsError, match=re.escape(feature)):
        ViT.from_timm(ref)


def test_layer_norm_eps_mismatch_is_refused():
    from functools import partial

    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32,
                            norm_layer=partial(torch.nn.LayerNorm, eps=1e-5))
    with pytest.raises(WeightsError, match=r"eps=1e-6"):
        ViT.from_timm(ref)


@pytest.mark.parametrize("kw, feature", [
    (dict(proj_bias=False), "no attention output bias (proj_bias=False)"),
    (dict(final_norm=False), "no final norm (final_norm=False)"),
    (dict(pos_embed="none"), "no position embedding (pos_embed='none')"),
    (dict(embed_norm_layer="layernorm"), "a norm after the patch embedding (embed_norm_layer)"),
    (dict(scale_mlp_norm=True), "a norm inside the MLP (scale_mlp_norm)"),
    (dict(attn_layer="diff"), "attention other than timm's Attention"),
    (dict(block_fn="ResPostBlock"), "block type ResPostBlock"),
    (dict(block_fn="ParallelThingsBlock"), "block type ParallelThingsBlock"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_architecture_changes_are_refused_by_the_option(kw, feature):
    """Named as the timm option, not as the tensors the strict load then missed (which read as a corrupt file);
    ResPostBlock has Block's tensor names but is post-norm, and other blocks ended in an AttributeError."""
    from timm.models import vision_transformer as vt

    if "block_fn" in kw:
        kw = {"block_fn": getattr(vt, kw["block_fn"])}
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32, **kw)
    with pytest.raises(WeightsError, match=re.escape(f"features outside mmkit's plain ViT: {feature}")):
        ViT.from_timm(ref)


def test_a_gated_mlp_is_refused_before_its_fields_are_read():
    """timm's SwiGLU has no fc1: the bias check read it first and failed with an AttributeError."""
    from timm.layers import SwiGLU

    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32, mlp_layer=SwiGLU)
    with pytest.raises(WeightsError, match="non-GELU activation / non-standard MLP"):
        ViT.from_timm(ref)


@pytest.mark.parametrize("global_pool", ["token", "map"])
def test_the_tanh_gelu_imports_as_itself(global_pool):
    """nn.GELU(approximate="tanh") passed the class check and was imported as the exact GELU (5e-4 off)."""
    from functools import partial

    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32, num_classes=3,
                            global_pool=global_pool, class_token=global_pool == "token",
                            act_layer=partial(torch.nn.GELU, approximate="tanh")).eval()
    ours = ViT.from_timm(ref).eval()
    assert ours.config["act_layer"] == "gelu_tanh"
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ours(images) - ref(images)).abs().max() <= 1e-4


def test_non_vit_timm_model_is_refused():
    ref = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    with pytest.raises(WeightsError, match="expected a timm VisionTransformer, got ResNet"):
        ViT.from_timm(ref)


def test_unknown_timm_name_is_a_clear_value_error():
    with pytest.raises(ValueError, match=r"unknown timm model 'vit_tinyy_patch16_224'; similar: vit_tiny_patch16_224,") as e:
        ViT.from_timm("vit_tinyy_patch16_224")
    assert not isinstance(e.value, WeightsError)
    with pytest.raises(ValueError, match=r"unknown timm model 'no_such_model'\Z"):
        ViT.from_timm("no_such_model")


def test_instance_with_timm_kwargs_is_rejected():
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32)
    with pytest.raises(ValueError, match="only with a model name"):
        ViT.from_timm(ref, depth=2)


# ---------------------------------------------------------------- wrong checkpoint files

NAME, KW = "vit_tiny_patch16_224", dict(depth=2, img_size=32, num_classes=7)


def _bad_checkpoint(tmp_path: Path, edit) -> Path:
    state = dict(_timm(NAME, **KW).state_dict())
    edit(state)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    return path


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda s: s.pop("blocks.1.mlp.fc2.weight"), r"missing keys: blocks\.1\.mlp\.fc2\.weight"),
        (lambda s: s.update({"blocks.9.attn.qkv.weight": torch.zeros(3, 3)}),
         r"unexpected keys: blocks\.9\.attn\.qkv\.weight"),
        (lambda s: s.update({"head.weight": torch.zeros(5, 192), "head.bias": torch.zeros(5)}),
         r"shape mismatches: head\.bias: checkpoint \(5,\) vs model \(7,\), head\.weight"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_wrong_checkpoint_names_file_and_keys(tmp_path, edit, expected):
    path = _bad_checkpoint(tmp_path, edit)
    with pytest.raises(WeightsError, match=expected) as e:
        ViT.from_timm(NAME, checkpoint_path=str(path), **KW)
    assert str(path) in str(e.value)


def test_missing_and_non_dict_files(tmp_path):
    with pytest.raises(WeightsError, match="checkpoint file not found: .*nope.pth"):
        ViT.from_timm(NAME, checkpoint_path=str(tmp_path / "nope.pth"), **KW)
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(WeightsError, match=f"{path}: expected a state dict, found Tensor"):
        ViT.from_timm(NAME, checkpoint_path=str(path), **KW)


def test_pickle_payload_is_refused_not_executed(tmp_path):
    # The payload is live: plain unpickling runs it.
    live = tmp_path / "live_marker"
    pickle.loads(pickle.dumps(Payload(live)))
    assert live.read_text() == "executed"

    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    state = dict(_timm(NAME, **KW).state_dict())
    state["evil"] = Payload(marker)
    torch.save(state, path)
    with pytest.raises(WeightsError, match=f"{path}: holds pickled Python code .* that mmkit will not run"):
        read_state_dict(path)
    with pytest.raises(WeightsError, match=str(path)):
        ViT.from_timm(NAME, checkpoint_path=str(path), **KW)
    assert not marker.exists()


def test_map_pool_reads_every_patch_and_its_weights_matter():
    # Attention pooling is not a class-token read: every patch changes the output, and so do the
    # pool's own latent and MLP (a key map that dropped them could not pass parity by chance).
    ours = ViT.from_timm(_timm("vit_base_patch16_siglip_224", depth=1, img_size=32, num_classes=0)).eval()
    assert ours.cls_token is None and ours.config["global_pool"] == "map"
    x = _images(ours, size=(32, 32))
    with torch.no_grad():
        base = ours(x)
        x2 = x.clone()
        x2[:, :, -16:, -16:] += 1.0  # the last patch only
        assert not torch.allclose(ours(x2), base)
        ours.attn_pool.latent.add_(0.1)
        assert not torch.allclose(ours(x), base)
