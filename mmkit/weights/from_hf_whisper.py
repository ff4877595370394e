"""Convert Hugging Face transformers Whisper checkpoints (`WhisperForConditionalGeneration`,
`WhisperModel`) into the config and state dict of `mmkit.models.Whisper` (built by
`Whisper.from_hf`; this converter never imports mmkit.models).

A declarative key map moves each tensor to its mmkit name; separate q/k/v projections land on
staging names (`....qkv.q.weight`) that one named transform, `hf.fuse_projections`, concatenates
into mmkit's fused `qkv` (self-attention) and `kv` (cross-attention). Whisper's k_proj has no
bias: its slice of the fused bias is zero, which is exact because softmax cancels a key bias.
The architecture is read from the HF config; features mmkit's Whisper lacks are refused. The training rates
(dropout, attention_dropout, activation_dropout, encoder/decoder_layerdrop) are imported. The alignment
heads of generation_config.json, where present, become `Whisper(alignment_heads=...)` (word timestamps).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from mmkit.weights.config_check import check_divisible, check_fields, read_json_object
from mmkit.weights.hf import FUSED, check_tied, config_file, fuse_projections, hf_source
from mmkit.weights.keymap import remap
from mmkit.weights.native import Converted, WeightsError

__all__ = ["FUSED", "WHISPER_KEYS", "checked_alignment_heads", "fuse_projections", "whisper_config",
           "whisper_from_hf"]

log = logging.getLogger(__name__)

_ENC = "encoder.layers.{i}."
_DEC = "decoder.layers.{i}."
_WHISPER_BASE_KEYS = [
    ("encoder.conv1.{p}", "stem.conv1.{p}"),
    ("encoder.conv2.{p}", "stem.conv2.{p}"),
    ("encoder.embed_positions.weight", "stem.pos_embed"),
    (_ENC + "self_attn_layer_norm.{p}", "encoder.blocks.{i}.norm1.{p}"),
    (_ENC + "self_attn.q_proj.{p}", "encoder.blocks.{i}.attn.qkv.q.{p}"),
    (_ENC + "self_attn.k_proj.weight", "encoder.blocks.{i}.attn.qkv.k.weight"),
    (_ENC + "self_attn.v_proj.{p}", "encoder.blocks.{i}.attn.qkv.v.{p}"),
    (_ENC + "self_attn.out_proj.{p}", "encoder.blocks.{i}.attn.proj.{p}"),
    (_ENC + "final_layer_norm.{p}", "encoder.blocks.{i}.norm2.{p}"),
    (_ENC + "fc1.{p}", "encoder.blocks.{i}.mlp.fc1.{p}"),
    (_ENC + "fc2.{p}", "encoder.blocks.{i}.mlp.fc2.{p}"),
    ("encoder.layer_norm.{p}", "encoder.norm.{p}"),
    ("decoder.embed_tokens.weight", "tok_embed.weight"),
    ("decoder.embed_positions.weight", "pos_embed.weight"),
    (_DEC + "self_attn_layer_norm.{p}", "decoder.blocks.{i}.norm1.{p}"),
    (_DEC + "self_attn.q_proj.{p}", "decoder.blocks.{i}.attn.qkv.q.{p}"),
    (_DEC + "self_attn.k_proj.weight", "decoder.blocks.{i}.attn.qkv.k.weight"),
    (_DEC + "self_attn.v_proj.{p}", "decoder.blocks.{i}.attn.qkv.v.{p}"),
    (_DEC + "self_attn.out_proj.{p}", "decoder.blocks.{i}.attn.proj.{p}"),
    (_DEC + "encoder_attn_layer_norm.{p}", "decoder.blocks.{i}.norm_cross.{p}"),
    (_DEC + "encoder_attn.q_proj.{p}", "decoder.blocks.{i}.cross_attn.q.{p}"),
    (_DEC + "encoder_attn.k_proj.weight", "decoder.blocks.{i}.cross_attn.kv.k.weight"),
    (_DEC + "encoder_attn.v_proj.{p}", "decoder.blocks.{i}.cross_attn.kv.v.{p}"),
    (_DEC + "encoder_attn.out_proj.{p}", "decoder.blocks.{i}.cross_attn.proj.{p}"),
    (_DEC + "final_layer_norm.{p}", "decoder.blocks.{i}.norm2.{p}"),
    (_DEC + "fc1.{p}", "decoder.blocks.{i}.mlp.fc1.{p}"),
    (_DEC + "fc2.{p}", "decoder.blocks.{i}.mlp.fc2.{p}"),
    ("decoder.layer_norm.{p}", "decoder.norm.{p}"),
]
# `WhisperForConditionalGeneration` prefixes "model."; a saved `WhisperModel` does not.
WHISPER_KEYS = [(prefix + src, dst) for prefix in ("model.", "") for src, dst in _WHISPER_BASE_KEYS] + [
    ("proj_out.weight", None),  # tied to embed_tokens: checked equal by `check_tied`, then dropped
]
# The transformers fields the conversion reads: integers, sizes positive (config_check's rules).
_HF_REQUIRED = ("d_model", "num_mel_bins", "max_source_positions", "max_target_positions", "vocab_size",
                "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
                "encoder_ffn_dim", "decoder_ffn_dim")
# WhisperConfig's training rates (in [0, 1), config_check's rule; 0 when absent, its defaults) -> Whisper's
_HF_RATES = {"dropout": ("dropout", "resid_dropout"), "attention_dropout": ("attn_dropout",),
             "activation_dropout": ("activation_dropout",), "encoder_layerdrop": ("encoder_layerdrop",),
             "decoder_layerdrop": ("decoder_layerdrop",)}
_HF_FIELDS = {**{name: int for name in _HF_REQUIRED}, **{rate: float for rate in _HF_RATES}}


def whisper_config(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """mmkit's Whisper config of transformers config `cfg` (from `source`), its fields checked first."""
    where = config_file(source)
    if cfg.get("model_type") != "whisper":
        raise WeightsError(f"{where}: expected a Whisper config, got model_type={cfg.get('model_type')!r}")
    check_fields(cfg, _HF_FIELDS, where, required=_HF_REQUIRED)
    check_divisible(cfg, "d_model", "encoder_attention_heads", where)
    unsupported = {
        f"activation_function={cfg.get('activation_function')!r}": cfg.get("activation_function", "gelu") != "gelu",
        "scale_embedding": cfg.get("scale_embedding", False),
        "different encoder/decoder attention heads":
            cfg["encoder_attention_heads"] != cfg["decoder_attention_heads"],
        "different encoder/decoder ffn sizes": cfg["encoder_ffn_dim"] != cfg["decoder_ffn_dim"],
        "untied proj_out (tie_word_embeddings=False)": not cfg.get("tie_word_embeddings", True),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise WeightsError(f"{where}: Whisper variant uses features outside mmkit's Whisper: {', '.join(bad)}")
    dim = cfg["d_model"]
    return dict(
        n_mels=cfg["num_mel_bins"], n_audio_ctx=cfg["max_source_positions"], n_text_ctx=cfg["max_target_positions"],
        vocab_size=cfg["vocab_size"], dim=dim, encoder_depth=cfg["encoder_layers"],
        decoder_depth=cfg["decoder_layers"], num_heads=cfg["encoder_attention_heads"],
        mlp_ratio=cfg["encoder_ffn_dim"] / dim,
        # transformers drops where these say in training: an imported model fine-tunes as its reference does
        **{ours: float(cfg.get(field, 0.0)) for field, names in _HF_RATES.items() for ours in names},
    )


def checked_alignment_heads(heads: Any, config: dict[str, Any], where: str) -> list[list[int]] | None:
    """A checkpoint's "alignment_heads" ([decoder layer, head] pairs) for `Whisper(alignment_heads=...)`, or None
    when it names none; pairs outside the decoder's layers and heads are refused in one line."""
    if heads is None:
        return None
    depth, n_heads = config["decoder_depth"], config["num_heads"]
    if not (isinstance(heads, (list, tuple)) and heads and all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(type(x) is int for x in p)
            and 0 <= p[0] < depth and 0 <= p[1] < n_heads for p in heads)):
        raise WeightsError(f"{where}: 'alignment_heads' must be [layer, head] pairs within the {depth} decoder "
                           f"layers and {n_heads} heads, got {str(heads)[:80]}")
    return [list(p) for p in heads]


