"""LightningModules ("systems") around plain models: losses, metrics, optimisers.

Names resolve lazily (PEP 562): `mmkit transcribe` or `mmkit label` import only what they use.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Any

from mmkit._lazy import lazy_exports

_EXPORTS = {
    "mmkit.tasks.image_classifier": ["ImageClassifier"],
    "mmkit.tasks.clip_task": ["CLIPTask", "ZeroShotEvaluation"],
    "mmkit.tasks.speech_recognizer": ["SpeechRecognizer"],
    "mmkit.tasks.model_callbacks": ["CompileModel", "GradCheckpointing"],
    "mmkit.tasks.checkpoints": ["ModelCheckpoint"],
}
# Moved to mmkit.inference (the inference layer: no Lightning); the old names work for one release.
_MOVED = {"Classifier": "mmkit.inference.classifier", "Prediction": "mmkit.inference.classifier",
          "write_predictions": "mmkit.inference.writers", "ZeroShotClassifier": "mmkit.inference.zero_shot",
          "zero_shot_scores": "mmkit.inference.zero_shot",
          "load_transcriber": "mmkit.inference.transcriber", "transcriber_for": "mmkit.inference.transcriber",
          "save_speech_checkpoint": "mmkit.inference.speech_checkpoints",
          "load_speech_checkpoint": "mmkit.inference.speech_checkpoints:load_speech_model"}  # module[:new name]
__all__, _lazy_getattr = lazy_exports(__name__, _EXPORTS, globals())


def __getattr__(name: str) -> Any:
    if name in _MOVED:  # not cached in globals(), so every use warns
        module, _, new = _MOVED[name].partition(":")
        warnings.warn(f"mmkit.tasks.{name} is deprecated: use mmkit.inference.{new or name}", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module(module), new or name)
    return _lazy_getattr(name)
