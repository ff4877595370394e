"""CLIP contract tests: shapes and the open_clip output convention, gradients, causal end-of-text
pooling, native save/load, named configs, the CLIP tokenizer (offline), and timm parity of the
ViT options CLIP's image tower uses (pre_norm, norm_eps, act_layer).
"""
from __future__ import annotations

import functools
import json
import math

import pytest
import timm
import torch
from timm.layers import LayerNorm as TimmLayerNorm

from mmkit.data.text import CLIPTokenizer
from mmkit.models import ViT
from mmkit.models.clip import CLIP, CLIPTextTower, CLIPVisionTower
from mmkit.models.sizes import CLIP_CONFIGS, clip_config
from mmkit.weights import WeightsError
from mmkit.weights.from_timm import VIT_KEYS
from mmkit.weights.keymap import remap

TINY = dict(
    visual=dict(embed_dim=16, image_size=32, patch_size=8, dim=32, depth=2, num_heads=2),
    text=dict(embed_dim=16, vocab_size=100, max_len=12, dim=32, depth=2, num_heads=4),
)
EOT = 99  # the largest id, as <end_of_text> is in CLIP's BPE


def _tiny(**overrides) -> CLIP:
    torch.manual_seed(0)
    return CLIP.from_config({**TINY, **overrides})


def _images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _tokens() -> torch.Tensor:
    """Three rows: <sot>=98, words, <eot>=99, zero padding (like CLIP's tokenizer)."""
    rows = [[98, 5, 6, 7, EOT], [98, 40, EOT], [98, *range(10, 19), EOT]]
    out = torch.zeros(len(rows), 12, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def test_shapes_and_open_clip_output_convention():
    model = _tiny().eval()
    x, t = _images(), _tokens()
    with torch.no_grad():
        img, txt = model.encode_image(x), model.encode_text(t)
        assert img.shape == (2, 16) and txt.shape == (3, 16)
        image_features, text_features, scale = model(x, t)
        torch.testing.assert_close(image_features, torch.nn.functional.normalize(img, dim=-1))
        torch.testing.assert_close(text_features.norm(dim=-1), torch.ones(3))
        assert scale.shape == () and math.isclose(float(scale), 1 / 0.07, rel_tol=1e-5)
        per_image, per_text = model.get_logits(x, t)
        assert per_image.shape == (2, 3)
        torch.testing.assert_close(per_image, scale * image_features @ text_features.T)
        torch.testing.assert_close(per_text, per_image.T)
        assert model(None, t)[0] is None and model(x, None)[1] is None
    assert model.logit_bias is None and "logit_bias" not in model.state_dict()
    assert model.context_length == 12


def test_logit_bias_adds_fourth_output():
    model = _tiny(init_logit_bias=-10.0).eval()
    with torch.no_grad():
        out = model(_images(), _tokens())
        assert len(out) == 4 and float(out[3]) == -10.0
        logits = model.get_logits(_images(), _tokens())[0]
        torch.testing.assert_close(logits, out[2] * out[0] @ out[1].T - 10.0)


def test_backward_reaches_every_parameter():
    model = _tiny(init_logit_bias=-1.0).train()
    logits = model.get_logits(_images(3), _tokens())[0]  # 3 images x 3 texts, matched on the diagonal
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(3))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_text_pools_at_eot_and_is_causal():
    model = _tiny().eval()
    t = _tokens()
    changed_after = t.clone()
    changed_after[0, 5:] = torch.randint(1, EOT, (7,))  # after <eot>: must not matter
    changed_before = t.clone()
    changed_before[0, 2] = 77  # before <eot>: must matter
    with torch.no_grad():
        base = model.encode_text(t)
        torch.testing.assert_close(model.encode_text(changed_after), base, atol=1e-5, rtol=0)
        assert not torch.allclose(model.encode_text(changed_before)[0], base[0], atol=1e-4)
        # Causality also means the padding can be cut off entirely.
        torch.testing.assert_close(model.encode_text(t[:1, :5]), base[:1], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="exceeds max_len 12"):
        model.encode_text(torch.zeros(1, 13, dtype=torch.long))


