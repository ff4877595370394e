"""open_clip -> mmkit CLIP import: parity with open_clip (random init, offline) for the real
architectures and a tiny one, checkpoint files in open_clip and OpenAI layouts (state dicts,
wrapped, DDP-prefixed, float16, TorchScript archives), and the refusals.

The tiny architectures use width 128 with 2 heads because open_clip's OpenAI loader derives the
head count as width / 64; with that, `open_clip.load_openai_model` is the reference for the
OpenAI layout.
"""
from __future__ import annotations

import inspect
import json
import pickle
import re
import zipfile

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import convert_weights_to_lp
from PIL import Image
from safetensors.torch import save_file

from mmkit.data.text import CLIPTokenizer
from mmkit.models.clip import CLIP, CLIPTextTower, CLIPVisionTower
from mmkit.models.sizes import clip_config
from mmkit.weights import WeightsError
from mmkit.weights.from_open_clip import read_open_clip_checkpoint
from mmkit.weights.torchscript import read_torchscript_state_dict

ATOL = 1e-4
TINY = "mmkit-test-tiny"
TINY_QUICKGELU = "mmkit-test-tiny-quickgelu"
_TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}
PROMPTS = ["a photo of a cat", "a diagram of a transformer, drawn by hand!",
           " ".join(["a very long caption"] * 30)]  # > 77 tokens: truncated, <end_of_text> kept last


@pytest.fixture(scope="module", autouse=True)
def tiny_archs(tmp_path_factory):
    """Register the tiny architectures with open_clip (names prefixed so nothing collides)."""
    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / f"{TINY}.json").write_text(json.dumps(_TINY_CFG))
    (folder / f"{TINY_QUICKGELU}.json").write_text(json.dumps({**_TINY_CFG, "quick_gelu": True}))
    open_clip.add_model_config(folder)


def _open_clip(arch: str, depth: int | None = None, **overrides) -> torch.nn.Module:
    """A random-init open_clip model; `depth` reduces both towers (same code, less time)."""
    cfg = open_clip.get_model_config(arch)
    if depth is not None:
        overrides.setdefault("vision_cfg", {**cfg["vision_cfg"], "layers": depth})
        overrides.setdefault("text_cfg", {**cfg["text_cfg"], "layers": depth})
    torch.manual_seed(0)
    return open_clip.create_model(arch, pretrained=None, **overrides).eval()


def _inputs(ref: torch.nn.Module, arch: str) -> tuple[torch.Tensor, torch.Tensor]:
    size = ref.visual.image_size[0]
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    return images, CLIPTokenizer(arch=arch)(PROMPTS)


def _assert_parity(ours: CLIP, ref: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor,
                   forward: bool = True) -> None:
    """encode_image, encode_text and the logits a contrastive loss forms; with `forward`, also the
    forward tuple (model-size independent, so the large cases skip it: it repeats both encodes)."""
    ours.eval()
    ref.eval()
    with torch.no_grad():
        img, txt = ours.encode_image(images), ours.encode_text(tokens)
        ref_img, ref_txt = ref.encode_image(images), ref.encode_text(tokens)
        torch.testing.assert_close(img, ref_img, atol=ATOL, rtol=0)
        torch.testing.assert_close(txt, ref_txt, atol=ATOL, rtol=0)
        logits = ours.logit_scale.exp() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T  # (B, B')
        ref_logits = ref.logit_scale.exp() * F.normalize(ref_img, dim=-1) @ F.normalize(ref_txt, dim=-1).T
        assert logits.shape == (images.shape[0], tokens.shape[0])
        torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=0)
        if forward:
            out, expected = ours(images, tokens), ref(images, tokens)
            assert len(out) == len(expected)
            for a, b in zip(out, expected):
                torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def _full_config(cfg: dict) -> dict:
    """Tower arguments with the constructor defaults filled in, depth left out."""
    out = {}
    for tower, cls in (("visual", CLIPVisionTower), ("text", CLIPTextTower)):
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
        out[tower] = {k: v for k, v in {**defaults, **cfg[tower]}.items() if k != "depth"}
    return out


