"""Validate a checkpoint's config.json before anything is built (issue 9: a hostile or corrupt
config must fail in one line, not as a traceback from deep inside a constructor or a multi-GB
allocation). Arguments are checked against the constructor's own type hints (the single source
of truth), plus the range rules of the shared hyper-parameter vocabulary (STYLE.md §3).
"""
from __future__ import annotations

import inspect
import json
import math
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from mmkit.weights.native import FORMAT_VERSION, WeightsError

# Sizes that must be at least 1 (a zero head count divides by zero; a zero width builds nothing, a zero
# bucket count or distance breaks the relative position bias); from `d_model` on, transformers' spellings
# (`d_model`, `num_mel_bins`, `max_*_positions`, GPT-2's `n_head`/`n_embd`/`n_inner`, T5's `d_kv`/`d_ff`,
# `max_position_embeddings`) and token limits.
_POSITIVE = re.compile(r"(heads|dim|_size|max_len|_ctx|n_mels|in_chans|in_channels|channels|^ch|codebook_size"
                       r"|_buckets|_distance|d_model|_bins|_positions|^n_(head|embd|inner)|^d_(kv|ff)"
                       r"|^max_\w*(tokens|embeddings))$")
# Rates in [0, 1) (BERT's `*_dropout_prob`, GPT-2's `*_pdrop` and Marian's `*_layerdrop` too); every other float
# just finite and non-negative where it is a ratio or an epsilon.
_RATE = re.compile(r"(dropout|drop_path_rate|_rate|_prob|pdrop|layerdrop)$")
_NONNEG_FLOAT = re.compile(r"(ratio|eps|epsilon|beta)$")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_value(name: str, value: Any, tp: Any) -> str | None:
    """None if `value` fits annotation `tp`, else why not (a short phrase)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is inspect.Parameter.empty:
        return None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        reasons = [_check_value(name, value, a) for a in args if a is not type(None)]
        return None if any(r is None for r in reasons) else reasons[0]
    if origin is Literal:
        return None if value in args else f"must be one of {', '.join(map(repr, args))}, got {value!r}"
    if tp is bool:
        return None if type(value) is bool else f"must be true or false, got {value!r}"
    if tp is int:
        if type(value) is not int:
            return f"must be an integer, got {value!r}"
        if _POSITIVE.search(name) and value <= 0:
            return f"must be positive, got {value}"
        return f"must not be negative, got {value}" if value < 0 and not name.endswith("_id") else None
    if tp is float:
        if type(value) not in (int, float):
            return f"must be a number, got {value!r}"
        if not math.isfinite(value):
            return f"must be finite, got {value!r}"
        if _RATE.search(name) and not 0 <= value < 1:
            return f"must be in [0, 1), got {value}"
        return f"must not be negative, got {value}" if _NONNEG_FLOAT.search(name) and value < 0 else None
    if tp is str:
        return None if isinstance(value, str) else f"must be a string, got {value!r}"
    if origin in (Sequence, list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return f"must be a list, got {value!r}"
        inner = args[0] if args else Any
        bad = [r for r in (_check_value(name, v, inner) for v in value) if r]
        return f"list items {bad[0]}" if bad else None
    if origin in (dict, Mapping) or tp is dict:
        return None if isinstance(value, dict) else f"must be an object, got {value!r}"
    return None  # annotations this checker does not know are left to the constructor


def check_arguments(constructor: Callable[..., Any], config: Any, where: str,
                    nested: Mapping[str, Callable[..., Any]] | None = None) -> None:
    """Refuse `config` unless it is a dict of `constructor`'s arguments, each of its annotated
    type and within range; `where` names the file (and field path) in the one-line error.
    `nested` names fields holding another constructor's arguments (CLIP's towers)."""
    if isinstance(constructor, type):
        constructor = constructor.__init__
    if not isinstance(config, dict):
        raise WeightsError(f"{where}: expected an object of constructor arguments, found {json_type(config)}")
    params = inspect.signature(constructor).parameters
    hints = typing.get_type_hints(constructor)
    unknown = sorted(k for k in config if k not in params or k == "self")
    if unknown:
        raise WeightsError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} "
                           f"(known: {', '.join(p for p in params if p != 'self')})")
    for name, sub in (nested or {}).items():
        check_arguments(sub, config.get(name), f"{where}.{name}")
    for name, value in config.items():
        if name in (nested or {}):
            continue
        why = _check_value(name, value, hints.get(name, Any))
        if why:
            raise WeightsError(f"{where}: field {name!r} {why}")
    if "head_dim" not in params:
        check_divisible(config, "dim", "num_heads", where)
    # Token ids index the embedding: one outside the vocabulary fails deep in torch (or, negative, reads
    # the wrong row). Bounded by the largest vocabulary the constructor takes (DALL-E has two).
    sizes = [config.get(p, params[p].default) for p in params if p.endswith("vocab_size")]
    sizes = [v for v in sizes if type(v) is int]
    if sizes:
        check_token_ids(config, [p for p in config if p.endswith("_id")], max(sizes), where)


def check_divisible(config: Mapping[str, Any], dim: str, heads: str, where: str) -> None:
    """Refuse a width `config[dim]` that `config[heads]` attention heads cannot split evenly."""
    d, h = config.get(dim), config.get(heads)
    if type(d) is int and type(h) is int and h > 0 and d % h:
        raise WeightsError(f"{where}: field {dim!r} ({d}) is not divisible by {heads!r} ({h})")


def check_fields(doc: Any, spec: Mapping[str, Any], where: str, required: Sequence[str] = ()) -> dict[str, Any]:
    """`doc` if it is a JSON object whose fields named in `spec` have their annotated type and range
    (the rules of `check_arguments`; other fields are left alone) and which holds every `required`
    field; else one-line WeightsError naming `where` and the field. For the JSON files beside the
    weights (metadata, generation_config.json, a transformers config.json)."""
    if not isinstance(doc, dict):
        raise WeightsError(f"{where}: expected a JSON object, found {json_type(doc)}")
    missing = [name for name in required if name not in doc]
    if missing:
        raise WeightsError(f"{where}: missing field(s) {', '.join(map(repr, missing))}")
    for name, tp in spec.items():
        why = _check_value(name, doc[name], tp) if name in doc else None
        if why:
            raise WeightsError(f"{where}: field {name!r} {why}")
    return doc


def check_token_ids(doc: Mapping[str, Any], names: Sequence[str], vocab_size: int, where: str,
                    lowest: int = 0) -> None:
    """Refuse an integer id (or list of ids) in the fields `names` of `doc` outside [lowest, vocab_size):
    it would index past the embedding at run time. Values of other types are `check_fields`' to refuse."""
    for name in names:
        value = doc.get(name)
        bad = [i for i in (value if isinstance(value, list) else [value]) if type(i) is int and
               not lowest <= i < vocab_size]
        if bad:
            raise WeightsError(f"{where}: field {name!r} holds id {bad[0]}, outside the vocabulary "
                               f"({lowest}..{vocab_size - 1})")