def test_native_save_load_round_trip(tmp_path):
    model = _tiny(init_logit_bias=-5.0).eval()
    with torch.no_grad():
        model.logit_scale.fill_(3.0)  # a trained value, not the init: must come from the weights
    model.save_pretrained(tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["architecture"] == "CLIP" and doc["config"]["visual"]["patch_size"] == 8
    loaded = CLIP.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with torch.no_grad():
        for a, b in zip(loaded(_images(), _tokens()), model(_images(), _tokens())):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(WeightsError, match="holds a .CLIP. checkpoint, not ViT"):
        ViT.from_pretrained(tmp_path)


def test_from_pretrained_at_new_image_size(tmp_path):
    _tiny().save_pretrained(tmp_path)
    model = CLIP.from_pretrained(tmp_path, visual={"image_size": 48}).eval()
    assert model.visual.pos_embed.shape == (1, 1 + 36, 32) and model.config["visual"]["patch_size"] == 8
    with torch.no_grad():
        assert model.encode_image(_images(size=48)).shape == (2, 16)


def test_towers_must_share_embed_dim():
    with pytest.raises(ValueError, match="embed_dim 16 != text tower embed_dim 8"):
        CLIP(CLIPVisionTower(**TINY["visual"]), CLIPTextTower(**{**TINY["text"], "embed_dim": 8}))


def test_named_configs():
    assert set(CLIP_CONFIGS) == {"ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-16"}
    cfg = clip_config("ViT-B-32-quickgelu")
    assert cfg["visual"]["act_layer"] == cfg["text"]["act_layer"] == "quick_gelu"
    cfg["visual"]["depth"] = 1  # a copy: the table itself is untouched
    assert CLIP_CONFIGS["ViT-B-32-quickgelu"]["visual"]["depth"] == 12
    with pytest.raises(ValueError, match="known: ViT-B-16, ViT-B-32"):
        clip_config("ViT-L-14")
    model = CLIP.from_name("ViT-B-16", visual={**clip_config("ViT-B-16")["visual"], "depth": 1},
                           text={**clip_config("ViT-B-16")["text"], "depth": 1})
    assert model.visual.grid_size == (14, 14) and len(model.text.decoder.blocks) == 1


def test_vit_clip_options_match_timm():
    # CLIP's image tower options on the plain ViT, against timm's CLIP-style VisionTransformer.
    torch.manual_seed(0)
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=0, pre_norm=True,
        norm_layer=functools.partial(TimmLayerNorm, eps=1e-5), act_layer="quick_gelu").eval()
    ours = ViT(image_size=32, patch_size=8, num_classes=0, dim=48, depth=2, num_heads=3, pre_norm=True,
               norm_eps=1e-5, act_layer="quick_gelu").eval()
    assert ours.patch_embed.proj.bias is None  # timm drops the patch bias with pre_norm
    ours.load_state_dict(remap(ref.state_dict(), [*VIT_KEYS, ("norm_pre.{p}", "norm_pre.{p}")], "timm"))
    with torch.no_grad():
        torch.testing.assert_close(ours(_images()), ref(_images()), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        ViT(act_layer="swish")


def test_clip_tokenizer_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = CLIPTokenizer(arch="ViT-B-32")
    ids = tok(["a photo of a cat!", "a dog"])
    assert ids.dtype == torch.int64 and ids.shape == (2, 77) == (2, tok.context_length)
    assert (tok.vocab_size, tok.sot_token_id, tok.eot_token_id) == (49408, 49406, 49407)
    assert ids[0, 0] == tok.sot_token_id and ids[0].argmax() == ids[0].tolist().index(tok.eot_token_id)
    assert tok.decode(ids[0]) == "a photo of a cat !" and tok("a dog")[0].tolist() == ids[1].tolist()
    short = CLIPTokenizer(context_length=8)(" ".join(["word"] * 20))
    assert short.shape == (1, 8) and short[0, -1] == tok.eot_token_id  # truncated, <eot> kept last
    with pytest.raises(ValueError, match="not CLIP's BPE"):
        CLIPTokenizer(arch="ViT-B-16-SigLIP")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        CLIPTokenizer(arch="ViT-B-33")


def _siglip_tiny() -> CLIP:
    torch.manual_seed(0)
    return CLIP.from_config(dict(
        visual={**TINY["visual"], "dim": 16, "global_pool": "map", "pre_norm": False, "proj": False, "norm_eps": 1e-6},
        text={**TINY["text"], "causal": False, "pool": "last", "proj_bias": True, "norm_eps": 1e-6},
        init_logit_bias=-10.0,
    ))


def test_siglip_shaped_towers_backward_and_bidirectional_last_pooling(tmp_path):
    model = _siglip_tiny().train()
    assert model.visual.cls_token is None and isinstance(model.visual.proj, torch.nn.Identity)
    logits = model.get_logits(_images(3), _tokens())[0]
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.eye(3)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    model.eval()
    t = _tokens()
    changed_padding = t.clone()
    changed_padding[0, 8] = 3  # after <eot>: matters, attention is bidirectional and reads the last position
    with torch.no_grad():
        base = model.encode_text(t)
        assert not torch.allclose(model.encode_text(changed_padding)[0], base[0], atol=1e-4)
        assert not torch.allclose(model.encode_text(t[:1, :5]), base[:1], atol=1e-4)  # no cutting
    model.save_pretrained(tmp_path)
    again = CLIP.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again.encode_text(t), base, atol=0, rtol=0)
        torch.testing.assert_close(again.encode_image(_images()), model.encode_image(_images()), atol=0, rtol=0)


def test_vision_tower_without_projection_needs_matching_widths():
    with pytest.raises(ValueError, match="proj=False needs embed_dim == dim"):
        CLIPVisionTower(embed_dim=16, dim=32, depth=1, num_heads=2, proj=False)
