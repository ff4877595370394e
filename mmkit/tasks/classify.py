"""Deprecated (kept for one release): image classification inference moved to
`mmkit.inference.classifier` (Classifier, Prediction, top_k), `mmkit.inference.writers`
(write_predictions, OUTPUT_SUFFIXES) and `mmkit.data.transforms` (eval_transform).
"""
from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = {"Classifier": "mmkit.inference.classifier", "Prediction": "mmkit.inference.classifier",
          "top_k": "mmkit.inference.classifier", "write_predictions": "mmkit.inference.writers",
          "OUTPUT_SUFFIXES": "mmkit.inference.writers", "eval_transform": "mmkit.data.transforms"}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"mmkit.tasks.classify is deprecated: import {name} from {_MOVED[name]}", DeprecationWarning,
                  stacklevel=2)
    return getattr(importlib.import_module(_MOVED[name]), name)
