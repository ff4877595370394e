"""mmkit: one shared transformer core specialised into vision, language, speech and text-to-image models."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mmkit")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
