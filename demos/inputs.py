"""Checks of the values a tab function is given. The browser's widgets keep them sensible, but Gradio's
HTTP API (gradio_client, curl) passes whatever JSON holds: NaN, 1e30, 2.5 for a layer, a lone surrogate
("a\\ud800b", which tokenizers reject with a TypeError). Each check returns the value in the type the
model code wants, or raises a `gr.Error` of one line naming the field (`refused`).
"""
from __future__ import annotations

import html
import math

import gradio as gr
from gradio.context import LocalContext

from mmkit.limits import MAX_SEED

# x-gradio-user values of programs, which read a message as text (`for_caller`)
PROGRAM_CALLERS = frozenset({"api", "mcp"})


def slider(*args: object, **kwargs: object) -> gr.Slider:
    """`gr.Slider(*args, **kwargs)` that hands a value outside its range, or not a finite number at all (null,
    text, NaN, 1e30: the HTTP API passes any JSON), to the tab function as it came, whose check (`whole`, `real`,
    with the slider's bounds) refuses it in one line naming the field. Gradio's own preprocessing failed on it
    with a TypeError (a bare "Error") or with "Value 1e+30 is greater than maximum value 127." (no field named),
    and a server traceback either way. Values in range go through Gradio's rounding as before.
    The instance's method is replaced rather than gr.Slider subclassed: Gradio writes a .pyi stub beside the
    module of every component subclass when the class is defined (into the source tree, or failing in a read-only
    install)."""
    component = gr.Slider(*args, **kwargs)
    checked = component.preprocess

    def preprocess(payload: object) -> object:
        in_range = _number(payload) and component.minimum <= payload <= component.maximum  # type: ignore[operator]
        return checked(payload) if in_range else payload  # type: ignore[arg-type]

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component


def refused(message: str) -> gr.Error:
    """The error a tab raises for a user's mistake: its message as the caller reads it (`for_caller`), and no
    server traceback (the mistake is the user's, told to them; Gradio prints one for every error unless told
    not to)."""
    return gr.Error(for_caller(message), print_exception=False)


def warn(message: str) -> None:
    """A warning whose message reads as `refused`'s does (`for_caller`)."""
    gr.Warning(for_caller(message))


def for_caller(message: str) -> str:
    """`message` as the caller of the running event reads an error's or a warning's text: HTML-escaped for the
    browser, which renders it as HTML (a label such as "<cat>" vanished from it), and as it is for a program,
    which reads it as text (gradio_client got "&lt;cat&gt;"). A program is told by the header x-gradio-user
    that Gradio's clients send on each request: "api" from gradio_client, "mcp" from Gradio's MCP server; the
    browser sends "app". A raw HTTP call without it (curl on /gradio_api/call/...) gets the browser's form, as
    does a call outside a Gradio event (a test calling a tab function). Gradio sets the event's request in a
    contextvar (`LocalContext.request`) around each call of a tab function and each step of a generator, beside
    the event id `gr.Warning` itself reads, so no tab passes its request down to the checks that refuse."""
    headers = dict(getattr(LocalContext.request.get(None), "headers", None) or {})  # none outside an event
    return message if headers.get("x-gradio-user") in PROGRAM_CALLERS else html.escape(message, quote=False)


def text(value: object, name: str) -> str:
    """`value` as text ("" for None): a str that encodes as UTF-8."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise refused(f"{name} must be text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise refused(f"{name} is not valid Unicode: an unpaired surrogate ({value[e.start]!r}) at character "
                       f"{e.start}") from None
    return value


def whole(value: object, name: str, low: int, high: int, bounds: str | None = None) -> int:
    """`value` as an int in [low, high]: a finite whole number (3.0 is 3; 2.5, NaN and 1e30 are refused).
    `bounds`: how the message writes the range (default "[low, high]")."""
    if not (_number(value) and float(value).is_integer() and low <= value <= high):
        raise refused(f"{name} must be a whole number in {bounds or f'[{low}, {high}]'}, got {_shown(value)}")
    return int(value)


def real(value: object, name: str, low: float, high: float) -> float:
    """`value` as a float in [low, high] (finite: NaN and infinities are refused)."""
    if not (_number(value) and low <= value <= high):
        raise refused(f"{name} must be a number in [{low}, {high}], got {_shown(value)}")
    return float(value)


def seed(value: object) -> int | None:
    """A sampling seed: None (not seeded) or a whole number in [0, 2**64 - 1]."""
    return None if value is None else whole(value, "seed", 0, MAX_SEED, "[0, 2**64 - 1]")


def _number(value: object) -> bool:
    """A finite int or float (not a bool; not an int too large for a float)."""
    try:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:  # math.isfinite(10**400)
        return False


def _shown(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."
