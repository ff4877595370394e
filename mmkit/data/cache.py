"""Generated datasets in the cache folder: a marker file keyed on what produced the data, and an
atomic publish (build in a staging folder, rename into place) that tolerates concurrent writers
such as DDP ranks preparing the same data at once.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path


def read_marker(root: Path, marker: str) -> dict | None:
    """The `key` recorded in `root/marker`, or None when absent or unreadable."""
    try:
        return json.loads((root / marker).read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def publish_folder(staging: Path, root: Path, key: dict, marker: str) -> None:
    """Rename the finished `staging` folder to `root`, replacing an older build."""
    current = read_marker(root, marker)
    if current == key:  # a concurrent caller published the same data while we wrote ours
        return
    stale = None
    if current is not None:
        stale = root.parent / f".{root.name}.stale-{uuid.uuid4().hex}"
        try:
            root.rename(stale)
        except FileNotFoundError:  # a concurrent caller moved it first
            stale = None
    try:
        staging.rename(root)  # atomic; also replaces an empty folder
    except OSError:
        # Another process published first; its copy is as good as ours if the key matches.
        if read_marker(root, marker) != key:
            raise
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


def cache_root(root: str, default_root: str, name: str) -> Path:
    """`root`, except that the default moves under `$MMKIT_CACHE/name` when that variable is set."""
    cache = os.environ.get("MMKIT_CACHE")
    if root == default_root and cache:
        return Path(cache).expanduser() / name
    return Path(root).expanduser()
