"""Convert timm `VisionTransformer` weights into the config and state dict of `mmkit.models.ViT`
(built by `ViT.from_timm`; this converter never imports mmkit.models).

The architecture is read off the timm instance (timm's own config is the reference), the
weights go through a key map; anything the plain ViT family does not cover (register tokens,
qk-norm, layer scale, ...) is refused with a message rather than approximated. Attention pooling
("map", SigLIP's image towers) is covered. The preprocessing the weights were trained with (timm's
`resolve_data_config`) comes along in mmkit's metadata keys (`timm_preprocess`).
"""
from __future__ import annotations

import difflib
import logging
from typing import Any

from torch import nn

from mmkit.data.transforms import RESAMPLE
from mmkit.weights.keymap import remap
from mmkit.weights.native import Converted, WeightsError, load_state_dict_strict, read_state_dict

log = logging.getLogger(__name__)

VIT_KEYS = [
    ("cls_token", "cls_token"),
    ("pos_embed", "pos_embed"),
    ("patch_embed.proj.{p}", "patch_embed.proj.{p}"),
    ("norm_pre.{p}", "norm_pre.{p}"),  # pre_norm (CLIP-style image towers)
    ("blocks.{i}.{rest}", "encoder.blocks.{i}.{rest}"),
    ("norm.{p}", "norm.{p}"),
    ("fc_norm.{p}", "fc_norm.{p}"),
    ("head.{p}", "head.{p}"),
    # "map" pooling: timm's AttentionPoolLatent holds q/kv/proj itself, mmkit's in a core Attention.
    ("attn_pool.latent", "attn_pool.latent"),
    ("attn_pool.q.{p}", "attn_pool.attn.q.{p}"),
    ("attn_pool.kv.{p}", "attn_pool.attn.kv.{p}"),
    ("attn_pool.proj.{p}", "attn_pool.attn.proj.{p}"),
    ("attn_pool.norm.{p}", "attn_pool.norm.{p}"),
    ("attn_pool.mlp.{rest}", "attn_pool.mlp.{rest}"),
]


