"""Convert Hugging Face transformers GPT-2 checkpoints into the config and state dict of
`mmkit.models.GPT` (built by `GPT.from_hf`; this converter never imports mmkit.models).

GPT-2's `Conv1D` layers store weights as (in, out), the transpose of `nn.Linear`; that is the
one named transform. `c_attn` is already a fused q|k|v projection in mmkit's order, so it maps
straight onto `attn.qkv`. The architecture is read from the Hugging Face config; features the
plain GPT does not implement are refused, not approximated.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from torch import Tensor, nn

from mmkit.weights.config_check import check_divisible, check_fields
from mmkit.weights.hf import check_tied, config_file, hf_source
from mmkit.weights.keymap import remap
from mmkit.weights.native import Converted, WeightsError

log = logging.getLogger(__name__)

_GPT2_BASE_KEYS = [
    ("wte.weight", "tok_embed.weight"),
    ("wpe.weight", "pos_embed.weight"),
    ("h.{i}.ln_1.{p}", "decoder.blocks.{i}.norm1.{p}"),
    ("h.{i}.attn.c_attn.{p}", "decoder.blocks.{i}.attn.qkv.{p}"),
    ("h.{i}.attn.c_proj.{p}", "decoder.blocks.{i}.attn.proj.{p}"),
    ("h.{i}.ln_2.{p}", "decoder.blocks.{i}.norm2.{p}"),
    ("h.{i}.mlp.c_fc.{p}", "decoder.blocks.{i}.mlp.fc1.{p}"),
    ("h.{i}.mlp.c_proj.{p}", "decoder.blocks.{i}.mlp.fc2.{p}"),
    ("ln_f.{p}", "decoder.norm.{p}"),
    # Causal-mask buffers saved by older transformers versions (the original hub files).
    ("h.{i}.attn.bias", None),
    ("h.{i}.attn.masked_bias", None),
]
# `GPT2LMHeadModel.state_dict()` prefixes "transformer."; the original hub files do not.
GPT2_KEYS = [(prefix + src, dst) for prefix in ("transformer.", "") for src, dst in _GPT2_BASE_KEYS] + [
    ("lm_head.weight", None),  # tied to wte: checked equal by `check_tied`, then dropped
]
_CONV1D_TARGETS = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# The transformers fields the conversion reads, with their types (sizes positive: config_check's rules;
# a flag may be null, read as false).
_HF_REQUIRED = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
_HF_FIELDS = {**{name: int for name in _HF_REQUIRED}, "n_inner": Optional[int], "layer_norm_epsilon": float,
              **{rate: float for rate in ("embd_pdrop", "attn_pdrop", "resid_pdrop")},
              "activation_function": str, **{flag: Optional[bool] for flag in (
                  "scale_attn_by_inverse_layer_idx", "scale_attn_weights", "add_cross_attention",
                  "tie_word_embeddings")}}


def conv1d_to_linear(w: Tensor) -> Tensor:
    """transformers `Conv1D` weight (in, out) -> `nn.Linear` weight (out, in)."""
    return w.t().contiguous()


def gpt2_config(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """mmkit's GPT config of transformers config `cfg` (from `source`), its fields checked first."""
    where = config_file(source)
    if cfg.get("model_type", "gpt2") != "gpt2":
        raise WeightsError(f"{where}: expected a GPT-2 config, got model_type={cfg.get('model_type')!r}")
    check_fields(cfg, _HF_FIELDS, where, required=_HF_REQUIRED)
    check_divisible(cfg, "n_embd", "n_head", where)
    act = cfg.get("activation_function", "gelu_new")  # GPT2Config's default
    unsupported = {
        f"activation_function={act!r}": act not in _GELU_TANH,
        "scale_attn_by_inverse_layer_idx": cfg.get("scale_attn_by_inverse_layer_idx", False),
        "scale_attn_weights=False": not cfg.get("scale_attn_weights", True),
        "add_cross_attention": cfg.get("add_cross_attention", False),
        "untied lm_head (tie_word_embeddings=False)": not cfg.get("tie_word_embeddings", True),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise WeightsError(f"{where}: GPT-2 variant uses features outside mmkit's GPT: {', '.join(bad)}")
    dim = cfg["n_embd"]
    return dict(
        vocab_size=cfg["vocab_size"], max_len=cfg["n_positions"], dim=dim, depth=cfg["n_layer"],
        num_heads=cfg["n_head"], mlp_ratio=(cfg.get("n_inner") or 4 * dim) / dim,
        norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
        # GPT2Config's defaults: 0.1 each (training only, as in transformers)
        dropout=cfg.get("embd_pdrop", 0.1), attn_dropout=cfg.get("attn_pdrop", 0.1),
        resid_dropout=cfg.get("resid_pdrop", 0.1),
    )


def gpt2_from_hf(model_or_dir: nn.Module | str | Path) -> Converted:
    """Convert a transformers `GPT2LMHeadModel` (an instance, or a local checkpoint directory
    holding its config.json and weights) for `mmkit.models.GPT` (see `GPT.from_hf`).

    Returns:
        GPT config and state dict; training is the instance's mode, False for a directory.

    Raises:
        WeightsError: unsupported GPT-2 variants, and checkpoints with missing, unexpected or
            wrongly shaped tensors (the message names the file and the keys).
    """
    cfg, state, source, training = hf_source(model_or_dir, ("GPT2LMHeadModel",), also=("GPT2Model",))
    config = gpt2_config(cfg, source)
    check_tied(state, "lm_head.weight", ("transformer.wte.weight", "wte.weight"), source, "GPT")
    transforms = {f"decoder.blocks.{i}.{t}": conv1d_to_linear for i in range(config["depth"]) for t in _CONV1D_TARGETS}
    mapped = remap(state, GPT2_KEYS, source, transforms)
    log.info("imported GPT-2 (%s layers, dim %s) from %s", cfg["n_layer"], cfg["n_embd"], source)
    return Converted(config, mapped, source, training)


def gpt2_from_mmkit(config: dict[str, Any], state: dict[str, Tensor],
                    eos_token_id: int | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The inverse of `gpt2_from_hf`: an mmkit `GPT`'s config and state dict as a transformers
    `GPT2Config` dict and `GPT2LMHeadModel` state dict (the same function, e.g. a reference twin of
    a trained export for `mmkit bench text`; in training mode too, dropout included, but for stochastic depth,
    which GPT-2 lacks).
    `eos_token_id`: the tokenizer's end of text, GPT-2's bos and eos (default: GPT-2's 50256 in its own
    vocabulary of 50257, else none: GPT2Config's 50256 lies outside a smaller vocabulary, so `generate` could
    never stop).

    Raises:
        WeightsError: configurations GPT-2 cannot express (no q/k/v bias, an untied output head).
    """
    source = f"mmkit GPT (dim {config['dim']}, depth {config['depth']})"
    if not config.get("qkv_bias", True):
        raise WeightsError(f"{source}: GPT-2 always has q/k/v biases (qkv_bias=False)")
    if any(k.startswith("head.") for k in state):
        raise WeightsError(f"{source}: GPT-2 ties its output head to the token embedding")
    dim = config["dim"]
    hf_config = dict(model_type="gpt2", vocab_size=config["vocab_size"], n_positions=config["max_len"], n_embd=dim,
                     n_layer=config["depth"], n_head=config["num_heads"], n_inner=int(dim * config["mlp_ratio"]),
                     layer_norm_epsilon=config["norm_eps"], activation_function="gelu_new", tie_word_embeddings=True,
                     embd_pdrop=config.get("dropout", 0.0), attn_pdrop=config.get("attn_dropout", 0.0),
                     resid_pdrop=config.get("resid_dropout", 0.0))
    if eos_token_id is None and config["vocab_size"] == 50257:
        eos_token_id = 50256
    hf_config.update(bos_token_id=eos_token_id, eos_token_id=eos_token_id)
    rules = [(dst, "transformer." + src) for src, dst in _GPT2_BASE_KEYS if dst is not None]
    transforms = {f"transformer.h.{i}.{src}.weight": conv1d_to_linear  # the transpose is its own inverse
                  for i in range(config["depth"]) for src in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    mapped = remap(state, rules, source, transforms)
    mapped["lm_head.weight"] = mapped["transformer.wte.weight"]
    return hf_config, mapped