# (open_clip arch, depth override): ViT-B-32 at full depth; the other two real architectures with
# 2 layers per tower (full depth costs ~10 s each on 2 CPU cores and runs the same code).
PARITY_CASES = {
    "ViT-B-32": ("ViT-B-32", None),
    "ViT-B-32-quickgelu-d2": ("ViT-B-32-quickgelu", 2),
    "ViT-B-16-d2": ("ViT-B-16", 2),
    "tiny": (TINY, None),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_parity_from_instance(case):
    arch, depth = PARITY_CASES[case]
    ref = _open_clip(arch, depth)
    ours = CLIP.from_open_clip(ref)
    assert not ours.training
    _assert_parity(ours, ref, *_inputs(ref, arch), forward=arch == TINY)
    expected_depth = depth or (12 if arch.startswith("ViT-B") else 2)
    assert ours.config["visual"]["depth"] == ours.config["text"]["depth"] == expected_depth
    if arch.startswith("ViT-B"):  # the named-config table agrees with open_clip's architecture
        assert _full_config(ours.config) == _full_config(clip_config(arch))
        assert ours.config["visual"]["act_layer"] == ("quick_gelu" if "quickgelu" in arch else "gelu")


def test_parity_with_logit_bias_and_eps():
    # SigLIP-style learned bias on a plain CLIP, and a non-default LayerNorm eps read off the model.
    cfg = open_clip.get_model_config(TINY)
    ref = _open_clip(TINY, init_logit_bias=-10.0,
                     vision_cfg={**cfg["vision_cfg"], "norm_kwargs": {"eps": 1e-6}})
    ours = CLIP.from_open_clip(ref)
    assert ours.config["visual"]["norm_eps"] == 1e-6 and ours.config["text"]["norm_eps"] == 1e-5
    images, tokens = _inputs(ref, TINY)
    _assert_parity(ours, ref, images, tokens)
    with torch.no_grad():  # get_logits adds the bias, as open_clip's does
        assert float(ours(None, None)[3]) == -10.0
        for a, b in zip(ours.get_logits(images, tokens), ref.get_logits(images, tokens)):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_arch_name_random_init_keeps_mode():
    ours = CLIP.from_open_clip(TINY)
    assert isinstance(ours, CLIP) and ours.training  # open_clip builds in train mode; mirrored
    assert ours.config["visual"]["image_size"] == 32 and ours.config["text"]["num_heads"] == 2
    assert CLIP.from_open_clip(TINY).config == ours.config


# ---- checkpoint files -------------------------------------------------------------------------

def _write(path, state, wrap: bool = False, module: bool = False):
    if module:
        state = {f"module.{k}": v for k, v in state.items()}
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:  # open_clip's training checkpoints: {"epoch", "name", "state_dict", "optimizer"}
        torch.save({"epoch": 3, "name": "run", "state_dict": state, "optimizer": {"state": {}}} if wrap else state,
                   path)
    return path


LAYOUTS = {
    "plain": dict(suffix=".pt"),
    "wrapped": dict(suffix=".pt", wrap=True),
    "wrapped-ddp": dict(suffix=".pt", wrap=True, module=True),
    "ddp": dict(suffix=".bin", module=True),
    "safetensors": dict(suffix=".safetensors"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_open_clip_layout_file(layout, tmp_path):
    kw = dict(LAYOUTS[layout])
    ref = _open_clip(TINY)
    path = _write(tmp_path / f"ckpt{kw.pop('suffix')}", ref.state_dict(), **kw)
    ours = CLIP.from_open_clip(TINY, pretrained=str(path))
    assert not ours.training
    _assert_parity(ours, ref, *_inputs(ref, TINY))
    if layout == "wrapped":  # open_clip's own loader reads the same file to the same model
        _assert_parity(ours, open_clip.create_model(TINY, pretrained=str(path)), *_inputs(ref, TINY))


def _openai_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """OpenAI's checkpoint layout: open_clip's key names, float16 where OpenAI casts
    (convert_weights_to_lp), and three scalar metadata entries."""
    convert_weights_to_lp(model, dtype=torch.float16)
    state = dict(model.state_dict())
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    return state


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # inside open_clip
@pytest.mark.parametrize("wrap", [False, True], ids=["state-dict", "wrapped-ddp"])
def test_openai_layout_file(wrap, tmp_path):
    state = _openai_state_dict(_open_clip(TINY_QUICKGELU))
    assert state["visual.proj"].dtype == torch.float16 and state["ln_final.weight"].dtype == torch.float32
    path = _write(tmp_path / "openai.pt", state, wrap=wrap, module=wrap)
    ours = CLIP.from_open_clip(TINY_QUICKGELU, pretrained=path)
    # open_clip's OpenAI loader (which infers the architecture from the tensors) is the reference.
    ref = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
    assert ours.config["visual"]["act_layer"] == "quick_gelu"
    _assert_parity(ours, ref, *_inputs(ref, TINY_QUICKGELU))


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_torchscript_archive(tmp_path):
    ref = _open_clip(TINY_QUICKGELU)
    images, tokens = _inputs(ref, TINY_QUICKGELU)
    path = tmp_path / "jit.pt"
    torch.jit.trace(ref, (images, tokens), check_trace=False).save(str(path))
    # The data-only reader returns exactly what torch.jit.load would, without running it.
    state = read_torchscript_state_dict(path)
    expected = torch.jit.load(str(path)).state_dict()
    assert set(state) == set(expected) and all(torch.equal(state[k], expected[k]) for k in expected)
    assert "attn_mask" in state and "attn_mask" not in read_open_clip_checkpoint(path)  # explicit drop
    _assert_parity(CLIP.from_open_clip(TINY_QUICKGELU, pretrained=path), ref, images, tokens)


class _Scripted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 3).half(), torch.nn.Linear(3, 2)])
        self.register_buffer("steps", torch.arange(5))

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x.to(blk.weight.dtype))
        return x + self.steps.sum()


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_reader_scripted_module_dtypes(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.script(_Scripted()).save(str(path))
    state, expected = read_torchscript_state_dict(path), torch.jit.load(str(path)).state_dict()
    assert list(state) == list(expected) == ["steps", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight",
                                             "blocks.1.bias"]
    for k, v in expected.items():
        assert state[k].dtype == v.dtype and torch.equal(state[k], v), k
    with pytest.raises(WeightsError, match="not a TorchScript archive"):
        read_torchscript_state_dict(_write(tmp_path / "plain.pt", {"w": torch.ones(1)}))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_hostile_torchscript_archive_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr("evil/data.pkl", pickle.dumps(_Exploit(marker), protocol=2))
    with pytest.raises(WeightsError, match=r"evil\.pt.*system"):
        CLIP.from_open_clip(TINY, pretrained=path)
    assert not marker.exists()


def test_wrong_checkpoint_names_file_and_keys(tmp_path):
    state = dict(_open_clip(TINY).state_dict())
    state["visual.extra_token"] = state.pop("visual.class_embedding")
    state["visual.proj"] = torch.zeros(128, 16)
    path = _write(tmp_path / "wrong.pt", state)
    with pytest.raises(WeightsError) as err:
        CLIP.from_open_clip(TINY, pretrained=path)
    msg = str(err.value)
    for needle in (str(path), "missing keys: visual.class_embedding", "unexpected keys: visual.extra_token",
                   "visual.proj: checkpoint (128, 16) vs model (128, 32)"):
        assert needle in msg


def test_unreadable_and_missing_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pt"):
        CLIP.from_open_clip(TINY, pretrained=junk)
    with pytest.raises(WeightsError, match="checkpoint file not found: .*missing.pt"):
        CLIP.from_open_clip(TINY, pretrained=tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match="neither a checkpoint file nor an open_clip pretrained tag"):
        CLIP.from_open_clip(TINY, pretrained="laion400m_e32")  # a real tag, but of ViT-B-32
    with pytest.raises(WeightsError, match="tags: openai, laion400m_e31"):
        CLIP.from_open_clip("ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(ValueError, match="similar: ViT-B-32"):
        CLIP.from_open_clip("ViT-B-32x")


# feature named in the error -> create_model overrides of the tiny architecture
REFUSALS = {
    "attentional pooler": dict(vision=dict(attentional_pool=True, attn_pooler_heads=2)),
    "image pool_type='avg'": dict(vision=dict(pool_type="avg")),
    "no ln_pre": dict(vision=dict(no_ln_pre=True)),
    "patch dropout": dict(vision=dict(patch_dropout=0.5)),
    "custom attention blocks": dict(text=dict(qk_norm=True)),
    "layer scale": dict(vision=dict(ls_init_value=0.1)),
    "text pool_type='first'": dict(text=dict(pool_type="first")),
    "text class embedding (embed_cls)": dict(force_custom_text=True, text=dict(embed_cls=True)),
    "ResNet image tower": dict(vision=dict(layers=[1, 1, 1, 1], width=32)),
}


@pytest.mark.parametrize("feature", list(REFUSALS))
def test_refuses_unsupported_variants(feature):
    kw = dict(REFUSALS[feature])
    cfg = open_clip.get_model_config(TINY)
    ref = open_clip.create_model(TINY, pretrained=None, vision_cfg={**cfg["vision_cfg"], **kw.pop("vision", {})},
                                 text_cfg={**cfg["text_cfg"], **kw.pop("text", {})}, **kw)
    with pytest.raises(WeightsError, match=re.escape(feature)):
        CLIP.from_open_clip(ref)


# ---------------------------------------------------------------- SigLIP (ViT-B-16-SigLIP)

SIGLIP = "ViT-B-16-SigLIP"


@pytest.fixture
def tiny_siglip(monkeypatch):
    """open_clip's own ViT-B-16-SigLIP code path, made tiny: the registered config with a narrow
    2-layer text tower (open_clip's config override), and the timm trunk it names
    (vit_base_patch16_siglip_224) built with 2 narrow layers at 32 px (open_clip passes timm no
    size arguments, so `timm.create_model` is wrapped for the test)."""
    import open_clip.factory
    import timm

    cfg = open_clip.get_model_config(SIGLIP)
    assert cfg["vision_cfg"]["timm_pool"] == "map" and cfg["text_cfg"]["pool_type"] == "last"
    tiny = {**cfg, "embed_dim": 64, "text_cfg": {**cfg["text_cfg"], "width": 64, "heads": 2, "layers": 2}}
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, SIGLIP, tiny)
    create = timm.create_model

    def small_trunk(name, *args, **kw):
        if name == "vit_base_patch16_siglip_224":
            kw = {**kw, "depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 32}
        return create(name, *args, **kw)

    monkeypatch.setattr(timm, "create_model", small_trunk)


def _siglip_ref() -> torch.nn.Module:
    torch.manual_seed(0)
    ref = open_clip.create_model(SIGLIP, pretrained=None).eval()
    with torch.no_grad():  # open_clip zero-inits the projection bias: make the mapping visible
        ref.text.text_projection.bias.normal_(0, 0.1)
        ref.visual.trunk.attn_pool.mlp.fc2.bias.normal_(0, 0.1)
    return ref


def _siglip_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    # SigLIP's tokenizer is a hub download: random ids, including 0 (padding) runs at the end.
    tokens = torch.randint(1, 32000, (3, 64), generator=g)
    tokens[0, 10:] = 0
    return torch.randn(2, 3, 32, 32, generator=g), tokens


def test_siglip_parity_from_instance(tiny_siglip):
    ref = _siglip_ref()
    assert type(ref).__name__ == "CustomTextCLIP" and ref.text.attn_mask is None
    ours = CLIP.from_open_clip(ref)
    assert ours.config["visual"]["global_pool"] == "map" and not ours.config["visual"]["proj"]
    assert not ours.config["visual"]["pre_norm"] and ours.config["visual"]["norm_eps"] == 1e-6
    t = ours.config["text"]
    assert (t["causal"], t["pool"], t["proj_bias"], t["vocab_size"], t["max_len"], t["norm_eps"]) == (
        False, "last", True, 32000, 64, 1e-6)
    images, tokens = _siglip_inputs()
    _assert_parity(ours, ref, images, tokens)
    with torch.no_grad():
        assert float(ours.logit_bias) == float(ref.logit_bias) == -10.0
        for a, b in zip(ours.get_logits(images, tokens), ref.get_logits(images, tokens)):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_siglip_arch_name_with_local_file_and_native_round_trip(tiny_siglip, tmp_path):
    ref = _siglip_ref()
    with torch.no_grad():
        ref.logit_bias.fill_(-7.5)
    path = tmp_path / "siglip.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    ours = CLIP.from_open_clip(SIGLIP, pretrained=path)
    assert not ours.training and float(ours.logit_bias) == -7.5
    images, tokens = _siglip_inputs()
    _assert_parity(ours, ref, images, tokens)
    ours.save_pretrained(tmp_path / "native")
    again = CLIP.from_pretrained(tmp_path / "native").eval()
    assert again.config == ours.config
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(images), ours.encode_image(images), atol=0, rtol=0)
        torch.testing.assert_close(again.encode_text(tokens), ours.encode_text(tokens), atol=0, rtol=0)
        assert float(again.logit_bias) == -7.5


def test_siglip_full_size_config_builds_offline():
    # The real architecture, untouched: open_clip builds it without the network (only its
    # tokenizer is a hub download); the converted config is read off it, nothing is run.
    ref = open_clip.create_model(SIGLIP, pretrained=None)
    from mmkit.weights.from_open_clip import _check_supported, _clip_config

    _check_supported(ref, SIGLIP)
    cfg = _clip_config(ref)
    assert cfg["visual"] == dict(embed_dim=768, image_size=224, patch_size=16, dim=768, depth=12, num_heads=12,
                                 mlp_ratio=4.0, act_layer="gelu", norm_eps=1e-6, drop_path_rate=0.0,
                                 global_pool="map", pre_norm=False, proj=False)
    assert cfg["text"] == dict(embed_dim=768, vocab_size=32000, max_len=64, dim=768, depth=12, num_heads=12,
                               mlp_ratio=4.0, act_layer="gelu", norm_eps=1e-6, causal=False, pool="last",
                               proj_bias=True)
    assert cfg["init_logit_bias"] == -10.0


def test_plain_clip_with_siglip_text_options():
    # The same text options on open_clip's plain CLIP class (attributes on the model itself).
    cfg = open_clip.get_model_config(TINY)
    ref = _open_clip(TINY, text_cfg={**cfg["text_cfg"], "no_causal_mask": True, "pool_type": "last",
                                     "proj_bias": True})
    with torch.no_grad():
        ref.text_projection.bias.normal_(0, 0.1)
    ours = CLIP.from_open_clip(ref)
    assert not ours.text.padding_is_inert
    _assert_parity(ours, ref, *_inputs(ref, TINY))


def test_siglip_timm_tower_other_than_map_is_refused(tiny_siglip):
    ref = _siglip_ref()
    ref.visual.trunk.reset_classifier(0, global_pool="avg")
    with pytest.raises(WeightsError, match="not SigLIP-shaped"):
        CLIP.from_open_clip(ref)


def _photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8))


