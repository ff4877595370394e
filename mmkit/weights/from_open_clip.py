"""Import open_clip `CLIP` models (OpenAI's and LAION's checkpoints) and SigLIP models (Zhai et al.,
2023; open_clip's `CustomTextCLIP` with a timm ViT image tower) into the config and state dict of
`mmkit.models.CLIP` (built by `CLIP.from_open_clip`; this converter never imports mmkit.models).

open_clip is the reference: the architecture is read off an open_clip instance, a local
checkpoint file is loaded strictly into that instance first, and its weights then go through the
key map of its layout (`key_map`). OpenAI's checkpoints use open_clip's key names (open_clip kept
them), plus three scalar metadata entries and float16 weights; OpenAI's TorchScript archives are
read without running their pickles. Variants mmkit's CLIP does not implement are refused by name, not approximated.
The preprocessing the weights were trained with (open_clip's preprocess_cfg: SigLIP's mean/std 0.5 and squash
resizing) comes along in mmkit's metadata keys (`open_clip_preprocess`).
"""
from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mmkit.data.text import uses_clip_bpe
from mmkit.data.transforms import RESIZE_MODES
from mmkit.weights.from_timm import INTERPOLATIONS, VIT_KEYS, timm_vit_config
from mmkit.weights.hub import failure, hub_access
from mmkit.weights.keymap import Rule, Transform, remap
from mmkit.weights.native import Converted, WeightsError, check_file, load_state_dict_strict, read_state_dict
from mmkit.weights.torchscript import is_torchscript_archive, read_torchscript_state_dict

log = logging.getLogger(__name__)


def _block_rules(src: str, dst: str) -> list[Rule]:
    # open_clip's ResidualAttentionBlock: nn.MultiheadAttention's in_proj is q|k|v stacked in
    # mmkit's order, so it maps straight onto the fused `qkv`.
    return [
        (f"{src}.{{i}}.ln_1.{{p}}", f"{dst}.{{i}}.norm1.{{p}}"),
        (f"{src}.{{i}}.attn.in_proj_weight", f"{dst}.{{i}}.attn.qkv.weight"),
        (f"{src}.{{i}}.attn.in_proj_bias", f"{dst}.{{i}}.attn.qkv.bias"),
        (f"{src}.{{i}}.attn.out_proj.{{p}}", f"{dst}.{{i}}.attn.proj.{{p}}"),
        (f"{src}.{{i}}.ln_2.{{p}}", f"{dst}.{{i}}.norm2.{{p}}"),
        (f"{src}.{{i}}.mlp.c_fc.{{p}}", f"{dst}.{{i}}.mlp.fc1.{{p}}"),
        (f"{src}.{{i}}.mlp.c_proj.{{p}}", f"{dst}.{{i}}.mlp.fc2.{{p}}"),
    ]


def _text_rules(src: str) -> list[Rule]:
    # open_clip's text tower, as `CLIP` attributes (src "") or a CustomTextCLIP's `text.` module.
    return [
        (f"{src}token_embedding.weight", "text.tok_embed.weight"),
        (f"{src}positional_embedding", "text.pos_embed.weight"),
        *_block_rules(f"{src}transformer.resblocks", "text.decoder.blocks"),
        (f"{src}ln_final.{{p}}", "text.decoder.norm.{p}"),
        (f"{src}text_projection", "text.proj.weight"),  # a (width, embed_dim) parameter
        (f"{src}text_projection.{{p}}", "text.proj.{p}"),  # an nn.Linear (proj_bias, SigLIP)
    ]


VISUAL_KEYS: list[Rule] = [
    ("visual.conv1.weight", "visual.patch_embed.proj.weight"),
    ("visual.class_embedding", "visual.cls_token"),
    ("visual.positional_embedding", "visual.pos_embed"),
    ("visual.ln_pre.{p}", "visual.norm_pre.{p}"),
    *_block_rules("visual.transformer.resblocks", "visual.encoder.blocks"),
    ("visual.ln_post.{p}", "visual.norm.{p}"),
    ("visual.proj", "visual.proj.weight"),
]
# SigLIP's image tower: open_clip's TimmModel wraps a timm ViT as `trunk`.
TIMM_VISUAL_KEYS: list[Rule] = [(f"visual.trunk.{src}", f"visual.{dst}") for src, dst in VIT_KEYS]
SCALAR_KEYS: list[Rule] = [("logit_scale", "logit_scale"), ("logit_bias", "logit_bias")]
# open_clip `CLIP.state_dict()` -> mmkit `CLIP`.
CLIP_KEYS: list[Rule] = [*VISUAL_KEYS, *_text_rules(""), *SCALAR_KEYS]
# Entries of checkpoint files that are not weights: OpenAI's scalar metadata, and the causal
# mask that TorchScript serialises although open_clip registers it as a non-persistent buffer.
CHECKPOINT_DROPS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def _projection(w: Tensor) -> Tensor:
    """open_clip's `x @ proj` parameter (in, out) -> nn.Linear weight (out, in)."""
    return w.t().contiguous()


