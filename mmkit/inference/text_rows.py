"""Input and output rows of the text batch tools (`mmkit embed`, `mmkit classify-text`): texts from
.txt (one per line), .jsonl or .csv files, decoded line by line so one non-UTF-8 or empty row is
reported and skipped, not fatal; outputs written atomically (temp file + rename).
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

TEXT_FILE_SUFFIXES = (".txt", ".jsonl", ".csv")


@dataclass(frozen=True)
class TextRow:
    """One input row: its 1-based line (record) number, the text, or why it cannot be used."""

    line: int
    text: str | None
    error: str | None = None
    fields: dict | None = None  # the row's other columns (csv/jsonl), written back beside the result


def read_text_rows(path: str | Path, text_key: str = "text") -> list[TextRow]:
    """Rows of a .txt/.jsonl/.csv file; bad rows (not UTF-8, empty, no `text_key`) carry an error.

    Raises:
        FileNotFoundError: no such file.
        ValueError: another suffix, or a CSV without a `text_key` column.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    if path.suffix not in TEXT_FILE_SUFFIXES:
        raise ValueError(f"{path}: use a {', '.join(TEXT_FILE_SUFFIXES)} file")
    raw = path.read_bytes().splitlines()
    if path.suffix == ".csv":
        return _csv_rows(path, raw, text_key)
    rows = []
    for n, line in enumerate(raw, 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            rows.append(TextRow(n, None, f"not UTF-8 text (byte {e.start})"))
            continue
        if path.suffix == ".txt":
            rows.append(_checked(n, text))
            continue
        if not text.strip():
            continue  # blank lines between JSON records are not records
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            record = None
        value = record.get(text_key) if isinstance(record, dict) else None
        rows.append(_checked(n, value, {k: v for k, v in record.items() if k != text_key})
                    if isinstance(value, str) else TextRow(n, None, f"not a JSON object with a string {text_key!r}"))
    return rows


def _csv_rows(path: Path, raw: list[bytes], text_key: str) -> list[TextRow]:
    lines = []
    bad = []
    for n, line in enumerate(raw, 1):
        try:
            lines.append((n, line.decode("utf-8-sig" if n == 1 else "utf-8")))
        except UnicodeDecodeError as e:
            bad.append(TextRow(n, None, f"not UTF-8 text (byte {e.start})"))
    reader = csv.DictReader(io.StringIO("\n".join(t for _, t in lines)))
    if reader.fieldnames is None or text_key not in reader.fieldnames:
        raise ValueError(f"{path}: no {text_key!r} column (columns: {', '.join(reader.fieldnames or [])})")
    rows = []
    for record in reader:  # reader.line_num: the joined text's line where this record ends
        rows.append(_checked(lines[reader.line_num - 1][0], record[text_key] or "",
                             {k: v for k, v in record.items() if k != text_key}))
    return sorted(rows + bad, key=lambda r: r.line)


def _checked(line: int, text: str, fields: dict | None = None) -> TextRow:
    if not text.strip():
        return TextRow(line, None, "empty text")
    return TextRow(line, text, None, fields)


def write_atomically(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call `write(f)` on a temp file beside `path`, then rename it over `path`: readers never see
    a half-written output, and an existing output is replaced only by a complete one."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
