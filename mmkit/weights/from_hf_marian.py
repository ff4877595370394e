"""Convert Hugging Face transformers `MarianMTModel` checkpoints (the opus-mt models) into the
constructor config and state dict of `mmkit.models.Seq2Seq`. A pure converter: it never
imports mmkit.models.

Separate q/k/v projections land on staging names (`....qkv.q.weight`) that
`weights.hf.fuse_projections` concatenates into mmkit's fused `qkv` (self-attention) and `kv`
(cross-attention). The static sinusoidal tables are dropped (mmkit recomputes the same numbers);
the shared, encoder, decoder and (tied) output embeddings are checked identical and kept once.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from mmkit.weights.config_check import check_divisible, check_fields, check_token_ids
from mmkit.weights.hf import config_file, fuse_projections, hf_source
from mmkit.weights.keymap import remap
from mmkit.weights.native import Converted, WeightsError

log = logging.getLogger(__name__)

_ENC, _DEC = "model.encoder.layers.{i}.", "model.decoder.layers.{i}."
_E, _D = "encoder.blocks.{i}.", "decoder.blocks.{i}."
MARIAN_KEYS = [
    ("model.shared.weight", "tok_embed.weight"),
    ("model.encoder.embed_tokens.weight", None),  # equal to model.shared (checked in `_check_shared`)
    ("model.decoder.embed_tokens.weight", None),
    ("model.encoder.embed_positions.weight", None),  # fixed sinusoids, recomputed by Seq2Seq
    ("model.decoder.embed_positions.weight", None),
    ("final_logits_bias", "logits_bias"),
    (_ENC + "self_attn.out_proj.{p}", _E + "attn.proj.{p}"),  # before the q/k/v rules that would match it
    (_ENC + "self_attn.{p}_proj.weight", _E + "attn.qkv.{p}.weight"),
    (_ENC + "self_attn.{p}_proj.bias", _E + "attn.qkv.{p}.bias"),
    (_ENC + "self_attn_layer_norm.{p}", _E + "norm1.{p}"),
    (_ENC + "fc1.{p}", _E + "mlp.fc1.{p}"),
    (_ENC + "fc2.{p}", _E + "mlp.fc2.{p}"),
    (_ENC + "final_layer_norm.{p}", _E + "norm2.{p}"),
    (_DEC + "self_attn.out_proj.{p}", _D + "attn.proj.{p}"),
    (_DEC + "self_attn.{p}_proj.weight", _D + "attn.qkv.{p}.weight"),
    (_DEC + "self_attn.{p}_proj.bias", _D + "attn.qkv.{p}.bias"),
    (_DEC + "self_attn_layer_norm.{p}", _D + "norm1.{p}"),
    (_DEC + "encoder_attn.out_proj.{p}", _D + "cross_attn.proj.{p}"),
    (_DEC + "encoder_attn.q_proj.{p}", _D + "cross_attn.q.{p}"),
    (_DEC + "encoder_attn.{p}_proj.weight", _D + "cross_attn.kv.{p}.weight"),
    (_DEC + "encoder_attn.{p}_proj.bias", _D + "cross_attn.kv.{p}.bias"),
    (_DEC + "encoder_attn_layer_norm.{p}", _D + "norm_cross.{p}"),
    (_DEC + "fc1.{p}", _D + "mlp.fc1.{p}"),
    (_DEC + "fc2.{p}", _D + "mlp.fc2.{p}"),
    (_DEC + "final_layer_norm.{p}", _D + "norm2.{p}"),
]
_ACTIVATIONS = {"swish": "silu", "silu": "silu", "relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh"}
# The transformers fields the conversion reads, with their types (sizes positive: config_check's rules;
# a flag may be null, read as false).
_HF_REQUIRED = ("vocab_size", "max_position_embeddings", "d_model", "encoder_layers", "decoder_layers",
                "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim")
_HF_FIELDS = {**{name: int for name in _HF_REQUIRED}, "activation_function": str, "pad_token_id": Optional[int],
              **{rate: float for rate in ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop",
                                          "decoder_layerdrop")},
              **{flag: Optional[bool] for flag in (
                  "scale_embedding", "tie_word_embeddings", "share_encoder_decoder_embeddings", "normalize_before")}}


def marian_config(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """Seq2Seq constructor arguments for a MarianConfig (its fields checked first); features Seq2Seq
    lacks are refused."""
    where = config_file(source)
    if cfg.get("model_type") != "marian":
        raise WeightsError(f"{where}: expected a MarianMT config, got model_type={cfg.get('model_type')!r}")
    check_fields(cfg, _HF_FIELDS, where, required=_HF_REQUIRED)
    check_divisible(cfg, "d_model", "encoder_attention_heads", where)
    check_token_ids(cfg, ["pad_token_id"], cfg["vocab_size"], where)
    act = cfg.get("activation_function", "gelu")
    dim = cfg["d_model"]
    unsupported = {
        f"activation_function={act!r}": act not in _ACTIVATIONS,
        "different encoder/decoder attention heads": cfg["encoder_attention_heads"] != cfg["decoder_attention_heads"],
        "different encoder/decoder ffn sizes": cfg["encoder_ffn_dim"] != cfg["decoder_ffn_dim"],
        "separate source/target vocabularies (share_encoder_decoder_embeddings=False)":
            not cfg.get("share_encoder_decoder_embeddings", True),
        "normalize_before (pre-norm Marian)": cfg.get("normalize_before", False),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise WeightsError(f"{where}: MarianMT variant uses features outside mmkit's Seq2Seq: {', '.join(bad)}")
    return dict(
        vocab_size=cfg["vocab_size"], max_len=cfg["max_position_embeddings"], dim=dim,
        encoder_depth=cfg["encoder_layers"], decoder_depth=cfg["decoder_layers"],
        num_heads=cfg["encoder_attention_heads"], mlp_ratio=cfg["encoder_ffn_dim"] / dim,
        # MarianConfig's defaults: only the residual branches and embeddings drop (transformers' opus-mt conversion
        # sets dropout 0.1 and leaves attention_dropout and activation_dropout at 0)
        dropout=cfg.get("dropout", 0.1), attn_dropout=cfg.get("attention_dropout", 0.0),
        activation_dropout=cfg.get("activation_dropout", 0.0), positions="halves", activation=_ACTIVATIONS[act],
        scale_embedding=bool(cfg.get("scale_embedding", False)), tie_output=bool(cfg.get("tie_word_embeddings", True)),
        logits_bias=True, pad_id=cfg.get("pad_token_id"),
        encoder_layerdrop=float(cfg.get("encoder_layerdrop", 0.0)),
        decoder_layerdrop=float(cfg.get("decoder_layerdrop", 0.0)),
    )


def special_tokens(cfg: dict[str, Any]) -> dict[str, int]:
    """Decoder start, end and padding ids of a MarianMT or T5 config."""
    return {"start_id": int(cfg["decoder_start_token_id"]), "eos_id": int(cfg["eos_token_id"]),
            "pad_id": int(cfg["pad_token_id"])}


def _check_shared(state: dict[str, Tensor], tie: bool, source: str, untied: bool = False) -> dict[str, Tensor]:
    """The state with one shared embedding, refusing copies that differ from it; `untied`: the config says
    tie_word_embeddings false (transformers 5 then unties all three embeddings), named in the refusal."""
    shared = state.get("model.shared.weight")
    if shared is None:  # some saves keep only the encoder copy
        shared = state.get("model.encoder.embed_tokens.weight")
        if shared is None:
            raise WeightsError(f"{source}: no model.shared.weight (token embedding)")
        state = {**state, "model.shared.weight": shared}
    copies = ["model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"]
    copies += ["lm_head.weight"] if tie else []
    for key in copies:
        if key in state and not torch.equal(state[key], shared):
            why = " (config.json: tie_word_embeddings false)" if untied else ""
            raise WeightsError(f"{source}: {key} differs from model.shared.weight{why}; mmkit's Seq2Seq shares them")
    state = {k: v for k, v in state.items() if not (tie and k == "lm_head.weight")}
    if "final_logits_bias" in state:
        state["final_logits_bias"] = state["final_logits_bias"].reshape(-1)
    return state


def marian_from_hf(model_or_dir: nn.Module | str | Path) -> Converted:
    """Convert a `MarianMTModel` (an instance, or a local directory with config.json + weights) for
    `mmkit.models.Seq2Seq` (see `Seq2Seq.from_hf`).

    Returns:
        Seq2Seq constructor config and state dict; training is the instance's mode, False for a directory.

    Raises:
        WeightsError: unsupported variants and tensors no rule accounts for (names listed).
    """
    cfg, state, source, training = hf_source(model_or_dir, ("MarianMTModel",))
    config = marian_config(cfg, source)
    state = _check_shared(state, config["tie_output"], source, cfg.get("tie_word_embeddings") is False)
    rules = MARIAN_KEYS + ([] if config["tie_output"] else [("lm_head.weight", "head.weight")])
    mapped = fuse_projections(remap(state, rules, source), source, biasless=())
    mapped.setdefault("logits_bias", torch.zeros(config["vocab_size"]))  # absent from older saves: zeros
    log.info("imported MarianMT (%s+%s layers, dim %s) from %s", config["encoder_depth"], config["decoder_depth"],
             config["dim"], source)
    return Converted(config, mapped, source, training)
