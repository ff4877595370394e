"""Deprecated home of the transcriber (issue 8: one layer per job). Its names moved to
`mmkit.inference` (Transcriber, DecodingOptions, checkpoints, subtitle writers), the logit filter
to `mmkit.core.filters.TimestampRules` and the command line to `mmkit.cli.transcribe`; importing
them from here still works for one release, with a DeprecationWarning naming the new place.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Any

# old name -> (module, name there)
_MOVED: dict[str, tuple[str, str]] = {
    **{name: ("mmkit.inference.transcript", name) for name in ("DecodingOptions", "Segment", "Transcript",
                                                                "compression_ratio")},
    "Transcriber": ("mmkit.inference.transcriber", "Transcriber"),
    "TimestampRules": ("mmkit.core.filters", "TimestampRules"),
    "load_checkpoint": ("mmkit.inference.speech_checkpoints", "load_speech_model"),
    "save_checkpoint": ("mmkit.inference.speech_checkpoints", "save_speech_checkpoint"),
    "load_tokenizer": ("mmkit.inference.speech_checkpoints", "load_tokenizer"),
    **{name: ("mmkit.inference.subtitles", name) for name in ("OUTPUT_FORMATS", "WRITERS", "format_timestamp",
                                                              "output_stems", "write_outputs", "write_json",
                                                              "write_srt", "write_tsv", "write_txt", "write_vtt")},
    "main": ("mmkit.cli.transcribe", "main"),
}
__all__ = sorted(_MOVED)


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, new = _MOVED[name]
    warnings.warn(f"mmkit.tasks.transcribe.{name} is deprecated: use {module}.{new}", DeprecationWarning,
                  stacklevel=2)
    return getattr(importlib.import_module(module), new)
