"""Convert Hugging Face transformers `T5ForConditionalGeneration` checkpoints (T5 v1.0, v1.1,
Flan-T5) into the constructor config and state dict of `mmkit.models.T5`. A pure converter:
it never imports mmkit.models.

Each stack's relative position bias lives in its first layer's self-attention in transformers
and once per stack in mmkit; q/k/v are fused as for Marian (`weights.hf.fuse_projections`),
without biases.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from mmkit.weights.config_check import check_fields
from mmkit.weights.hf import config_file, fuse_projections, hf_source
from mmkit.weights.keymap import remap
from mmkit.weights.native import Converted, WeightsError

log = logging.getLogger(__name__)


def _stack_keys(side: str, ff: int) -> list[tuple[str, str | None]]:
    src, dst = f"{side}.block.{{i}}.layer.", f"{side}.blocks.{{i}}."
    rules = [
        (src + "0.SelfAttention.relative_attention_bias.weight", None),  # only block 0 has it: see T5_KEYS
        (src + "0.SelfAttention.o.weight", dst + "attn.proj.weight"),
        (src + "0.SelfAttention.{p}.weight", dst + "attn.qkv.{p}.weight"),
        (src + "0.layer_norm.weight", dst + "norm1.weight"),
        (src + f"{ff}.DenseReluDense.wi.weight", dst + "mlp.fc1.weight"),
        (src + f"{ff}.DenseReluDense.wi_0.weight", dst + "mlp.fc1_g.weight"),
        (src + f"{ff}.DenseReluDense.wi_1.weight", dst + "mlp.fc1_x.weight"),
        (src + f"{ff}.DenseReluDense.wo.weight", dst + "mlp.fc2.weight"),
        (src + f"{ff}.layer_norm.weight", dst + "norm2.weight"),
        (f"{side}.final_layer_norm.weight", f"{side}.norm.weight"),
    ]
    if side == "decoder":
        rules += [
            (src + "1.EncDecAttention.relative_attention_bias.weight", None),  # unused by transformers too
            (src + "1.EncDecAttention.q.weight", dst + "cross_attn.q.weight"),
            (src + "1.EncDecAttention.o.weight", dst + "cross_attn.proj.weight"),
            (src + "1.EncDecAttention.{p}.weight", dst + "cross_attn.kv.{p}.weight"),
            (src + "1.layer_norm.weight", dst + "norm_cross.weight"),
        ]
    return rules


T5_KEYS = [
    ("shared.weight", "tok_embed.weight"),
    ("encoder.embed_tokens.weight", None),  # equal to shared (checked in `_split_head`)
    ("decoder.embed_tokens.weight", None),
    ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "encoder_bias.weight"),
    ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "decoder_bias.weight"),
    *_stack_keys("encoder", 1),
    *_stack_keys("decoder", 2),
]


# The transformers fields the conversion reads, with their types (sizes positive: config_check's rules;
# a flag may be null, read as false).
_HF_REQUIRED = ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_layers")
_HF_FIELDS = {**{name: int for name in _HF_REQUIRED}, "num_decoder_layers": Optional[int],
              "relative_attention_num_buckets": int, "relative_attention_max_distance": int, "dropout_rate": float,
              "layer_norm_epsilon": float, "feed_forward_proj": str, "dense_act_fn": Optional[str],
              "tie_word_embeddings": Optional[bool], "scale_decoder_outputs": Optional[bool]}


def _activation(cfg: dict[str, Any], where: str) -> str:
    kind = cfg.get("feed_forward_proj", "relu")
    names = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
    gated = kind.startswith("gated-")
    act = cfg.get("dense_act_fn") or ("gelu_new" if kind == "gated-gelu" else kind.removeprefix("gated-"))
    if act not in names:
        raise WeightsError(f"{where}: T5 feed_forward_proj={kind!r} uses an activation outside mmkit ({act!r})")
    return ("gated-" if gated else "") + names[act]


def t5_config(cfg: dict[str, Any], state: dict[str, Tensor], source: str) -> dict[str, Any]:
    """T5 constructor arguments for a T5Config (its fields checked first; and its weights: is the head tied?)."""
    where = config_file(source)
    if cfg.get("model_type") not in ("t5", "mt5"):
        raise WeightsError(f"{where}: expected a T5 config, got model_type={cfg.get('model_type')!r}")
    check_fields(cfg, _HF_FIELDS, where, required=_HF_REQUIRED)
    head, shared = state.get("lm_head.weight"), state.get("shared.weight")
    tied = head is None or (shared is not None and torch.equal(head, shared))
    # transformers >= 5 records the v1.0 output rescaling as scale_decoder_outputs; older configs
    # said it with tie_word_embeddings (False for v1.1/Flan, which neither tie nor rescale). mT5 never
    # rescales (MT5ForConditionalGeneration has no such step), whatever its config says of tying: transformers 5
    # saves a fine-tuned mT5 with tie_word_embeddings true and no scale field.
    scale = cfg["model_type"] != "mt5" and cfg.get("scale_decoder_outputs", cfg.get("tie_word_embeddings", True))
    buckets = cfg.get("relative_attention_num_buckets", 32)
    distance = cfg.get("relative_attention_max_distance", 128)
    if distance <= buckets // 2:  # the decoder's exact range: log(max_distance / exact) <= 0 indexes past the table
        raise WeightsError(f"{where}: relative_attention_max_distance {distance} must exceed half of "
                           f"relative_attention_num_buckets ({buckets}): T5's buckets past the exact range are "
                           "undefined then (transformers fails on such a model too)")
    return dict(
        vocab_size=cfg["vocab_size"], dim=cfg["d_model"], num_heads=cfg["num_heads"], head_dim=cfg["d_kv"],
        mlp_dim=cfg["d_ff"], encoder_depth=cfg["num_layers"],
        decoder_depth=cfg.get("num_decoder_layers") or cfg["num_layers"],
        num_buckets=buckets, max_distance=distance, dropout=cfg.get("dropout_rate", 0.1),
        feed_forward=_activation(cfg, where), tie_output=bool(tied), scale_output=bool(scale),
        norm_eps=cfg.get("layer_norm_epsilon", 1e-6),  # T5Config's default
    )


def _split_head(state: dict[str, Tensor], tied: bool, source: str) -> dict[str, Tensor]:
    shared = state.get("shared.weight")
    if shared is None:
        raise WeightsError(f"{source}: no shared.weight (token embedding)")
    for key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        if key in state and not torch.equal(state[key], shared):
            raise WeightsError(f"{source}: {key} differs from shared.weight; mmkit's T5 shares them")
    state = dict(state)
    head = state.pop("lm_head.weight", None)
    if not tied:
        state["head.weight"] = head
    return state


def t5_from_hf(model_or_dir: nn.Module | str | Path) -> Converted:
    """Convert a `T5ForConditionalGeneration` (an instance, or a local directory with
    config.json + weights) for `mmkit.models.T5` (see `T5.from_hf`).

    Returns:
        T5 constructor config and state dict; training is the instance's mode, False for a directory.

    Raises:
        WeightsError: unsupported variants and tensors no rule accounts for (names listed).
    """
    classes = ("T5ForConditionalGeneration", "MT5ForConditionalGeneration")
    # T5WithLMHeadModel: the class's old name, which the original t5-small ... t5-11b config.json files still say
    cfg, state, source, training = hf_source(model_or_dir, classes, also=("T5WithLMHeadModel",))
    config = t5_config(cfg, state, source)
    state = _split_head(state, config["tie_output"], source)
    rules = T5_KEYS + [("head.weight", "head.weight")]
    mapped = fuse_projections(remap(state, rules, source), source, biasless=())
    log.info("imported T5 (%s+%s layers, dim %s, %s) from %s", config["encoder_depth"], config["decoder_depth"],
             config["dim"], config["feed_forward"], source)
    return Converted(config, mapped, source, training)
