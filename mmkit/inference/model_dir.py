"""Reading the config.json of a `--model DIR` checkpoint directory, in one place for the loaders
that tell an mmkit export (`architecture`) from a transformers checkpoint (`model_type`):
`load_encoder` (BERT family) and `load_text_generator` (GPT).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmkit.weights.config_check import json_type, check_format_version
from mmkit.weights.native import CONFIG_NAME, WeightsError


def read_model_dir(directory: str | Path) -> tuple[Path, dict[str, Any]]:
    """The expanded directory and its parsed config.json, which must be a JSON object.

    Raises:
        FileNotFoundError: no such directory.
        NotADirectoryError: a file (config.json itself, say) where the directory is expected.
        WeightsError: no config.json in it, one that is not a UTF-8 JSON object, or an mmkit export of a
            newer format (one-line message).
    """
    directory = Path(directory).expanduser()
    if directory.is_file():
        raise NotADirectoryError(f"{directory}: a file, not a model directory (give the folder holding "
                                 f"{CONFIG_NAME} and the weights)")
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory not found: {directory}")
    path = directory / CONFIG_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"{directory}: not a checkpoint directory (no {CONFIG_NAME})") from None
    except UnicodeDecodeError:
        raise WeightsError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise WeightsError(f"{path}: expected a JSON object, found {json_type(doc)}")
    check_format_version(doc, str(path))
    return directory, doc
