"""Import CTranslate2 Whisper exports (the `model.bin` folders faster-whisper reads; OpenNMT CTranslate2
`WhisperSpec`, binary format version 6) into the config and state dict of `mmkit.models.Whisper`. The binary layout
is read field by field (no pickle, no ctranslate2 import): name, shape, dtype and raw bytes per variable, then
aliases (a tensor stored once under several names). Quantized exports (`--quantization int8`, int8_float16, ...,
int16: the int8 folders many faster-whisper users fetch) are read as float32 weights of the very values CTranslate2
multiplies with (`dequantized`); mmkit quantizes itself at load (`--quantize int8`). CTranslate2 already fuses
self-attention q/k/v and cross-attention k/v in mmkit's order, so the key map is a pure renaming. config.json's
"alignment_heads", where present, become `Whisper(alignment_heads=...)` (word timestamps).
"""
from __future__ import annotations

import logging
import re
import struct
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from mmkit.weights.from_hf_whisper import checked_alignment_heads, json_heads
from mmkit.weights.keymap import remap
from mmkit.weights.native import Converted, WeightsError

log = logging.getLogger(__name__)

# CTranslate2's DataType enum -> torch; int8/int16 weights carry their scales beside them (`dequantized`)
_DTYPES = {0: torch.float32, 4: torch.float16, 5: torch.bfloat16, 3: torch.int32, 1: torch.int8, 2: torch.int16}
_SUPPORTED_VERSIONS = (5, 6)

_LN = [("{a}/gamma", "{b}.weight"), ("{a}/beta", "{b}.bias")]
_LIN = [("{a}/weight", "{b}.weight"), ("{a}/bias", "{b}.bias")]


def _pairs(src: str, dst: str, kind: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(s.format(a=src), d.format(b=dst)) for s, d in kind]


_BLOCK = [
    *_pairs("self_attention/layer_norm", "norm1", _LN),
    *_pairs("self_attention/linear_0", "attn.qkv", _LIN),  # fused [q; k; v], k bias stored as zeros
    *_pairs("self_attention/linear_1", "attn.proj", _LIN),
    *_pairs("ffn/layer_norm", "norm2", _LN),
    *_pairs("ffn/linear_0", "mlp.fc1", _LIN),
    *_pairs("ffn/linear_1", "mlp.fc2", _LIN),
]
_CROSS = [
    *_pairs("attention/layer_norm", "norm_cross", _LN),
    *_pairs("attention/linear_0", "cross_attn.q", _LIN),
    *_pairs("attention/linear_1", "cross_attn.kv", _LIN),  # fused [k; v]
    *_pairs("attention/linear_2", "cross_attn.proj", _LIN),
]
CT2_WHISPER_KEYS = [
    ("encoder/conv1/{p}", "stem.conv1.{p}"),
    ("encoder/conv2/{p}", "stem.conv2.{p}"),
    ("encoder/position_encodings/encodings", "stem.pos_embed"),
    *[("encoder/layer_{i}/" + s, "encoder.blocks.{i}." + d) for s, d in _BLOCK],
    *_pairs("encoder/layer_norm", "encoder.norm", _LN),
    ("decoder/embeddings/weight", "tok_embed.weight"),  # also the tied output projection (an alias)
    ("decoder/position_encodings/encodings", "pos_embed.weight"),
    *[("decoder/layer_{i}/" + s, "decoder.blocks.{i}." + d) for s, d in _BLOCK + _CROSS],
    *_pairs("decoder/layer_norm", "decoder.norm", _LN),
]
# (setting, value mmkit's Whisper implements): pre-norm blocks, exact GELU (CTranslate2's code 3
# in both stacks), unscaled embeddings
_EXPECTED = {"decoder/pre_norm": 1, "decoder/activation": 3, "decoder/scale_embeddings": 0, "decoder/alibi": 0}


def _string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<H", f.read(2))
    return f.read(n).rstrip(b"\0").decode("utf-8")


