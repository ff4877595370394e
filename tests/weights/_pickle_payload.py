"""A hostile pickle for the "never unpickle untrusted files" tests of the weight importers."""
from __future__ import annotations

from pathlib import Path


def write_marker(path: str) -> None:
    Path(path).write_text("executed")


class Payload:
    """Unpickling this object calls `write_marker(target)`: the classic pickle exploit shape."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return write_marker, (str(self.target),)