def _generation_heads(model_or_dir: nn.Module | str | Path, source: str, config: dict[str, Any]) -> Any:
    """The alignment heads of generation_config.json beside the weights (or of an instance's generation
    config); None when there is none or it names none."""
    if isinstance(model_or_dir, nn.Module):
        return getattr(getattr(model_or_dir, "generation_config", None), "alignment_heads", None)
    return json_heads(Path(source).parent / "generation_config.json")


def json_heads(path: Path) -> Any:
    """The "alignment_heads" field of a JSON file (transformers' generation_config.json, CTranslate2's
    config.json), or None where the file or the field is absent; a file that is not a JSON object is refused in one
    line."""
    if not path.is_file():
        return None
    return read_json_object(path).get("alignment_heads")


def whisper_from_hf(model_or_dir: nn.Module | str | Path) -> Converted:
    """Convert a transformers Whisper model (an instance, a local checkpoint directory with its
    config.json and weights, or a Hub repo id) for `mmkit.models.Whisper` (see `Whisper.from_hf`).

    Returns:
        Whisper config and state dict; training is the instance's mode, False for a directory / repo id.

    Raises:
        WeightsError: unsupported variants, failed downloads, and checkpoints with missing,
            unexpected or wrongly shaped tensors (the message names the file and the keys).
    """
    cfg, state, source, training = hf_source(
        model_or_dir, ("WhisperForConditionalGeneration", "WhisperModel"), hub=True)
    config = whisper_config(cfg, source)
    heads = checked_alignment_heads(_generation_heads(model_or_dir, source, config), config,
                                    f"{Path(source).parent / 'generation_config.json'}")
    if heads is not None:
        config["alignment_heads"] = heads
    check_tied(state, "proj_out.weight", ("model.decoder.embed_tokens.weight", "decoder.embed_tokens.weight"),
               source, "Whisper")
    mapped = fuse_projections(remap(state, WHISPER_KEYS, source), source)
    log.info("imported Whisper (%s+%s layers, dim %s, %s Mel bins) from %s", cfg["encoder_layers"],
             cfg["decoder_layers"], cfg["d_model"], cfg["num_mel_bins"], source)
    return Converted(config, mapped, source, training)
