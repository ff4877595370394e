"""Reading the config.json of a `--model DIR` checkpoint directory, in one place for the loaders
that tell an mmkit export (`architecture`) from a transformers checkpoint (`model_type`):
`load_encoder` (BERT family) and `load_text_generator` (GPT).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from mmkit.inference.text_rows import interruptions_held
from mmkit.weights.config_check import check_format_version, read_json_object
from mmkit.weights.native import CONFIG_NAME, WeightsError, full_disk_errno


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
    if not path.is_file():
        raise WeightsError(f"{directory}: not a checkpoint directory (no {CONFIG_NAME})")
    doc = read_json_object(path)
    check_format_version(doc, str(path))
    return directory, doc


def check_export_dir(directory: str | Path, error: type[Exception] = WeightsError) -> Path:
    """`directory` (expanded) if an export may be written there: a folder that does not exist yet (it is made) or
    an empty one, where files can be created (`text_rows.check_output_dir`). A folder holding files (another
    model's config.json and model.safetensors, say) is an `error` of one line: the export would overwrite them with
    a different model. An OSError of one line for a file in the way or a folder that cannot be written."""
    from mmkit.inference.text_rows import check_output_dir

    directory = check_output_dir(directory)
    try:
        held = directory.is_dir() and next(directory.iterdir(), None) is not None
    except OSError as e:  # a folder that cannot be listed
        raise OSError(f"{directory}: cannot read the folder ({e.strerror or e})") from None
    if held:
        raise error(f"{directory}: the folder holds files already (another model?) that an export would overwrite; "
                    "give a new or empty folder")
    return directory


@contextlib.contextmanager
def export_folder(directory: str | Path, error: type[Exception] = WeightsError) -> Iterator[Path]:
    """A hidden folder inside `directory` (new or empty: `check_export_dir`, else an `error`; made if new) for the
    body to fill, whose files are moved into `directory` when the body ends, config.json last (a folder is a model
    once that is there); if the body raises (a full disk, a model the target format cannot express, Ctrl-C),
    everything written is removed, and `directory` too if it was made here: an export is there whole or not at all.
    Staged inside rather than beside it, so an empty folder whose parent cannot be written (a mount point) still
    takes the export. A write failing for room is a `WriteFailed` of one line naming `directory`."""
    from mmkit.errors import WriteFailed

    directory = check_export_dir(directory, error)
    made = not directory.exists()
    try:
        with interruptions_held():  # nothing made and not yet in the `try` below
            directory.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(dir=directory, prefix=".export-"))
    except OSError as e:
        raise OSError(f"{directory}: cannot write there ({e.strerror or e})") from None
    moved: list[Path] = []
    try:
        yield stage
        for path in sorted(stage.iterdir(), key=lambda p: p.name == CONFIG_NAME):
            moved.append(directory / path.name)
            os.replace(path, directory / path.name)
        stage.rmdir()
    except BaseException as e:
        for path in moved:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        shutil.rmtree(stage, ignore_errors=True)
        if made:
            with contextlib.suppress(OSError):
                directory.rmdir()
        if isinstance(e, WriteFailed):
            raise
        if isinstance(e, OSError) and e.errno is not None:
            raise WriteFailed.of(f"write the export {directory}", e, "; nothing was written") from None
        code = full_disk_errno(e)  # safetensors' own error for a full disk
        if code is not None:
            raise WriteFailed.of(f"write the export {directory}", os.strerror(code), "; nothing was written") from None
        raise
