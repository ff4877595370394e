"""Reading the config.json of a `--model DIR` checkpoint directory, in one place for the loaders
that tell an mmkit export (`architecture`) from a transformers checkpoint (`model_type`):
`load_encoder` (BERT family) and `load_text_generator` (GPT).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmkit.weights.native import CONFIG_NAME, WeightsError


def read_model_dir(directory: str | Path) -> tuple[Path, dict[str, Any]]:
    """The expanded directory and its parsed config.json, which must be a JSON object.

    Raises:
        FileNotFoundError: no such directory.
        WeightsError: no config.json in it, or one that is not a UTF-8 JSON object (one-line message).
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory not found: {directory}")
    path = directory / CONFIG_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"{directory}: not a checkpoint directory (no {CONFIG_NAME})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    return directory, doc
