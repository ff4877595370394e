"""Validate a checkpoint's config.json before anything is built (issue 9: a hostile or corrupt
config must fail in one line, not as a traceback from deep inside a constructor or a multi-GB
allocation). Arguments are checked against the constructor's own type hints (the single source
of truth), plus the range rules of the shared hyper-parameter vocabulary (STYLE.md §3).
"""
from __future__ import annotations

import inspect
import math
import re
import typing
from collections.abc import Sequence
from typing import Any, Callable, Literal, Mapping

from mmkit.weights.native import WeightsError

# Sizes that must be at least 1 (a zero head count divides by zero; a zero width builds nothing).
_POSITIVE = re.compile(r"(heads|dim|_size|max_len|_ctx|n_mels|in_chans|in_channels|channels|^ch|codebook_size)$")
# Rates in [0, 1); every other float just finite and non-negative where it is a ratio or eps.
_RATE = re.compile(r"(dropout|drop_path_rate|_rate)$")
_NONNEG_FLOAT = re.compile(r"(ratio|eps|beta)$")


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
        raise WeightsError(f"{where}: expected an object of constructor arguments, found {_json_type(config)}")
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
    dim, heads = config.get("dim"), config.get("num_heads")
    if type(dim) is int and type(heads) is int and "head_dim" not in params and dim % heads:
        raise WeightsError(f"{where}: field 'dim' ({dim}) is not divisible by 'num_heads' ({heads})")


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", type(None): "null", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)
