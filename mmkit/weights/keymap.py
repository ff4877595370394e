"""Declarative checkpoint key maps (litgpt-style key templates).

A rule maps a source template to a target template; `{i}` matches a layer index and
`{rest}` any dotted suffix. Every source key must match a rule; a rule whose target is None
is an intentional, named drop. Nothing is skipped silently.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

from torch import Tensor

from mmkit.weights.native import WeightsError, summarise_keys

Rule = tuple[str, "str | None"]
Transform = Callable[[Tensor], Tensor]

_FIELDS = {"i": r"(?P<i>\d+)", "rest": r"(?P<rest>.+)", "p": r"(?P<p>[^.]+)"}


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    pattern = "".join(re.escape(p) if n % 2 == 0 else _FIELDS[p] for n, p in enumerate(parts))
    return re.compile(pattern + r"\Z")


def remap(
    state: dict[str, Tensor],
    rules: Sequence[Rule],
    source: str,
    transforms: dict[str, Transform] | None = None,
) -> dict[str, Tensor]:
    """Rename `state` keys by the first matching rule; apply `transforms[target_key]` if named.

    Raises:
        WeightsError: listing the source keys no rule accounts for.
    """
    compiled = [(_compile(src), dst) for src, dst in rules]
    out: dict[str, Tensor] = {}
    unmatched = []
    for key, value in state.items():
        for pattern, dst in compiled:
            m = pattern.match(key)
            if m:
                if dst is not None:
                    out[dst.format(**m.groupdict())] = value
                break
        else:
            unmatched.append(key)
    if unmatched:
        raise WeightsError(f"{source}: keys with no mapping: {summarise_keys(sorted(unmatched))}")
    for key, fn in (transforms or {}).items():
        if key in out:
            out[key] = fn(out[key])
    return out
