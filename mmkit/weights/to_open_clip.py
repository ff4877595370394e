"""Convert an `mmkit.models.CLIP` (config, state dict, eval preprocessing) into an open_clip model folder: the
`open_clip_config.json` (model_cfg + preprocess_cfg) and `open_clip_model.safetensors` that
`open_clip.create_model_and_transforms("local-dir:DIR")` (or "hf-hub:ORG/NAME" once uploaded) builds and loads as
an open_clip `CLIP` with the same image and text embeddings and logit scale, its eval transform the model's
preprocessing, and that `open_clip.get_tokenizer("local-dir:DIR")` tokenizes for with CLIP's BPE. The inverse of
`from_open_clip` for the CLIP layout (its key map read backwards); this converter never imports mmkit.models.

open_clip's CLIP builds a fixed layout: a class-token image tower with a norm before the blocks and no patch
embedding bias, a projection on both towers, CLIP's BPE of 49,408 tokens, one activation kind for both towers. A
model outside it (a SigLIP-style tower with attention pooling, another vocabulary) is refused by name before
anything is written. Stochastic depth (`drop_path_rate`) is training only and not carried: open_clip's CLIP has
none.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from mmkit.weights.from_open_clip import SCALAR_KEYS, VISUAL_KEYS, _block_rules
from mmkit.weights.keymap import remap
from mmkit.weights.native import WeightsError

OPEN_CLIP_CONFIG_NAME = "open_clip_config.json"
OPEN_CLIP_WEIGHTS_NAME = "open_clip_model.safetensors"
CLIP_BPE_VOCAB = 49408  # open_clip's default tokenizer: CLIP's BPE (`SimpleTokenizer`)
OPEN_CLIP_NORM_EPS = 1e-5  # open_clip's LayerNorm default: other values go in norm_kwargs
# mmkit activation -> (quick_gelu flag, act_kwargs) of an open_clip tower
ACTIVATIONS = {"gelu": (False, None), "gelu_tanh": (False, {"approximate": "tanh"}), "quick_gelu": (True, None)}


def _tower_common(cfg: dict[str, Any], where: str) -> tuple[bool, dict[str, Any]]:
    """(quick_gelu, the tower's act_kwargs / norm_kwargs entries) of a tower config; an activation open_clip does
    not build is refused."""
    act = cfg.get("act_layer", "gelu")
    if act not in ACTIVATIONS:
        raise WeightsError(f"{where}: activation {act!r} is not one open_clip's CLIP builds ({', '.join(ACTIVATIONS)})")
    quick, act_kwargs = ACTIVATIONS[act]
    eps = cfg.get("norm_eps", OPEN_CLIP_NORM_EPS)
    extra = {**({"act_kwargs": act_kwargs} if act_kwargs else {}),
             **({"norm_kwargs": {"eps": eps}} if eps != OPEN_CLIP_NORM_EPS else {})}
    return quick, extra


def open_clip_model_cfg(config: dict[str, Any]) -> dict[str, Any]:
    """open_clip's model_cfg (`CLIP(**model_cfg)`) of an mmkit CLIP's constructor arguments (`CLIP.config`).

    Raises:
        WeightsError: a layout open_clip's CLIP does not build (named).
    """
    visual, text = config["visual"], config["text"]
    where = f"mmkit CLIP (image dim {visual['dim']}, text dim {text['dim']})"
    problems = {
        "attention pooling in the image tower (SigLIP-style: global_pool='map')": visual.get("global_pool",
                                                                                          "token") != "token",
        "no norm before the image blocks (pre_norm=False: open_clip's patch embedding has no bias)":
            not visual.get("pre_norm", True),
        "no image projection (proj=False)": not visual.get("proj", True),
        f"a vocabulary of {text.get('vocab_size')} tokens (open_clip tokenizes with CLIP's BPE of {CLIP_BPE_VOCAB})":
            text.get("vocab_size", CLIP_BPE_VOCAB) != CLIP_BPE_VOCAB,
        f"an image width {visual['dim']} not divisible by its {visual['num_heads']} heads":
            visual["dim"] % visual["num_heads"] != 0,
    }
    bad = [k for k, v in problems.items() if v]
    if bad:
        raise WeightsError(f"{where}: outside open_clip's CLIP: {'; '.join(bad)}")
    quick_v, vision_extra = _tower_common(visual, f"{where} image tower")
    quick_t, text_extra = _tower_common(text, f"{where} text tower")
    if quick_v != quick_t:
        raise WeightsError(f"{where}: open_clip's CLIP uses quick_gelu in both towers or in neither")
    vision_cfg = dict(image_size=visual["image_size"], layers=visual["depth"], width=visual["dim"],
                      head_width=visual["dim"] // visual["num_heads"], mlp_ratio=visual.get("mlp_ratio", 4.0),
                      patch_size=visual["patch_size"], **vision_extra)
    text_cfg = dict(context_length=text["max_len"], vocab_size=text.get("vocab_size", CLIP_BPE_VOCAB),
                    width=text["dim"], heads=text["num_heads"], layers=text["depth"],
                    mlp_ratio=text.get("mlp_ratio", 4.0), **text_extra)
    if not text.get("causal", True):
        text_cfg["no_causal_mask"] = True
    if text.get("pool", "argmax") != "argmax":
        text_cfg["pool_type"] = text["pool"]
    if text.get("proj_bias", False):
        text_cfg.update(proj_type="linear", proj_bias=True)
    cfg = dict(embed_dim=visual["embed_dim"], quick_gelu=quick_v, vision_cfg=vision_cfg, text_cfg=text_cfg,
               init_logit_scale=config.get("init_logit_scale"))
    if config.get("init_logit_bias") is not None:
        cfg["init_logit_bias"] = config["init_logit_bias"]
    return cfg


def _transpose(t: Tensor) -> Tensor:
    """nn.Linear's (out, in) weight -> open_clip's `x @ proj` parameter (in, out)."""
    return t.t().contiguous()


def open_clip_export(config: dict[str, Any], state: dict[str, Tensor],
                     preprocess: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """open_clip's `open_clip_config.json` document (model_cfg, preprocess_cfg) and `CLIP` state dict for an mmkit
    CLIP.

    Args:
        config: the CLIP's constructor arguments (`CLIP.config`).
        state: its state dict.
        preprocess: its eval preprocessing (`CLIP.preprocess`, mmkit's `EVAL_KEYS`; None: OpenAI CLIP's, as
            `EvalTransform`'s CLIP defaults), as open_clip's preprocess_cfg (size, mean, std, interpolation,
            resize_mode).

    Raises:
        WeightsError: a layout open_clip's CLIP does not build, a preprocessing its transform cannot give (a
            crop_pct other than 1: open_clip crops at the resized size), or another tokenizer than CLIP's BPE.
    """
    from mmkit.data.transforms import CLIP_DEFAULTS, eval_transform

    from mmkit.data.text import uses_clip_bpe

    model_cfg = open_clip_model_cfg(config)
    arch = (preprocess or {}).get("open_clip_tokenizer")  # an import's open_clip architecture: its tokenizer
    if arch and not uses_clip_bpe(arch):
        raise WeightsError(f"mmkit CLIP: tokenizes as open_clip's {arch!r}, not with CLIP's BPE, which a local "
                           "open_clip folder's tokenizer is")
    size = config["visual"]["image_size"]
    fields = eval_transform({**(preprocess or {}), "image_size": size}, CLIP_DEFAULTS)
    if fields.crop_pct != 1.0:
        raise WeightsError(f"mmkit CLIP: crop_pct {fields.crop_pct} has no open_clip preprocessing (open_clip "
                           "resizes to the model's size and crops there: crop_pct 1)")
    preprocess_cfg = dict(size=size, mode="RGB", mean=[float(v) for v in fields.mean],
                          std=[float(v) for v in fields.std], interpolation=fields.interpolation,
                          resize_mode=fields.resize_mode, fill_color=0)
    linear = config["text"].get("proj_bias", False)
    rules = [(dst, src) for src, dst in VISUAL_KEYS] + [
        ("text.tok_embed.weight", "token_embedding.weight"),
        ("text.pos_embed.weight", "positional_embedding"),
        *[(dst, src) for src, dst in _block_rules("transformer.resblocks", "text.decoder.blocks")],
        ("text.decoder.norm.{p}", "ln_final.{p}"),
        ("text.proj.{p}", "text_projection.{p}") if linear else ("text.proj.weight", "text_projection"),
        *[(dst, src) for src, dst in SCALAR_KEYS],
    ]
    transforms = {"visual.class_embedding": lambda t: t.reshape(-1),  # (1, 1, dim) -> (dim,)
                  "visual.positional_embedding": lambda t: t.reshape(t.shape[-2:]),  # (1, 1 + N, dim) -> (1 + N, dim)
                  "visual.proj": _transpose, **({} if linear else {"text_projection": _transpose})}
    mapped = remap(state, rules, "mmkit CLIP", transforms)
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, mapped
