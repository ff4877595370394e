"""Deprecated (kept for one release): the zero-shot scorer moved to `mmkit.inference.zero_shot`
(ZeroShotClassifier, zero_shot_scores, zero_shot_classifier, zero_shot_logits), prompt handling to
`mmkit.inference.prompts`. One default template set now serves every caller (DEFAULT_TEMPLATES).
"""
from __future__ import annotations

import importlib
import warnings
from typing import Any

_NAMES = ("ZeroShotClassifier", "zero_shot_scores", "zero_shot_classifier", "zero_shot_logits",
          "default_image_metadata", "Scores")
_MOVED = {**{name: "mmkit.inference.zero_shot" for name in _NAMES},
          **{name: "mmkit.inference.prompts" for name in ("DEFAULT_TEMPLATES", "clean_labels")}}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"mmkit.tasks.zero_shot is deprecated: import {name} from {_MOVED[name]}", DeprecationWarning,
                  stacklevel=2)
    return getattr(importlib.import_module(_MOVED[name]), name)