def read_ctranslate2_model(path: str | Path) -> tuple[str, dict[str, Tensor], dict[str, str]]:
    """(spec name, variables, aliases) of a CTranslate2 `model.bin`: every variable as a tensor of
    its stored dtype; aliases map a name to the variable it shares (the tied projection)."""
    path = Path(path).expanduser()
    try:
        with path.open("rb") as f:
            (version,) = struct.unpack("<I", f.read(4))
            if version not in _SUPPORTED_VERSIONS:
                raise WeightsError(f"{path}: CTranslate2 binary version {version}; mmkit reads {_SUPPORTED_VERSIONS}")
            spec = _string(f)
            f.read(4)  # spec revision
            (count,) = struct.unpack("<I", f.read(4))
            variables: dict[str, Tensor] = {}
            for _ in range(count):
                name = _string(f)
                (rank,) = struct.unpack("<B", f.read(1))
                shape = struct.unpack(f"<{rank}I", f.read(4 * rank))
                (code,) = struct.unpack("<B", f.read(1))
                (nbytes,) = struct.unpack("<I", f.read(4))
                if code not in _DTYPES:
                    raise WeightsError(f"{path}: variable {name} has unknown CTranslate2 dtype {code}")
                data = bytearray(f.read(nbytes))
                if len(data) != nbytes:
                    raise WeightsError(f"{path}: truncated at variable {name}")
                variables[name] = torch.frombuffer(data, dtype=_DTYPES[code]).reshape(shape) if nbytes else \
                    torch.empty(shape, dtype=_DTYPES[code])
            aliases = {}
            raw = f.read(4)
            if raw:
                for _ in range(struct.unpack("<I", raw)[0]):
                    alias = _string(f)
                    aliases[alias] = _string(f)
    except (OSError, struct.error, UnicodeDecodeError, RuntimeError) as e:
        raise WeightsError(f"{path}: not a readable CTranslate2 model.bin ({type(e).__name__}: {e})") from None
    return spec, variables, aliases


def dequantized(variables: dict[str, Tensor], source: str) -> tuple[dict[str, Tensor], list[str]]:
    """`variables` with each quantized weight (`<name>` int8 or int16, its `<name>_scale` beside it) as the float32
    values CTranslate2 computes with: int8 / its scale, one scale an output row (127 / the row's largest magnitude;
    a convolution's rows are its output channels), int16 / its one scale; the scales dropped. Returns (the
    variables, the quantized types found, sorted). A scale without its weight, of another shape, or not a finite
    positive number is a WeightsError: a model.bin CTranslate2 did not write."""
    out, kinds = dict(variables), set()
    for name in sorted(k for k in variables if k.endswith("_scale")):
        base, scale = name[: -len("_scale")], variables[name].float()
        weight = variables.get(base)
        if weight is None or weight.dtype not in (torch.int8, torch.int16):
            raise WeightsError(f"{source}: {name} scales no int8 or int16 variable {base}")
        rows = weight.shape[0] if weight.dtype == torch.int8 else 1
        if scale.numel() != rows or not bool(torch.isfinite(scale).all() and (scale > 0).all()):
            raise WeightsError(f"{source}: {name} is not {rows} finite positive scale(s) of {base}")
        out[base] = weight.float() / scale.reshape(-1, *[1] * (weight.ndim - 1))
        kinds.add(str(weight.dtype).removeprefix("torch."))
        del out[name]
    unscaled = sorted(k for k, v in out.items() if v.ndim > 0 and v.dtype in (torch.int8, torch.int16))
    if unscaled:
        raise WeightsError(f"{source}: {unscaled[0]} is {out[unscaled[0]].dtype} without its scale")
    return out, sorted(kinds)


def _check_settings(variables: dict[str, Tensor], source: str) -> None:
    wrong = [f"{k}={int(variables[k])} (mmkit implements {v})" for k, v in _EXPECTED.items()
             if k in variables and int(variables[k]) != v]
    heads = {int(variables[k]) for k in ("encoder/num_heads", "decoder/num_heads") if k in variables}
    if len(heads) != 1:
        wrong.append(f"encoder/decoder num_heads {sorted(heads)} (mmkit's Whisper shares one head count)")
    if wrong:
        raise WeightsError(f"{source}: settings mmkit's Whisper does not implement: {'; '.join(wrong)}")