def check_format_version(doc: Mapping[str, Any], where: str) -> None:
    """Refuse an mmkit export of a layout newer than this mmkit writes (`native.FORMAT_VERSION`): it would
    load silently and perhaps wrongly. A missing version is read as this one (transformers' files)."""
    version = doc.get("format_version", FORMAT_VERSION)
    if type(version) is not int or version < 1:
        raise WeightsError(f"{where}: field 'format_version' must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise WeightsError(f"{where}: written by a newer mmkit (format {version}; this one reads "
                           f"≤ {FORMAT_VERSION}): upgrade mmkit")


def read_json_object(path: Path, error: type[Exception] = WeightsError) -> dict[str, Any]:
    """The JSON object in `path` (a config.json, a generation_config.json, a weights index), read as UTF-8 whatever
    the locale, or `error` of one line naming the file: unreadable, not UTF-8, not JSON, or JSON that is not an
    object. Every loader reads its JSON files here, with the same messages."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: invalid JSON ({e})") from None
    except OSError as e:  # FileNotFoundError included: callers that expect one check the file first
        raise error(f"{path}: cannot read it ({e.strerror or e})") from None
    if not isinstance(doc, dict):
        raise error(f"{path}: expected a JSON object, found {json_type(doc)}")
    return doc


def json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", type(None): "null", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)
