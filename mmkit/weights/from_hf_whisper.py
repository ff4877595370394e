"""Import Hugging Face transformers Whisper checkpoints (`WhisperForConditionalGeneration`,
`WhisperModel`) into `mmkit.models.Whisper`.

A declarative key map moves each tensor to its mmkit name; separate q/k/v projections land on
staging names (`....qkv.q.weight`) that one named transform, `fuse_projections`, concatenates
into mmkit's fused `qkv` (self-attention) and `kv` (cross-attention). Whisper's k_proj has no
bias: its slice of the fused bias is zero, which is exact because softmax cancels a key bias.
The architecture is read from the HF config; features mmkit's Whisper lacks are refused.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmkit.models.whisper import Whisper
from mmkit.weights.from_hf import _read_hf_dir
from mmkit.weights.keymap import remap
from mmkit.weights.native import WeightsError, summarise_keys, load_state_dict_strict

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
    ("proj_out.weight", None),  # tied to embed_tokens: checked equal in `_check_tied`, then dropped
]
# Fused projection -> its parts in concatenation order; parts named in _BIASLESS have no bias
# in Whisper and contribute zeros to the fused bias (any other missing bias is an error).
FUSED = {"qkv": ("q", "k", "v"), "kv": ("k", "v")}
_BIASLESS = {"k"}
_STAGED = re.compile(r"(?P<base>.+\.(?P<fused>qkv|kv))\.(?P<part>q|k|v)\.(?P<p>weight|bias)\Z")


def fuse_projections(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Concatenate staged `<base>.<fused>.<part>.{weight,bias}` tensors into `<base>.<fused>.*`."""
    out: dict[str, Tensor] = {}
    groups: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        m = _STAGED.match(key)
        if m is None:
            out[key] = value
        else:
            groups.setdefault((m["base"], m["fused"]), {})[f"{m['part']}.{m['p']}"] = value
    missing = []
    for (base, fused), parts in groups.items():
        order = FUSED[fused]
        absent = [f"{base}.{p}.weight" for p in order if f"{p}.weight" not in parts]
        absent += [f"{base}.{p}.bias" for p in order if p not in _BIASLESS and f"{p}.bias" not in parts]
        if absent:
            missing += absent
            continue
        weights = [parts[f"{p}.weight"] for p in order]
        out[f"{base}.weight"] = torch.cat(weights, dim=0)
        out[f"{base}.bias"] = torch.cat([
            parts.get(f"{p}.bias", torch.zeros(w.shape[0], dtype=w.dtype)) for p, w in zip(order, weights)])
    if missing:
        raise WeightsError(f"{source}: missing projections for fused q/k/v: {summarise_keys(sorted(missing))}")
    return out


def _whisper_config(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    if cfg.get("model_type") != "whisper":
        raise WeightsError(f"{source}: expected a Whisper config, got model_type={cfg.get('model_type')!r}")
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
        raise WeightsError(f"{source}: Whisper variant uses features outside mmkit's Whisper: {', '.join(bad)}")
    dim = cfg["d_model"]
    return dict(
        n_mels=cfg["num_mel_bins"], n_audio_ctx=cfg["max_source_positions"], n_text_ctx=cfg["max_target_positions"],
        vocab_size=cfg["vocab_size"], dim=dim, encoder_depth=cfg["encoder_layers"],
        decoder_depth=cfg["decoder_layers"], num_heads=cfg["encoder_attention_heads"],
        mlp_ratio=cfg["encoder_ffn_dim"] / dim,
    )


def _check_tied(state: dict[str, Tensor], source: str) -> None:
    head = state.get("proj_out.weight")
    emb = state.get("model.decoder.embed_tokens.weight", state.get("decoder.embed_tokens.weight"))
    if head is not None and emb is not None and not torch.equal(head, emb):
        raise WeightsError(f"{source}: proj_out.weight differs from embed_tokens.weight; mmkit's Whisper ties them")


def _hub_snapshot(repo_id: str) -> Path:
    """Download config + weights of a Hub repo (safetensors preferred, else pytorch_model.bin)."""
    try:
        from huggingface_hub import snapshot_download

        patterns = ["config.json", "*.safetensors", "*.safetensors.index.json"]
        path = Path(snapshot_download(repo_id, allow_patterns=patterns))
        if not any(path.glob("*.safetensors")):
            path = Path(snapshot_download(repo_id, allow_patterns=["config.json", "pytorch_model.bin"]))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, auth: one clear message
        raise WeightsError(f"{repo_id}: not a local directory, and the Hugging Face Hub download failed "
                           f"({type(e).__name__}: {e})") from None
    return path


def _is_local(name: str | Path) -> bool:
    s = str(name)
    return isinstance(name, Path) or s.startswith((".", "/", "~")) or Path(s).expanduser().exists()


def whisper_from_hf(model_or_dir: nn.Module | str | Path) -> Whisper:
    """Convert a transformers Whisper model (an instance, a local checkpoint directory with its
    config.json and weights, or a Hub repo id) into `mmkit.models.Whisper`.

    Returns:
        a Whisper with identical encoder outputs and logits: in the instance's train/eval mode,
        or eval mode for a directory / repo id.

    Raises:
        WeightsError: unsupported variants, failed downloads, and checkpoints with missing,
            unexpected or wrongly shaped tensors (the message names the file and the keys).
    """
    if isinstance(model_or_dir, nn.Module):
        name = type(model_or_dir).__name__
        if name not in ("WhisperForConditionalGeneration", "WhisperModel"):
            raise WeightsError(f"expected a transformers WhisperForConditionalGeneration, got {name}")
        source = f"transformers:{name}"
        cfg, state, training = model_or_dir.config.to_dict(), model_or_dir.state_dict(), model_or_dir.training
    else:
        directory = Path(model_or_dir).expanduser() if _is_local(model_or_dir) else _hub_snapshot(str(model_or_dir))
        cfg, state, source = _read_hf_dir(directory)
        training = False
    model = Whisper(**_whisper_config(cfg, source))
    _check_tied(state, source)
    mapped = fuse_projections(remap(state, WHISPER_KEYS, source), source)
    load_state_dict_strict(model, mapped, source)
    log.info("imported Whisper (%s+%s layers, dim %s, %s Mel bins) from %s", cfg["encoder_layers"],
             cfg["decoder_layers"], cfg["d_model"], cfg["num_mel_bins"], source)
    return model.train(training)