TRANSFORMS = {
    "visual.cls_token": lambda t: t.reshape(1, 1, -1),  # (dim,) -> (1, 1, dim)
    "visual.pos_embed": lambda t: t.unsqueeze(0),  # (1 + N, dim) -> (1, 1 + N, dim)
    "visual.proj.weight": _projection,
    "text.proj.weight": _projection,
    "logit_scale": lambda t: t.reshape(()),  # open_clip's nonscalar_logit_scale stores shape (1,)
    "logit_bias": lambda t: t.reshape(()),
}


# ---- checkpoint files -------------------------------------------------------------------------

def read_open_clip_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """A CLIP state dict from a local file in open_clip or OpenAI layout: safetensors, a weights-only
    torch file (optionally wrapped as {"state_dict": ...}, keys optionally prefixed "module." by
    DDP), or a TorchScript archive. Non-weight entries (`CHECKPOINT_DROPS`) are removed."""
    path = Path(path).expanduser()
    check_file(path)
    if is_torchscript_archive(path):
        state = read_torchscript_state_dict(path)
    else:
        state = read_state_dict(path)
        if isinstance(state.get("state_dict"), dict):  # open_clip training checkpoints
            state = state["state_dict"]
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    dropped = [k for k in CHECKPOINT_DROPS if k in state]
    if dropped:
        log.info("%s: dropping non-weight entries %s", path, ", ".join(dropped))
    return {k: v for k, v in state.items() if k not in CHECKPOINT_DROPS}


# ---- architecture ------------------------------------------------------------------------------

def _activation(block: nn.Module) -> str | None:
    act = block.mlp.gelu
    if type(act).__name__ == "QuickGELU":
        return "quick_gelu"
    if type(act) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}[act.approximate]
    return None


def _text(m: nn.Module) -> nn.Module:
    """The module holding the text tower's parts: the CLIP itself (open_clip's `CLIP` keeps them as
    its own attributes) or `m.text` (a `TextTransformer` in a `CustomTextCLIP`, SigLIP's layout)."""
    return m if type(m).__name__ == "CLIP" else m.text


def _text_pool(t: nn.Module) -> str:
    return t.text_pool_type if hasattr(t, "text_pool_type") else t.pool_type


def _check_supported(m: nn.Module, source: str) -> None:
    kind = type(m).__name__
    if kind == "CustomTextCLIP" and type(m.text).__name__ != "TextTransformer":
        raise WeightsError(f"{source}: open_clip model uses a Hugging Face text tower ({type(m.text).__name__}); "
                           "mmkit's CLIP has open_clip's TextTransformer only")
    if kind not in ("CLIP", "CustomTextCLIP"):
        what = {"CoCa": "a CoCa multimodal text decoder"}.get(kind, f"model class {kind}")
        raise WeightsError(f"{source}: open_clip model uses {what}; mmkit's CLIP supports CLIP and SigLIP only")
    v, t = m.visual, _text(m)
    if type(v).__name__ == "TimmModel":
        _check_timm_tower(v, source)
        blocks = list(t.transformer.resblocks)
    elif type(v).__name__ == "VisionTransformer":
        blocks = [*v.transformer.resblocks, *t.transformer.resblocks]
    else:
        what = {"ModifiedResNet": "a ResNet image tower"}.get(type(v).__name__, f"image tower {type(v).__name__}")
        raise WeightsError(f"{source}: open_clip model uses {what}; mmkit's CLIP has a ViT image tower")
    if any(type(b).__name__ != "ResidualAttentionBlock" for b in blocks):
        raise WeightsError(f"{source}: open_clip model uses custom attention blocks (qk_norm, scaled cosine "
                           "attention or scale_* options), outside mmkit's CLIP")
    unsupported = {
        "layer scale": any(not isinstance(b.ls_1, nn.Identity) for b in blocks),
        "activation other than GELU / QuickGELU": any(_activation(b) is None for b in blocks),
        "attention without fused q/k/v bias": any(b.attn.in_proj_weight is None or b.attn.in_proj_bias is None
                                                  or b.attn.bias_k is not None for b in blocks),
        f"text pool_type={_text_pool(t)!r}": _text_pool(t) not in ("argmax", "last"),
        "text class embedding (embed_cls)": getattr(t, "cls_emb", None) is not None,
        "text padding mask (use_pad_mask)": getattr(t, "use_pad_mask", False),
        "no text projection": t.text_projection is None,
    }
    if type(v).__name__ == "VisionTransformer":
        unsupported.update({
            "attentional pooler": getattr(v, "attn_pool", None) is not None,
            f"image pool_type={v.pool_type!r}": v.pool_type != "tok",
            "no ln_pre (no_ln_pre)": isinstance(v.ln_pre, nn.Identity),
            "patch dropout": not isinstance(v.patch_dropout, nn.Identity),
            "non-square image or patches": v.image_size[0] != v.image_size[1] or v.patch_size[0] != v.patch_size[1],
            "no image projection": v.proj is None,
        })
    bad = [k for k, flag in unsupported.items() if flag]
    if bad:
        raise WeightsError(f"{source}: open_clip model uses features outside mmkit's CLIP: {', '.join(bad)}")


