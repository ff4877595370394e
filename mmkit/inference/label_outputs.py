"""What `mmkit label` does with an image's scores: the `label` column (top-k, threshold, the
"other" bucket, multi-label) and, with --copy-to / --link-to, the image copied or linked into a
folder per label under names made safe for any filesystem (no path traversal).
"""
from __future__ import annotations

import math
import os
import re
import shutil
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from mmkit.errors import FULL, WriteFailed

OTHER = "other"


@dataclass(frozen=True)
class Decision:
    """How scores become the `label` column: top-k, the threshold and the "other" bucket."""

    names: tuple[str, ...]
    top_k: int = 1
    threshold: float | None = None  # single-label: top score below it -> other; multi-label: cut-off
    multi_label: bool = False
    all_scores: bool = False
    other: str = OTHER

    def fields(self) -> list[str]:
        """Output columns."""
        top = [f"{kind}_{i}" for i in range(1, self.top_k + 1) for kind in ("label", "score")] if self.top_k > 1 else []
        return ["path", "label", "score", *top, *(f"score:{n}" for n in self.names if self.all_scores)]

    def row(self, path: str, scores: list[float]) -> dict[str, Any]:
        if not all(math.isfinite(s) for s in scores):  # the scorer refuses these first; never a label
            raise ValueError(f"{path}: non-finite scores {scores}")
        order = sorted(range(len(scores)), key=lambda j: -scores[j])
        best = order[0]
        if self.multi_label:
            cut = 0.5 if self.threshold is None else self.threshold
            chosen = [self.names[j] for j in order if scores[j] >= cut]
            label = "|".join(chosen) if chosen else self.other
        else:
            below = self.threshold is not None and scores[best] < self.threshold
            label = self.other if below else self.names[best]
        row: dict[str, Any] = {"path": path, "label": label, "score": round(scores[best], 6)}
        if self.top_k > 1:
            for rank, j in enumerate(order[: self.top_k], start=1):
                row[f"label_{rank}"], row[f"score_{rank}"] = self.names[j], round(scores[j], 6)
            for rank in range(len(order) + 1, self.top_k + 1):  # fewer labels than k
                row[f"label_{rank}"], row[f"score_{rank}"] = "", ""
        if self.all_scores:
            row.update({f"score:{n}": round(s, 6) for n, s in zip(self.names, scores)})
        return row

    def labels_of(self, row: dict[str, Any]) -> list[str]:
        return str(row["label"]).split("|") if self.multi_label else [str(row["label"])]



_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def safe_folder_name(label: str, max_len: int = 100) -> str:
    """A label as one path component: separators, control and reserved characters become "_",
    leading/trailing dots and spaces go, "." and ".." cannot result (no path traversal)."""
    name = _UNSAFE.sub("_", unicodedata.normalize("NFC", label)).strip(" .")
    if name.split(".")[0].upper() in _WINDOWS_RESERVED:
        name = "_" + name
    return name[:max_len].rstrip(" .") or "_"


def folder_names(labels: Iterable[str]) -> dict[str, str]:
    """Label -> distinct safe folder name (a clash after sanitising gets a "~2", "~3" suffix)."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for label in labels:
        base = name = safe_folder_name(label)
        n = 1
        while name.lower() in taken:  # case-insensitive filesystems
            n += 1
            name = f"{base}~{n}"
        taken.add(name.lower())
        out[label] = name
    return out


def place_file(source: Path, target_root: Path, folder: str, relative: str, mode: str) -> Path:
    """Copy or link `source` to target_root/folder/relative (the folder tree below DIR is kept, so
    equal names in different folders do not collide). Written under a temporary name and renamed,
    so a target is never half-copied (a failure removes the temporary file; a full disk is a `WriteFailed`
    naming both); links are hard links, or symbolic ones across filesystems."""
    target = (target_root / folder / relative)
    if not target.resolve().is_relative_to(target_root.resolve()):
        raise ValueError(f"refusing to write outside {target_root}: {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.mmkit-tmp")
    tmp.unlink(missing_ok=True)
    try:
        if mode == "copy":
            shutil.copy2(source, tmp)
        else:
            try:
                os.link(source, tmp)
            except OSError:
                os.symlink(source.resolve(), tmp)
        os.replace(tmp, target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in FULL:
            raise WriteFailed.of(f"{mode} {source} to {target}", e) from None
        raise
    return target

