"""Inference for batch and interactive use: no Lightning, no argparse. The classifier, the one
zero-shot scorer (used by `mmkit label`, the demo and the training callback), the transcriber,
generators, output writers, precision choice and the "what does `--model NAME` mean" resolvers.
The command line (`mmkit.cli`) and the demos are thin layers over these.

Names resolve lazily (PEP 562), so `mmkit transcribe` does not import open_clip, nor `mmkit label` Whisper.
"""
from __future__ import annotations

from mmkit._lazy import lazy_exports

_EXPORTS: dict[str, list[str]] = {
    "mmkit.inference.classifier": ["Classifier", "Prediction"],
    "mmkit.inference.writers": ["OutputConflict", "ResumableWriter", "write_predictions"],
    "mmkit.inference.zero_shot": ["FileResult", "ZeroShotClassifier", "zero_shot_classifier", "zero_shot_logits",
                                  "zero_shot_scores"],
    "mmkit.inference.prompts": ["DEFAULT_TEMPLATES", "expand_prompts", "parse_labels", "read_labels_file"],
    "mmkit.inference.clip_loader": ["clip_eval_transform", "load_clip"],
    "mmkit.inference.precision": ["cpu_has_bf16", "resolve_precision"],
    "mmkit.inference.transcript": ["DecodingOptions", "Segment", "Transcript", "compression_ratio",
                                   "greedy_options"],
    "mmkit.inference.transcriber": ["Transcriber", "load_transcriber", "transcriber_for"],
    "mmkit.inference.speech_checkpoints": ["load_speech_model", "load_tokenizer", "save_speech_checkpoint"],
    "mmkit.inference.subtitles": ["OUTPUT_FORMATS", "format_timestamp", "output_stems", "write_outputs"],
}
__all__, __getattr__ = lazy_exports(__name__, _EXPORTS, globals())