def _check_timm_tower(v: nn.Module, source: str) -> None:
    """SigLIP's image tower: a timm ViT trunk with attention pooling ("map") and no projection."""
    trunk = v.trunk
    if type(trunk).__name__ != "VisionTransformer":
        raise WeightsError(f"{source}: open_clip model uses a timm {type(trunk).__name__} image tower; "
                           "mmkit's CLIP imports timm ViTs with attention pooling (SigLIP) only")
    cfg = timm_vit_config(trunk)  # refuses what mmkit's ViT does not implement
    if cfg["global_pool"] != "map" or cfg["class_token"] or cfg["num_classes"] or len(v.head) or not cfg["qkv_bias"]:
        raise WeightsError(f"{source}: timm image tower is not SigLIP-shaped (wanted global_pool='map', no class "
                           "token, no head or projection, qkv bias; got "
                           f"global_pool={cfg['global_pool']!r}, class_token={cfg['class_token']}, "
                           f"num_classes={cfg['num_classes']}, open_clip head {len(v.head)}, "
                           f"qkv_bias={cfg['qkv_bias']})")


def _visual_config(v: nn.Module) -> dict[str, Any]:
    if type(v).__name__ == "TimmModel":
        cfg = timm_vit_config(v.trunk)
        return dict(embed_dim=cfg["dim"], image_size=cfg["image_size"], patch_size=cfg["patch_size"],
                    dim=cfg["dim"], depth=cfg["depth"], num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"],
                    act_layer=cfg["act_layer"], norm_eps=1e-6, drop_path_rate=cfg["drop_path_rate"], global_pool="map",
                    pre_norm=False, proj=False)
    vb, v_dim = v.transformer.resblocks[0], v.conv1.out_channels
    return dict(
        embed_dim=v.proj.shape[1], image_size=v.image_size[0], patch_size=v.patch_size[0], dim=v_dim,
        depth=len(v.transformer.resblocks), num_heads=vb.attn.num_heads,
        mlp_ratio=vb.mlp.c_fc.out_features / v_dim, act_layer=_activation(vb), norm_eps=vb.ln_1.eps,
    )


def _clip_config(m: nn.Module) -> dict[str, Any]:
    """`CLIP.from_config` arguments read off an open_clip CLIP (or SigLIP-style CustomTextCLIP)."""
    t = _text(m)
    tb, t_dim = t.transformer.resblocks[0], t.token_embedding.embedding_dim
    linear = isinstance(t.text_projection, nn.Linear)
    text = dict(
        embed_dim=t.text_projection.out_features if linear else t.text_projection.shape[1],
        vocab_size=t.token_embedding.num_embeddings, max_len=t.positional_embedding.shape[0], dim=t_dim,
        depth=len(t.transformer.resblocks), num_heads=tb.attn.num_heads, mlp_ratio=tb.mlp.c_fc.out_features / t_dim,
        act_layer=_activation(tb), norm_eps=tb.ln_1.eps,
    )
    # Only what differs from CLIP's defaults, so CLIP configs stay as they were.
    if t.attn_mask is None:
        text["causal"] = False
    if _text_pool(t) != "argmax":
        text["pool"] = _text_pool(t)
    if linear and t.text_projection.bias is not None:
        text["proj_bias"] = True
    bias = None if m.logit_bias is None else float(m.logit_bias.detach().reshape(-1)[0])
    return dict(visual=_visual_config(m.visual), text=text,
                init_logit_scale=float(m.logit_scale.detach().reshape(-1)[0]), init_logit_bias=bias)


