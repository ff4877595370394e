"""Shared helpers of the Hugging Face transformers importers (`from_hf`, `from_hf_whisper`, ...):
reading a local checkpoint directory or a transformers instance, the Hub download, tied-embedding
checks and fusing separate q/k/v projections into mmkit's fused `qkv` / `kv` (transformers keeps
them apart; mmkit's core `Attention` holds one matrix). Pure functions over dicts and tensors.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from mmkit.weights.config_check import read_json_object
from mmkit.weights.native import WeightsError, read_state_dict, summarise_keys

# Staged names the key maps produce: `<base>.<qkv|kv>.<q|k|v>.<weight|bias>`.
_STAGED = re.compile(r"(?P<base>.+\.(?P<fused>qkv|kv))\.(?P<part>q|k|v)\.(?P<p>weight|bias)\Z")
FUSED = {"qkv": ("q", "k", "v"), "kv": ("k", "v")}
# transformers `model_type` -> the mmkit class whose `from_hf` imports it (for messages: these converters
# never import mmkit.models).
HF_IMPORTERS = {"gpt2": "GPT", "bert": "BERT", "roberta": "BERT", "marian": "Seq2Seq", "t5": "T5", "mt5": "T5",
                "whisper": "Whisper"}


def read_hf_dir(directory: Path) -> tuple[dict[str, Any], dict[str, Tensor], str]:
    """config dict, state dict and the weights file name(s) of a local HF checkpoint directory:
    model.safetensors, a sharded safetensors index, or pytorch_model.bin (read weights-only)."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"{directory}: not a Hugging Face checkpoint directory (no config.json)")
    cfg = read_json_object(config_path)
    if "architecture" in cfg and "model_type" not in cfg:  # mmkit's own layout (`native.save_pretrained`)
        arch = cfg["architecture"] if str(cfg["architecture"]).isidentifier() else "<model class>"
        raise WeightsError(f"{config_path}: an mmkit {arch} checkpoint, not a Hugging Face transformers one: "
                           f"load it with {arch}.from_pretrained")
    index = directory / "model.safetensors.index.json"
    if index.is_file():  # sharded checkpoint: every shard named in the index
        shards = _index_shards(index)
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(read_state_dict(directory / shard))
        return cfg, state, str(index)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return cfg, read_state_dict(directory / name), str(directory / name)
    raise WeightsError(f"{directory}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _index_shards(index: Path) -> list[str]:
    """The shard files a sharded checkpoint's index names (its "weight_map" values), each a plain file name beside
    the index: a WeightsError of one line for an index without them, or one naming a file elsewhere."""
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise WeightsError(f"{index}: no \"weight_map\" object naming the shard files")
    shards = sorted(set(weight_map.values()), key=str)
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard or shard in (".", ".."):
            raise WeightsError(f"{index}: weight_map names {shard!r}, not a file beside the index")
    return shards


def config_file(source: str) -> str:
    """Where config problems of an import from `source` (a weights file read by `read_hf_dir`, or the name of a
    transformers instance) are reported: the config.json beside the weights, else `source` itself."""
    path = Path(source)
    return str(path.with_name("config.json")) if path.is_file() else source


def is_local(name: str | Path) -> bool:
    """True for a path (or an existing file/directory), False for what looks like a Hub repo id."""
    s = str(name)
    return isinstance(name, Path) or s.startswith((".", "/", "~")) or Path(s).expanduser().exists()


def hub_snapshot(repo_id: str) -> Path:
    """Download config + weights of a Hub repo (safetensors preferred, else pytorch_model.bin); from the hub
    cache alone, at once, when the hub cannot be reached (`hub.hub_access`)."""
    from mmkit.weights.hub import failure, hub_access

    with hub_access() as offline:
        try:
            from huggingface_hub import snapshot_download

            patterns = ["config.json", "*.safetensors", "*.safetensors.index.json"]
            path = Path(snapshot_download(repo_id, allow_patterns=patterns))
            if not any(path.glob("*.safetensors")):
                path = Path(snapshot_download(repo_id, allow_patterns=["config.json", "pytorch_model.bin"]))
        except Exception as e:  # noqa: BLE001 - offline, unknown repo, auth: one clear message
            raise WeightsError(f"{repo_id}: not a local directory, and the Hugging Face Hub download failed "
                               f"({failure(e, offline)})") from None
    return path


def hf_source(model_or_dir: nn.Module | str | Path, classes: Iterable[str], hub: bool = False,
              also: Iterable[str] = ()) -> tuple[dict[str, Any], dict[str, Tensor], str, bool]:
    """(config dict, state dict, source name, training) of a transformers instance of one of
    `classes`, of a local checkpoint directory, or (with `hub`) of a Hub repo id; eval mode
    (training False) for anything read from files. A directory whose config.json names its class
    (`architectures`) must name one of `classes` or `also` (base models whose weights fit as well): another
    head's directory (MarianModel, T5EncoderModel, GPT2ForSequenceClassification) was refused by the tensors it
    lacks or adds, which read as a corrupt file."""
    classes = tuple(classes)
    if isinstance(model_or_dir, nn.Module):
        name = type(model_or_dir).__name__
        if name not in classes:
            raise WeightsError(f"expected a transformers {' or '.join(classes)}, got {name}")
        return model_or_dir.config.to_dict(), model_or_dir.state_dict(), f"transformers:{name}", model_or_dir.training
    local = not hub or is_local(model_or_dir)
    directory = Path(model_or_dir).expanduser() if local else hub_snapshot(str(model_or_dir))
    cfg, state, source = read_hf_dir(directory)
    named = cfg.get("architectures")
    others = [a for a in named if a not in (*classes, *also)] if isinstance(named, list) else []
    if others:
        raise WeightsError(f"{config_file(source)}: {others[0]} is not supported; mmkit imports "
                           f"{', '.join(classes)} here")
    return cfg, state, source, False


def check_tied(state: dict[str, Tensor], head: str, embeddings: Iterable[str], source: str, model: str) -> None:
    """Refuse an output projection `head` that differs from the token embedding (the first of
    `embeddings` present): mmkit's `model` ties them, so the checkpoint's head would be lost."""
    w = state.get(head)
    emb_key = next((k for k in embeddings if k in state), None)
    if w is not None and emb_key is not None and not torch.equal(w, state[emb_key]):
        raise WeightsError(f"{source}: {head} differs from {emb_key}; mmkit's {model} ties them")


def refuse_inexpressible(config: dict[str, Any], known: Iterable[str], problems: dict[str, bool], where: str,
                         target: str, config_class: str) -> None:
    """The exporters' check (`to_hf_marian`, `to_hf_whisper`): a WeightsError of one line naming everything about
    an mmkit model that the transformers class `target` cannot build: constructor arguments outside `known`
    (`config_class` has no counterpart for them) and each description in `problems` whose value is true."""
    unknown = sorted(set(config) - set(known))
    problems = {f"config fields {config_class} has no counterpart for ({', '.join(unknown)})": bool(unknown),
                **problems}
    bad = [k for k, v in problems.items() if v]
    if bad:
        raise WeightsError(f"{where}: {target} cannot express {'; '.join(bad)}")


def fuse_projections(state: dict[str, Tensor], source: str, biasless: Iterable[str] = ("k",)) -> dict[str, Tensor]:
    """Concatenate staged `<base>.<qkv|kv>.<part>.{weight,bias}` tensors into `<base>.<qkv|kv>.*`
    in q, k, v order. Parts named in `biasless` (Whisper's key projection) may lack a bias and
    contribute zeros, which is exact: softmax cancels a key bias. With `biasless=()`, a group
    with no bias at all (T5) fuses to a weight alone; any other missing tensor is an error naming it."""
    biasless = set(biasless)
    out: dict[str, Tensor] = {}
    groups: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        m = _STAGED.match(key)
        if m is None:
            out[key] = value
        else:
            groups.setdefault((m["base"], m["fused"]), {})[f"{m['part']}.{m['p']}"] = value
    missing: list[str] = []
    for (base, fused), parts in groups.items():
        order = FUSED[fused]
        # A `biasless` part implies the others have biases (Whisper); else biases all or none (T5).
        has_bias = any(k.endswith(".bias") for k in parts) or any(p in biasless for p in order)
        absent = [f"{base}.{p}.weight" for p in order if f"{p}.weight" not in parts]
        if has_bias:
            absent += [f"{base}.{p}.bias" for p in order if p not in biasless and f"{p}.bias" not in parts]
        if absent:
            missing += absent
            continue
        weights = [parts[f"{p}.weight"] for p in order]
        out[f"{base}.weight"] = torch.cat(weights, dim=0)
        if has_bias:
            out[f"{base}.bias"] = torch.cat([
                parts.get(f"{p}.bias", torch.zeros(w.shape[0], dtype=w.dtype)) for p, w in zip(order, weights)])
    if missing:
        raise WeightsError(f"{source}: missing projections for fused q/k/v: {summarise_keys(sorted(missing))}")
    return out


_FUSED_KEY = re.compile(r"(?P<base>.+\.(?P<fused>qkv|kv))\.(?P<p>weight|bias)\Z")


def split_projections(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of `fuse_projections` (the exporters back to transformers): each fused
    `<base>.<qkv|kv>.{weight,bias}` as staged `<base>.<qkv|kv>.<q|k|v>.{weight,bias}` parts, equal rows each (q, k, v order); other keys as they are."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        m = _FUSED_KEY.match(key)
        if m is None:
            out[key] = value
            continue
        parts = FUSED[m["fused"]]
        for part, chunk in zip(parts, value.chunk(len(parts), dim=0)):
            out[f"{m['base']}.{part}.{m['p']}"] = chunk
    return out