def _timm_create(name: str, checkpoint_path: str | None, pretrained: bool, timm_kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if not timm.is_model(name):  # accepts pretrained tags ("vit_tiny_patch16_224.augreg_in21k")
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=5, cutoff=0.8)
        raise ValueError(f"unknown timm model {name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    if pretrained:  # weights from the hub (or its cache)
        from mmkit.weights.hub import failure, hub_access

        with hub_access() as offline:
            try:
                model = timm.create_model(name, pretrained=True, **timm_kwargs)
            except Exception as e:  # noqa: BLE001 - with the hub out of reach, any failure is the missing download
                if offline is None:
                    raise
                raise WeightsError(f"timm could not load {name}'s pretrained weights: {failure(e, offline)}") from None
    else:
        model = timm.create_model(name, pretrained=False, **timm_kwargs)
    if checkpoint_path is not None:
        state = read_state_dict(checkpoint_path)
        for wrapper in ("state_dict", "model"):  # timm training checkpoints wrap the weights
            if wrapper in state and isinstance(state[wrapper], dict):
                state = state[wrapper]
        # timm's own filter resamples position embeddings / adapts patch sizes, as timm would.
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = checkpoint_filter_fn(state, model)
        load_state_dict_strict(model, state, str(checkpoint_path))
    return model


def _gelu(act: nn.Module) -> str | None:
    """mmkit's name of a timm MLP's activation where it is a GELU ("gelu", or "gelu_tanh": nn.GELU with
    approximate="tanh", or timm's GELUTanh), else None. The class alone is not enough: nn.GELU(approximate="tanh")
    imported as the exact GELU differed by 5e-4."""
    if type(act) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(act.approximate)
    if type(act).__module__.startswith("timm."):  # timm's own, built from act_layer="gelu" / "gelu_tanh"
        return {"GELU": "gelu", "GELUTanh": "gelu_tanh"}.get(type(act).__name__)
    return None


def _attention_pool_unsupported(m: nn.Module) -> bool:
    """True unless `m.attn_pool` is absent or the AttentionPoolLatent timm's ViT builds for "map"."""
    from timm.layers import Mlp as TimmMlp

    pool = getattr(m, "attn_pool", None)
    if pool is None:
        return False
    if type(pool).__name__ != "AttentionPoolLatent":
        return True
    blk = m.blocks[0]
    return not (pool.latent_len == 1 and pool.pos_embed is None and pool.pool == "token"
                and isinstance(pool.q, nn.Linear) and isinstance(pool.q_norm, nn.Identity)
                and pool.num_heads == blk.attn.num_heads and isinstance(pool.mlp, TimmMlp)
                and pool.mlp.fc1.out_features == blk.mlp.fc1.out_features
                and _gelu(pool.mlp.act) is not None and _gelu(pool.mlp.act) == _gelu(blk.mlp.act)
                and isinstance(pool.norm, nn.LayerNorm) and pool.norm.eps == 1e-6
                and not getattr(m, "pool_include_prefix", False))


def timm_vit_config(m: nn.Module) -> dict[str, Any]:
    """`ViT(...)` arguments of a timm VisionTransformer; features mmkit's ViT lacks are refused."""
    from timm.layers import Mlp as TimmMlp

    blocks = {type(b).__name__ for b in m.blocks}
    if blocks != {"Block"}:  # ResPostBlock has Block's tensor names but is post-norm: it must not import
        raise WeightsError(f"timm model uses features outside mmkit's plain ViT: block type "
                           f"{', '.join(sorted(blocks - {'Block'}))}")
    blk = m.blocks[0]
    layers = {  # first: the checks below read these layers' fields (timm's SwiGLU has no fc1)
        "non-GELU activation / non-standard MLP": not (isinstance(blk.mlp, TimmMlp) and _gelu(blk.mlp.act)),
        "attention other than timm's Attention": type(blk.attn).__name__ != "Attention",
    }
    if any(layers.values()):
        raise WeightsError(f"timm model uses features outside mmkit's plain ViT: "
                           f"{', '.join(k for k, v in layers.items() if v)}")
    unsupported = {
        "register tokens": getattr(m, "reg_token", None) is not None,
        "no_embed_class": getattr(m, "no_embed_class", False),
        "a pre-norm other than LayerNorm(eps=1e-6)": not (isinstance(m.norm_pre, nn.Identity) or (
            isinstance(m.norm_pre, nn.LayerNorm) and m.norm_pre.eps == 1e-6)),
        "a patch embedding bias beside a pre-norm": not isinstance(m.norm_pre, nn.Identity) and (
            m.patch_embed.proj.bias is not None),
        "no patch embedding bias without a pre-norm": isinstance(m.norm_pre, nn.Identity) and (
            m.patch_embed.proj.bias is None),
        "attention pooling other than timm's default AttentionPoolLatent": _attention_pool_unsupported(m),
        "qk-norm": not isinstance(blk.attn.q_norm, nn.Identity),
        "layer scale": not isinstance(blk.ls1, nn.Identity),
        "no attention output bias (proj_bias=False)": getattr(blk.attn.proj, "bias", None) is None,
        "no MLP biases": blk.mlp.fc1.bias is None or blk.mlp.fc2.bias is None,
        "a norm inside attention (scale_attn_norm)": not isinstance(getattr(blk.attn, "norm", nn.Identity()),
                                                                    nn.Identity),
        "a norm inside the MLP (scale_mlp_norm)": not isinstance(getattr(blk.mlp, "norm", nn.Identity()),
                                                                 nn.Identity),
        "a norm after the patch embedding (embed_norm_layer)": not isinstance(getattr(m.patch_embed, "norm",
                                                                                      nn.Identity()), nn.Identity),
        "no position embedding (pos_embed='none')": getattr(m, "pos_embed", None) is None,
        "no final norm (final_norm=False)": isinstance(m.norm, nn.Identity) and isinstance(m.fc_norm, nn.Identity),
        "non-square patches": m.patch_embed.patch_size[0] != m.patch_embed.patch_size[1],
        f"global_pool={m.global_pool!r}": m.global_pool not in ("token", "avg", "map"),
        "dynamic image size": getattr(m, "dynamic_img_size", False),
        "pool_include_prefix": m.global_pool == "avg" and getattr(m, "pool_include_prefix", False),
        "norm other than LayerNorm(eps=1e-6)": not (isinstance(blk.norm1, nn.LayerNorm) and blk.norm1.eps == 1e-6),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise WeightsError(f"timm model uses features outside mmkit's plain ViT: {', '.join(bad)}")
    img = m.patch_embed.img_size
    if img[0] != img[1]:
        raise WeightsError(f"timm model uses features outside mmkit's plain ViT: non-square image size {img}")
    return dict(
        image_size=img[0], patch_size=m.patch_embed.patch_size[0], in_chans=m.patch_embed.proj.in_channels,
        num_classes=m.num_classes, dim=m.embed_dim, depth=len(m.blocks), num_heads=blk.attn.num_heads,
        mlp_ratio=blk.mlp.fc1.out_features / m.embed_dim, qkv_bias=blk.attn.qkv.bias is not None,
        act_layer=_gelu(blk.mlp.act), class_token=m.cls_token is not None, global_pool=m.global_pool,
        fc_norm=not isinstance(m.fc_norm, nn.Identity), pre_norm=not isinstance(m.norm_pre, nn.Identity),
        # timm and mmkit share the linear stochastic-depth rule; the last block holds the rate.
        drop_path_rate=round(float(getattr(m.blocks[-1].drop_path1, "drop_prob", 0.0)), 6),
    )


# timm's eval crop modes -> mmkit's resize_mode (`mmkit.data.transforms.EvalTransform`); timm's third,
# "border" (long side resized, then padded with the mean colour), has no mmkit counterpart.
CROP_MODES = {"center": "shortest", "squash": "squash"}
INTERPOLATIONS = tuple(RESAMPLE)  # EvalTransform's resamplers


def timm_preprocess(m: nn.Module) -> dict[str, Any]:
    """The eval preprocessing of a timm model, `timm.data.resolve_data_config(model=m)` (its pretrained_cfg:
    augreg's mean/std 0.5 and crop_pct 0.9, not ImageNet's), in mmkit's metadata keys (`EVAL_KEYS`).

    The size is the model's own: timm keeps a tag's input_size when `img_size=` builds the model at
    another one, and its transform would then feed an input the model refuses.

    Raises:
        WeightsError: a crop mode or interpolation mmkit's eval transform does not implement.
    """
    from timm.data import resolve_data_config

    cfg = resolve_data_config(model=m)
    mode, interpolation = cfg.get("crop_mode") or "center", cfg["interpolation"]
    if mode not in CROP_MODES or interpolation not in INTERPOLATIONS:
        what = f"crop_mode={mode!r}" if mode not in CROP_MODES else f"interpolation={interpolation!r}"
        raise WeightsError(f"timm model's preprocessing uses {what}, outside mmkit's eval transform "
                           f"(crop modes {', '.join(CROP_MODES)}; interpolations {', '.join(INTERPOLATIONS)})")
    size = m.patch_embed.img_size[0]
    if tuple(cfg["input_size"][1:]) != (size, size):
        log.info("timm pretrained_cfg input_size %s differs from the model's %d px: using %d px",
                 cfg["input_size"], size, size)
    return {"image_size": size, "mean": [float(v) for v in cfg["mean"]], "std": [float(v) for v in cfg["std"]],
            "interpolation": interpolation, "crop_pct": float(cfg["crop_pct"]), "resize_mode": CROP_MODES[mode]}


def import_timm_vit(model_or_name: nn.Module | str, checkpoint_path: str | None = None,
                    pretrained: bool = False, **timm_kwargs: Any) -> tuple[Converted, dict[str, Any]]:
    """`ViT` config and state dict of a timm VisionTransformer instance or name (see `ViT.from_timm`),
    and its eval preprocessing (`timm_preprocess`).

    Raises:
        WeightsError: timm features outside mmkit's ViT, and tensors no key rule accounts for.
    """
    if isinstance(model_or_name, str):
        timm_model = _timm_create(model_or_name, checkpoint_path, pretrained, timm_kwargs)
        source = checkpoint_path or f"timm:{model_or_name}"
    else:
        if checkpoint_path or pretrained or timm_kwargs:
            raise ValueError("pass checkpoint_path/pretrained/timm kwargs only with a model name")
        timm_model, source = model_or_name, f"timm:{type(model_or_name).__name__}"
    if type(timm_model).__name__ != "VisionTransformer":
        raise WeightsError(f"{source}: expected a timm VisionTransformer, got {type(timm_model).__name__}")
    config = timm_vit_config(timm_model)  # first: unsupported features are refused by name
    preprocess = timm_preprocess(timm_model)
    state = remap(timm_model.state_dict(), VIT_KEYS, source)
    return Converted(config, state, str(source), timm_model.training), preprocess


def vit_from_timm(model_or_name: nn.Module | str, checkpoint_path: str | None = None,
                  pretrained: bool = False, **timm_kwargs: Any) -> Converted:
    """`import_timm_vit` without the preprocessing: the config and state dict only."""
    return import_timm_vit(model_or_name, checkpoint_path, pretrained, **timm_kwargs)[0]
