"""Deprecated (kept for one release): `mmkit label` was split by job. The command line is
`mmkit.cli.label` (`mmkit label`; not re-exported here: tasks/ holds no CLI); the scorer (`ZeroShotLabeler` is now `ZeroShotClassifier`) is
`mmkit.inference.zero_shot`; the CLIP loader `mmkit.inference.clip_loader` (`load_model` ->
`load_clip`, `model_preprocess` -> `clip_eval_transform`); `Preprocess` is
`mmkit.data.transforms.EvalTransform`; writers, label rules, prompts and precision are in
`mmkit.inference`.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Any

_I = "mmkit.inference."
_MOVED: dict[str, tuple[str, str]] = {
    "ZeroShotLabeler": (_I + "zero_shot", "ZeroShotClassifier"), "load_model": (_I + "clip_loader", "load_clip"),
    "model_preprocess": (_I + "clip_loader", "clip_eval_transform"),
    "Preprocess": ("mmkit.data.transforms", "EvalTransform"),
    **{n: (_I + "zero_shot", n) for n in ("FileResult",)},
    **{n: (_I + "precision", n) for n in ("PRECISIONS", "cpu_has_bf16", "resolve_precision")},
    **{n: (_I + "image_batches", n) for n in ("ImageBatch", "ImageFiles", "collate", "image_batches")},
    **{n: (_I + "label_outputs", n) for n in ("OTHER", "Decision", "safe_folder_name", "folder_names", "place_file")},
    **{n: (_I + "writers", n) for n in ("ResumableWriter", "OutputConflict")},
    **{n: (_I + "prompts", n) for n in ("DEFAULT_TEMPLATES", "BACKGROUND_WORDS", "Tokenizer", "check_templates",
                                         "expand_prompts", "encode_prompts", "parse_label_entry", "parse_labels",
                                         "read_labels_file")},
    **{n: ("mmkit.models.clip", n) for n in ("CLIP", "CLIP_MEAN", "CLIP_STD", "CLIP_VOCAB_SIZE")},
}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, new = _MOVED[name]
    warnings.warn(f"mmkit.tasks.label is deprecated: {name} is now {module}.{new}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(module), new)

