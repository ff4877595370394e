"""Import Hugging Face transformers checkpoints into mmkit models (GPT-2 for now).

GPT-2's `Conv1D` layers store weights as (in, out), the transpose of `nn.Linear`; that is the
one named transform. `c_attn` is already a fused q|k|v projection in mmkit's order, so it maps
straight onto `attn.qkv`. The architecture is read from the Hugging Face config; features the
plain GPT does not implement are refused, not approximated.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmkit.models.gpt import GPT
from mmkit.weights.keymap import remap
from mmkit.weights.native import WeightsError, load_state_dict_strict, read_state_dict

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
    ("lm_head.weight", None),  # tied to wte: checked equal in `_check_tied`, then dropped
]
_CONV1D_TARGETS = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def conv1d_to_linear(w: Tensor) -> Tensor:
    """transformers `Conv1D` weight (in, out) -> `nn.Linear` weight (out, in)."""
    return w.t().contiguous()


def _gpt2_config(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    if cfg.get("model_type", "gpt2") != "gpt2":
        raise WeightsError(f"{source}: expected a GPT-2 config, got model_type={cfg.get('model_type')!r}")
    unsupported = {
        f"activation_function={cfg.get('activation_function')!r}": cfg.get("activation_function") not in _GELU_TANH,
        "scale_attn_by_inverse_layer_idx": cfg.get("scale_attn_by_inverse_layer_idx", False),
        "scale_attn_weights=False": not cfg.get("scale_attn_weights", True),
        "add_cross_attention": cfg.get("add_cross_attention", False),
        "untied lm_head (tie_word_embeddings=False)": not cfg.get("tie_word_embeddings", True),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise WeightsError(f"{source}: GPT-2 variant uses features outside mmkit's GPT: {', '.join(bad)}")
    dim = cfg["n_embd"]
    return dict(
        vocab_size=cfg["vocab_size"], max_len=cfg["n_positions"], dim=dim, depth=cfg["n_layer"],
        num_heads=cfg["n_head"], mlp_ratio=(cfg.get("n_inner") or 4 * dim) / dim,
        norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
    )


def _read_hf_dir(directory: Path) -> tuple[dict[str, Any], dict[str, Tensor], str]:
    """config dict, state dict and the weights file name(s) of a local HF checkpoint directory."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"{directory}: not a Hugging Face checkpoint directory (no config.json)")
    try:
        cfg = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{config_path}: invalid JSON ({e})") from None
    index = directory / "model.safetensors.index.json"
    if index.is_file():  # sharded checkpoint: every shard named in the index
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(read_state_dict(directory / shard))
        return cfg, state, str(index)
    for name in ("model.safetensors", "pytorch_model.bin"):  # .bin via torch.load(weights_only=True)
        if (directory / name).is_file():
            return cfg, read_state_dict(directory / name), str(directory / name)
    raise WeightsError(f"{directory}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _check_tied(state: dict[str, Tensor], source: str) -> None:
    head = state.get("lm_head.weight")
    wte = state.get("transformer.wte.weight", state.get("wte.weight"))
    if head is not None and wte is not None and not torch.equal(head, wte):
        raise WeightsError(f"{source}: lm_head.weight differs from wte.weight; mmkit's GPT ties them")


def gpt2_from_hf(model_or_dir: nn.Module | str | Path) -> GPT:
    """Convert a transformers `GPT2LMHeadModel` (an instance, or a local checkpoint directory
    holding its config.json and weights) into `mmkit.models.GPT`.

    Returns:
        a GPT with identical logits: in the instance's train/eval mode, or eval mode for a directory.

    Raises:
        WeightsError: unsupported GPT-2 variants, and checkpoints with missing, unexpected or
            wrongly shaped tensors (the message names the file and the keys).
    """
    if isinstance(model_or_dir, nn.Module):
        if type(model_or_dir).__name__ != "GPT2LMHeadModel":
            raise WeightsError(f"expected a transformers GPT2LMHeadModel, got {type(model_or_dir).__name__}")
        source = f"transformers:{type(model_or_dir).__name__}"
        cfg, state, training = model_or_dir.config.to_dict(), model_or_dir.state_dict(), model_or_dir.training
    else:
        cfg, state, source = _read_hf_dir(Path(model_or_dir).expanduser())
        training = False
    model = GPT(**_gpt2_config(cfg, source))
    _check_tied(state, source)
    transforms = {f"decoder.blocks.{i}.{t}": conv1d_to_linear
                  for i in range(len(model.decoder.blocks)) for t in _CONV1D_TARGETS}
    load_state_dict_strict(model, remap(state, GPT2_KEYS, source, transforms), source)
    log.info("imported GPT-2 (%s layers, dim %s) from %s", cfg["n_layer"], cfg["n_embd"], source)
    return model.train(training)
