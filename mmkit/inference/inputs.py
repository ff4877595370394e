"""The inference API's rules for what its calls take, shared by every class: one input given where a list of
inputs is expected (`as_items`) and option dataclasses' field types (`check_types`). Torch-free, so a tool can
check its arguments before the heavy imports."""
from __future__ import annotations

import numbers
import typing
from typing import Any, Iterable, Sequence, TypeVar

T = TypeVar("T")


def as_items(value: T | Iterable[T], single: type | tuple[type, ...] = str) -> Iterable[T]:
    """`value` as the iterable of input items an API call expects: a lone `single` (a str; give
    `(str, os.PathLike)` for paths) is one item, `[value]`, anything else is returned as it is. A plain string
    is the commonest slip where a list is expected, and iterating it would run one input per character (one
    transcript per letter of "talk.wav", a stop at any letter of "END"); sentence-transformers, transformers
    pipelines and openai-whisper take it as one input too."""
    return [value] if isinstance(value, single) else value  # type: ignore[list-item]


def check_count(name: str, value: object) -> None:
    """A ValueError of one line naming `name` unless `value` is an integer >= 1 (a bool is not a count, nor is
    2.5, which failed later in `range` or `topk` with a bare TypeError)."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def text_items(texts: str | Iterable[str], what: str = "texts") -> list[str]:
    """`texts` as a list (a lone str is one text, `as_items`), each item checked to be text a tokenizer takes:
    a str (None or a number failed deep in the tokenizer with "TextEncodeInput must be ..." or an
    AttributeError) without lone surrogates (what undecodable bytes become in Python; the tokenizer raised a
    TypeError). TypeError / ValueError of one line naming the item."""
    items = list(as_items(texts))
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"{what}[{i}] must be a string, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{what}[{i}] is not valid text: a lone surrogate at character {e.start}") from None
    return items


def check_types(options: Any, ints: Sequence[str] = (), reals: Sequence[str] = ()) -> None:
    """Refuse a dataclass `options` whose fields `ints` are not integers (a bool is not a count, nor is 2.0)
    or whose fields `reals` are not real numbers, in one line naming the field; None passes where the field's
    annotation allows it. Checked before the range checks, which would fail on a str with a bare `'<' not
    supported`, while a float count would fail only once decoding starts."""
    hints = typing.get_type_hints(type(options))
    for names, kind, fits in ((ints, "an integer", numbers.Integral), (reals, "a number", numbers.Real)):
        for name in names:
            value, optional = getattr(options, name), type(None) in typing.get_args(hints[name])
            if (value is None and optional) or (isinstance(value, fits) and not isinstance(value, bool)):
                continue
            raise TypeError(f"{type(options).__name__}: {name} must be {kind}{' or None' if optional else ''}, "
                            f"got {value!r}")