def key_map(m: nn.Module) -> tuple[list[Rule], dict[str, Transform]]:
    """The key rules and tensor transforms for an open_clip model's `state_dict()`: `CLIP_KEYS` and
    `TRANSFORMS` for CLIP; for SigLIP's layout, the timm trunk's keys (`from_timm.VIT_KEYS`, already
    in mmkit's shapes) and the text tower's under `text.`."""
    visual = VISUAL_KEYS if type(m.visual).__name__ == "VisionTransformer" else TIMM_VISUAL_KEYS
    text = _text_rules("") if type(m).__name__ == "CLIP" else _text_rules("text.")
    transforms = dict(TRANSFORMS)
    if visual is TIMM_VISUAL_KEYS:
        transforms = {k: fn for k, fn in transforms.items() if not k.startswith("visual.")}
    if isinstance(_text(m).text_projection, nn.Linear):  # already nn.Linear's (out, in)
        transforms.pop("text.proj.weight")
    return [*visual, *text, *SCALAR_KEYS], transforms


_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def _create(arch: str, pretrained: str | Path | None) -> tuple[nn.Module, str, bool]:
    """(open_clip model, source name, weights loaded?) for an architecture name."""
    import open_clip

    if arch.startswith(("hf-hub:", "local-dir:")):  # open_clip reads config and weights from there
        if pretrained is not None:
            raise ValueError(f"{arch} names its own weights; pass pretrained=None")
        if arch.startswith("local-dir:"):
            return open_clip.create_model(arch), f"open_clip:{arch}", True
        with hub_access() as offline:
            try:
                return open_clip.create_model(arch), f"open_clip:{arch}", True
            except Exception as e:  # noqa: BLE001 - with the hub out of reach, any failure is the missing download
                if offline is None:
                    raise
                raise WeightsError(f"open_clip could not load {arch}: {failure(e, offline)}") from None
    if open_clip.get_model_config(arch) is None:
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=5, cutoff=0.6)
        similar = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown open_clip architecture {arch!r}{similar}")
    if pretrained is None:
        return open_clip.create_model(arch, pretrained=None), f"open_clip:{arch}", False
    path = Path(pretrained).expanduser()
    if path.is_file():
        state = read_open_clip_checkpoint(path)  # read first: a bad file fails before a model is built
        model = open_clip.create_model(arch, pretrained=None)
        _check_supported(model, f"open_clip:{arch}")
        load_state_dict_strict(model, state, str(path))
        return model, str(path), True
    tag = str(pretrained)
    if "/" in tag or path.suffix in _CHECKPOINT_SUFFIXES:  # meant as a file (tags are bare names)
        check_file(path)  # a directory, or nothing there
    if not open_clip.get_pretrained_cfg(arch, tag):
        known = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise WeightsError(f"{tag!r} is neither a checkpoint file nor an open_clip pretrained tag of {arch} "
                           f"(tags: {known})")
    with hub_access() as offline:  # the hub: needs the network (or the hub cache)
        try:
            model = open_clip.create_model(arch, pretrained=tag)
        except RuntimeError as e:
            raise WeightsError(f"open_clip could not load {arch} / {tag} ({failure(e, offline)}); offline, pass a "
                               "local file") from None
    return model, f"open_clip:{arch}/{tag}", True


# open_clip preprocess_cfg keys -> mmkit's metadata keys (`mmkit.data.transforms.EVAL_KEYS`)
_PREPROCESS_KEYS = {"image_size": "image_size", "size": "image_size", "mean": "mean", "std": "std",
                    "interpolation": "interpolation", "resize_mode": "resize_mode"}


def open_clip_preprocess(arch: str, pretrained: str | Path | None) -> dict[str, Any]:
    """The eval preprocessing of open_clip architecture `arch` read from configuration alone (nothing
    built or downloaded), in mmkit's metadata keys: the architecture's preprocess_cfg, updated by the
    pretrained tag's, or for a local file by what all of the architecture's tags agree on."""
    import open_clip

    config = open_clip.get_model_config(arch)
    if config is None:
        raise ValueError(f"{arch!r} is neither a checkpoint directory nor an open_clip architecture")
    cfg = {"image_size": config["vision_cfg"].get("image_size", 224), **config.get("preprocess_cfg", {})}
    if pretrained and not Path(pretrained).expanduser().is_file():
        cfg.update(open_clip.get_pretrained_cfg(arch, str(pretrained)) or {})
    elif pretrained:  # a local file: what all the architecture's tags agree on (SigLIP: mean/std 0.5, squash)
        tags = [open_clip.get_pretrained_cfg(arch, t) for t in open_clip.list_pretrained_tags_by_model(arch)]
        cfg.update({k: tags[0][k] for k in ("mean", "std", "interpolation", "resize_mode")
                    if tags and all(k in t and t[k] == tags[0][k] for t in tags)})
    return {_PREPROCESS_KEYS[k]: v for k, v in cfg.items() if k in _PREPROCESS_KEYS}