def _with_aliases(variables: dict[str, Tensor], aliases: dict[str, str], source: str) -> dict[str, Tensor]:
    """`variables` with each alias as the variable it names: CTranslate2's converter stores a tensor once and names
    every identical one an alias of it (the tied projection, but also equal zero biases, unit gains, equal scales:
    any model whose tensors repeat). The tied projection stays out: mmkit's Whisper ties it itself."""
    out = dict(variables)
    for alias, target in aliases.items():
        if target not in variables:
            raise WeightsError(f"{source}: alias {alias} names no variable ({target})")
        if alias != "decoder/projection/weight":
            out[alias] = variables[target]
    return out


def _depth(variables: dict[str, Tensor], stack: str) -> int:
    found = {int(m[1]) for m in (re.match(rf"{stack}/layer_(\d+)/", k) for k in variables) if m}
    return 1 + max(found, default=-1)  # a gap surfaces as missing keys at the strict load


def whisper_from_ctranslate2(directory: str | Path) -> Converted:
    """Convert a CTranslate2 Whisper folder (`model.bin` + config.json + tokenizer.json, as written by
    `ct2-transformers-converter`) for `mmkit.models.Whisper`; fp16/bf16 tensors are upcast to fp32, int8 / int16
    ones dequantized (`dequantized`: each weight within half a quantization step of the original).

    Raises:
        WeightsError: no model.bin, another spec than WhisperSpec, scales that do not fit their weights, or
            settings (activation, normalisation, head counts) mmkit's Whisper does not implement.
    """
    directory = Path(directory).expanduser()
    path = directory / "model.bin" if directory.is_dir() else directory
    if not path.is_file():
        raise WeightsError(f"{directory}: no CTranslate2 model.bin")
    spec, variables, aliases = read_ctranslate2_model(path)
    source = str(path)
    if spec != "WhisperSpec":
        raise WeightsError(f"{source}: a CTranslate2 {spec}, not a WhisperSpec")
    tied = aliases.get("decoder/projection/weight", "decoder/embeddings/weight") == "decoder/embeddings/weight"
    if "decoder/projection/weight" in variables or not tied:
        raise WeightsError(f"{source}: an untied output projection; mmkit's Whisper ties it to the embedding")
    variables = _with_aliases(variables, aliases, source)
    variables, quantized = dequantized(variables, source)
    if quantized:
        log.info("%s: %s weights read as float32 (mmkit quantizes at load: --quantize int8)", source,
                 " and ".join(quantized))
    _check_settings(variables, source)
    # scalars are settings (checked above), not weights
    tensors = {k: v for k, v in variables.items() if v.ndim > 0}
    state = {k: v.float() for k, v in remap(tensors, CT2_WHISPER_KEYS, source).items()}
    n_mels, dim = state["stem.conv1.weight"].shape[1], state["stem.conv1.weight"].shape[0]
    config: dict[str, Any] = dict(
        n_mels=n_mels, n_audio_ctx=state["stem.pos_embed"].shape[0], n_text_ctx=state["pos_embed.weight"].shape[0],
        vocab_size=state["tok_embed.weight"].shape[0], dim=dim, encoder_depth=_depth(variables, "encoder"),
        decoder_depth=_depth(variables, "decoder"), num_heads=int(variables["encoder/num_heads"]),
        mlp_ratio=state["encoder.blocks.0.mlp.fc1.weight"].shape[0] / dim)
    heads = json_heads(path.parent / "config.json")  # ct2-transformers-converter copies transformers'
    if heads is not None:
        config["alignment_heads"] = checked_alignment_heads(heads, config, str(path.parent / "config.json"))
    log.info("imported Whisper (%d+%d layers, dim %d, %d Mel bins) from %s", config["encoder_depth"],
             config["decoder_depth"], dim, n_mels, source)
    return Converted(config, state, source, False)
