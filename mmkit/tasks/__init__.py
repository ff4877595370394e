"""LightningModules ("systems") around plain models, and the inference APIs built on them.

Names resolve lazily (PEP 562): `mmkit transcribe` or `mmkit label` import only what they use.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "mmkit.tasks.classify": ["Classifier", "Prediction", "write_predictions"],
    "mmkit.tasks.image_classifier": ["ImageClassifier"],
    "mmkit.tasks.clip_task": ["CLIPTask", "ZeroShotEvaluation"],
    "mmkit.tasks.zero_shot": ["ZeroShotClassifier", "zero_shot_scores"],
    "mmkit.tasks.speech_recognizer": ["SpeechRecognizer", "load_speech_checkpoint", "load_transcriber",
                                      "save_speech_checkpoint", "transcriber_for"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'mmkit.tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value