@pytest.fixture
def tiny_siglip_32(tiny_siglip, monkeypatch):
    """`tiny_siglip` with its config at the trunk's 32 px, so that configuration and model agree on the size."""
    import open_clip.factory

    cfg = open_clip.get_model_config(SIGLIP)
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, SIGLIP, {**cfg, "vision_cfg": {**cfg["vision_cfg"],
                                                                                          "image_size": 32}})


def test_siglip_from_arch_and_file_keeps_its_preprocessing_for_the_python_api(tiny_siglip_32, tmp_path):
    # SigLIP's tags all say mean/std 0.5 and squash resizing: the API scores the pixels `mmkit label` does
    from mmkit.inference.clip_loader import clip_eval_transform
    from mmkit.inference.zero_shot import ZeroShotClassifier

    path = tmp_path / "siglip.safetensors"
    save_file({k: v.contiguous() for k, v in _siglip_ref().state_dict().items()}, str(path))
    clip = CLIP.from_open_clip(SIGLIP, pretrained=path)
    label = clip_eval_transform(SIGLIP, str(path), exact_decode=True)  # what `mmkit label` uses
    assert (label.image_size, label.mean, label.resize_mode) == (32, (0.5, 0.5, 0.5), "squash")
    zs = ZeroShotClassifier(clip, lambda texts: torch.zeros(len(texts), 64, dtype=torch.long))
    assert zs.transform == label
    img = _photo()
    assert torch.equal(zs.transform.normalize(zs.transform.pixels(img)[None]), label.normalize(label.pixels(img)[None]))
    clip.save_pretrained(tmp_path / "export")  # and the export's metadata keeps it
    assert clip_eval_transform(str(tmp_path / "export"), exact_decode=True) == label


