"""Convert an `mmkit.models.ViT` (config, state dict, eval preprocessing, class names) into a timm checkpoint
folder: the `config.json` and `model.safetensors` that `timm.create_model("local-dir:DIR")` (or
"hf-hub:ORG/NAME" once uploaded) builds and loads as a `VisionTransformer` with the same logits, and whose
`pretrained_cfg` gives `timm.data.resolve_data_config` the preprocessing the weights were trained with. The
inverse of `from_timm` (the same key map, read backwards); this converter never imports mmkit.models.

timm rebuilds the model from a registered architecture name and `model_args` that override its defaults: the
name is the standard one of the same patch, width, depth and heads where timm has one (`vit_tiny_patch16_224`),
else `vit_base_patch16_224` with every size in `model_args`. Settings timm's ViT cannot express are refused by
name before anything is written.
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor

from mmkit.weights.from_timm import CROP_MODES, VIT_KEYS
from mmkit.weights.keymap import remap
from mmkit.weights.native import WeightsError

TIMM_NORM_EPS = 1e-6  # timm's ViT norm: LayerNorm(eps=1e-6), what `model_args` cannot change
TIMM_ACTIVATIONS = ("gelu", "gelu_tanh")  # mmkit's names that are timm's `get_act_layer` names too
# timm's standard ViT sizes: (width, depth, heads) -> the name's size word
SIZES = {(192, 12, 3): "tiny", (384, 12, 6): "small", (768, 12, 12): "base", (1024, 24, 16): "large",
         (1280, 32, 16): "huge"}
FALLBACK_ARCHITECTURE = "vit_base_patch16_224"


def architecture_name(config: dict[str, Any]) -> str:
    """The timm architecture a ViT of `config` is recorded as: `vit_{size}_patch{p}_{image}` where timm registers
    that name and its size matches, else `FALLBACK_ARCHITECTURE` (the `model_args` carry every size either way)."""
    import timm

    size = SIZES.get((config["dim"], config["depth"], config["num_heads"]))
    name = f"vit_{size}_patch{config['patch_size']}_{config['image_size']}"
    return name if size and timm.is_model(name) else FALLBACK_ARCHITECTURE


def timm_vit_export(config: dict[str, Any], state: dict[str, Tensor], preprocess: dict[str, Any] | None,
                    class_names: Sequence[str] | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """timm's `config.json` document and `VisionTransformer` state dict for an mmkit ViT.

    Args:
        config: the ViT's constructor arguments (`ViT.config`).
        state: its state dict.
        preprocess: its eval preprocessing (`ViT.preprocess`, mmkit's `EVAL_KEYS`; None: ImageNet's defaults, as
            `EvalTransform`'s), written as timm's pretrained_cfg (input_size, mean, std, interpolation, crop_pct,
            crop_mode).
        class_names: the head's labels, one per class (timm's `label_names`), or None.

    Raises:
        WeightsError: a setting timm's ViT cannot express (a norm eps other than 1e-6, another activation, a
            resize mode timm lacks), or class names that do not match the head.
    """
    from mmkit.data.transforms import eval_transform

    where = f"mmkit ViT (dim {config['dim']}, depth {config['depth']})"
    if config.get("norm_eps", TIMM_NORM_EPS) != TIMM_NORM_EPS:
        raise WeightsError(f"{where}: timm's ViT normalises with eps {TIMM_NORM_EPS}, this model with "
                           f"{config['norm_eps']}")
    if config.get("act_layer", "gelu") not in TIMM_ACTIVATIONS:
        raise WeightsError(f"{where}: activation {config['act_layer']!r} is not one timm's ViT builds by name "
                           f"({', '.join(TIMM_ACTIVATIONS)})")
    fields = eval_transform({**(preprocess or {}), "image_size": config["image_size"]})  # its defaults: timm's
    crop_modes = {mine: theirs for theirs, mine in CROP_MODES.items()}
    if fields.resize_mode not in crop_modes:
        raise WeightsError(f"{where}: resize_mode {fields.resize_mode!r} has no timm crop mode")
    if class_names is not None and len(class_names) != config["num_classes"]:
        raise WeightsError(f"{where}: {len(class_names)} class names for a {config['num_classes']}-class head")
    global_pool = config.get("global_pool", "token")
    fc_norm = config.get("fc_norm")
    model_args = dict(
        img_size=config["image_size"], patch_size=config["patch_size"], in_chans=config.get("in_chans", 3),
        embed_dim=config["dim"], depth=config["depth"], num_heads=config["num_heads"],
        mlp_ratio=config.get("mlp_ratio", 4.0), qkv_bias=config.get("qkv_bias", True),
        class_token=config.get("class_token", True), global_pool=global_pool,
        fc_norm=global_pool == "avg" if fc_norm is None else fc_norm, pre_norm=config.get("pre_norm", False),
        act_layer=config.get("act_layer", "gelu"), drop_path_rate=config.get("drop_path_rate", 0.0))
    size = config["image_size"]
    pretrained_cfg = dict(
        input_size=[model_args["in_chans"], size, size], fixed_input_size=True,
        interpolation=fields.interpolation, crop_pct=float(fields.crop_pct), crop_mode=crop_modes[fields.resize_mode],
        mean=[float(v) for v in fields.mean], std=[float(v) for v in fields.std], num_classes=config["num_classes"],
        pool_size=None, first_conv="patch_embed.proj", classifier="head", custom_load=False,
        **({"label_names": list(class_names)} if class_names is not None else {}))
    doc = {"architecture": architecture_name(config), "num_classes": config["num_classes"],
           "num_features": config["dim"], "global_pool": global_pool, "model_args": model_args,
           "pretrained_cfg": pretrained_cfg}
    return doc, remap(state, [(dst, src) for src, dst in VIT_KEYS], where)
