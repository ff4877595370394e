"""LightningModules ("systems") around plain models, and the inference APIs built on them.

Names resolve lazily (PEP 562): `mmkit transcribe` or `mmkit label` import only what they use.
"""
from __future__ import annotations

from mmkit._lazy import lazy_exports

_EXPORTS = {
    "mmkit.tasks.classify": ["Classifier", "Prediction", "write_predictions"],
    "mmkit.tasks.image_classifier": ["ImageClassifier"],
    "mmkit.tasks.clip_task": ["CLIPTask", "ZeroShotEvaluation"],
    "mmkit.tasks.zero_shot": ["ZeroShotClassifier", "zero_shot_scores"],
    "mmkit.tasks.speech_recognizer": ["SpeechRecognizer", "load_speech_checkpoint", "load_transcriber",
                                      "save_speech_checkpoint", "transcriber_for"],
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS, globals())