def test_a_siglip_export_names_its_own_tokenizer_through_a_reload(tiny_siglip_32, tmp_path, monkeypatch):
    # SigLIP does not tokenize with CLIP's BPE: an export without the tokenizer's name was refused on reload
    # (its vocabulary is not BPE's), and a re-save of a reloaded model must keep the name too
    import mmkit.data.text
    from mmkit.inference.clip_loader import load_clip

    path = tmp_path / "siglip.safetensors"
    save_file({k: v.contiguous() for k, v in _siglip_ref().state_dict().items()}, str(path))
    CLIP.from_open_clip(SIGLIP, pretrained=path).save_pretrained(tmp_path / "export")
    assert CLIP.read_config(tmp_path / "export")["metadata"]["open_clip_tokenizer"] == SIGLIP
    asked = []  # the hub tokenizer is a download: a stand-in records what was asked for
    monkeypatch.setattr(mmkit.data.text, "open_clip_tokenizer", lambda arch, context_length=None: asked.append(arch))
    clip, _ = load_clip(str(tmp_path / "export"))
    assert asked == [SIGLIP]
    clip.save_pretrained(tmp_path / "again")
    meta = CLIP.read_config(tmp_path / "again")["metadata"]
    assert (meta["open_clip_tokenizer"], meta["resize_mode"], meta["mean"]) == (SIGLIP, "squash", [0.5, 0.5, 0.5])
    assert "open_clip_tokenizer" not in (CLIP.from_open_clip("ViT-B-32").preprocess or {})  # CLIP's own BPE


def test_open_clip_instance_keeps_its_preprocess_cfg(tiny_siglip_32):
    # an instance: open_clip's own transform for it (its visual.preprocess_cfg) is the reference
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from mmkit.inference.zero_shot import ZeroShotClassifier

    torch.manual_seed(0)
    force = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "resize_mode": "squash", "interpolation": "bilinear"}
    ref = open_clip.create_model(SIGLIP, pretrained=None, force_preprocess_cfg=force).eval()
    zs = ZeroShotClassifier(CLIP.from_open_clip(ref), lambda texts: torch.zeros(len(texts), 64, dtype=torch.long))
    img = _photo()
    expected = image_transform_v2(PreprocessCfg(**ref.visual.preprocess_cfg), is_train=False)(img)
    assert (zs.transform.image_size, zs.transform.resize_mode, zs.transform.interpolation) == (32, "squash", "bilinear")
    torch.testing.assert_close(zs.transform(img), expected, atol=1e-6, rtol=0)