def open_clip_arch(name: str) -> bool:
    """Whether `name` is an architecture of open_clip's own configs (not hf-hub:, not a file)."""
    import open_clip

    return open_clip.get_model_config(name) is not None


def _preprocess(oc: nn.Module, arch: str | None, pretrained: str | Path | None, image_size: int,
                source: str) -> dict[str, Any]:
    """The preprocessing recorded with an import: an architecture's by name (`open_clip_preprocess`), else
    the instance's `visual.preprocess_cfg` (what open_clip's own transforms read), at the tower's resolution.

    Raises:
        WeightsError: a resize mode or interpolation mmkit's eval transform does not implement.
    """
    if arch is not None and open_clip_arch(arch):
        cfg = open_clip_preprocess(arch, pretrained)
    else:  # an instance, or hf-hub:/local-dir: (open_clip merged their preprocess_cfg into the model's)
        found = getattr(oc.visual, "preprocess_cfg", None) or {}
        cfg = {_PREPROCESS_KEYS[k]: v for k, v in found.items() if k in _PREPROCESS_KEYS}
    cfg = {**cfg, "image_size": image_size}
    for key in ("mean", "std"):
        if key in cfg:
            cfg[key] = [float(v) for v in cfg[key]]
    if cfg.get("resize_mode", "shortest") not in RESIZE_MODES:
        raise WeightsError(f"{source}: open_clip preprocessing uses resize_mode={cfg['resize_mode']!r}, outside "
                           "mmkit's eval transform (shortest, squash)")
    if cfg.get("interpolation", "bicubic") not in INTERPOLATIONS:
        raise WeightsError(f"{source}: open_clip preprocessing uses interpolation={cfg['interpolation']!r}, outside "
                           f"mmkit's eval transform ({', '.join(INTERPOLATIONS)})")
    return cfg


def import_open_clip(model_or_arch: nn.Module | str, pretrained: str | Path | None = None
                     ) -> tuple[Converted, dict[str, Any]]:
    """Convert an open_clip `CLIP` (an instance, or an architecture name built by open_clip with
    `pretrained` = None, a local checkpoint file, or a pretrained tag) for `mmkit.models.CLIP`
    (see `CLIP.from_open_clip`).

    Returns:
        `CLIP.from_config` config and state dict (training is the instance's mode, False when weights
        were loaded), and the eval preprocessing of the weights in mmkit's metadata keys (with
        `open_clip_tokenizer` for an architecture that has its own tokenizer).

    Raises:
        WeightsError: unsupported open_clip variants (the message names the feature), and checkpoint
            files with missing, unexpected or wrongly shaped tensors (it names the file and the keys).
    """
    if isinstance(model_or_arch, nn.Module):
        if pretrained is not None:
            raise ValueError("pass `pretrained` only with an architecture name")
        oc, source, loaded = model_or_arch, f"open_clip:{type(model_or_arch).__name__}", False
    else:
        oc, source, loaded = _create(model_or_arch, pretrained)
    _check_supported(oc, source)
    rules, transforms = key_map(oc)
    config = _clip_config(oc)
    arch = model_or_arch if isinstance(model_or_arch, str) else None
    preprocess = _preprocess(oc, arch, pretrained, config["visual"]["image_size"], source)
    if arch is not None and open_clip_arch(arch) and not uses_clip_bpe(arch):
        # SigLIP's own tokenizer: recorded with the preprocessing, an export names it (`load_clip` reads
        # `open_clip_tokenizer`), or a reloaded SigLIP would be read with CLIP's BPE and refused
        preprocess["open_clip_tokenizer"] = arch
    log.info("imported open_clip CLIP from %s", source)
    return Converted(config, remap(oc.state_dict(), rules, source, transforms), source,
                     oc.training and not loaded), preprocess


def clip_from_open_clip(model_or_arch: nn.Module | str, pretrained: str | Path | None = None) -> Converted:
    """`import_open_clip` without the preprocessing: the config and state dict only."""
    return import_open_clip(model_or_arch, pretrained)[0]
