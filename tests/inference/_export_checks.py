"""What the tests of the folder exporters (`gpt2_dir`, `bert_dir`, `marian_dir`, `ct2_dir`, `whisper_dir`) check
alike: an error is one line, a folder that holds files is refused untouched, and an export failing midway (a full
disk while writing, or while moving the last file, config.json, into place) is a `WriteFailed` naming the folder
with nothing left: a new folder gone, an empty one empty again; an int8 export's weights within half an int8 step
of float32's.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable, Iterable

import pytest
import torch

from mmkit.errors import WriteFailed
from mmkit.weights.native import WeightsError

# parametrize a failure test over the folder the export goes to: made by it, or there and empty
EXISTING = pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "empty-folder"])


def one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message, message
    return message


def disk_full(*_args: object) -> None:
    """A stand-in for a write that meets a full disk."""
    raise OSError(errno.ENOSPC, "No space left on device")


def fail_moving_config(monkeypatch: pytest.MonkeyPatch, target: Path, moved: Iterable[str]) -> None:
    """Make moving config.json into `target` meet a full disk, once the files `moved` are there already (the
    export moves config.json last)."""
    replace = os.replace

    def failing(src, dst):
        if os.path.basename(dst) == "config.json":
            assert {p.name for p in target.iterdir()} >= set(moved)
            disk_full()
        replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)


def check_nothing_left(export: Callable[[Path], object], target: Path, existing: bool) -> None:
    """`export(target)` (a folder made here unless `existing`) fails with one line naming `target`, and takes back
    what it wrote."""
    if existing:
        target.mkdir()
    with pytest.raises(WriteFailed) as err:
        export(target)
    assert f"cannot write the export {target}: No space left on device" in one_line(err.value)
    assert (list(target.iterdir()) == []) if existing else not target.exists()


def check_held_folder_refused(export: Callable[[Path], object], tmp_path: Path, name: str = "config.json") -> None:
    """`export(folder)` into a folder that holds a file (`name`) is one line, the file left as it was."""
    held = tmp_path / "held"
    held.mkdir()
    (held / name).write_text("mine")
    with pytest.raises(WeightsError) as err:
        export(held)
    assert "holds files already" in one_line(err.value)
    assert [p.name for p in held.iterdir()] == [name] and (held / name).read_text() == "mine"


def check_within_half_int8_step(got: torch.Tensor, want: torch.Tensor, name: str = "") -> None:
    """Each value of an int8 export read back (`got`) within half its output row's int8 step of the float32 weight
    (`want`): symmetric int8, one scale per output row (max |w| / 127), as CTranslate2 quantizes."""
    if got.dim() > 1 and not torch.equal(got, want):
        got, want = got.reshape(got.shape[0], -1), want.reshape(want.shape[0], -1).float()
        step = want.abs().amax(1) / 127
        assert ((got - want).abs() <= step[:, None] / 2 * (1 + 1e-5) + 1e-7).all(), name
