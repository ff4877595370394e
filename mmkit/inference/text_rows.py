"""Input and output rows of the text batch tools (`mmkit embed`, `mmkit classify-text`): texts from
.txt (one per line), .jsonl or .csv files, decoded line by line so one non-UTF-8 or empty row is
reported and skipped, not fatal; outputs written atomically (temp file + rename).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

TEXT_FILE_SUFFIXES = (".txt", ".jsonl", ".csv")
T = TypeVar("T")


@dataclass(frozen=True)
class TextRow:
    """One input row: its 1-based line (record) number, the text, or why it cannot be used."""

    line: int
    text: str | None
    error: str | None = None
    fields: dict | None = None  # the row's other columns or keys (csv/jsonl)


ROWS_PER_CHUNK = 4096  # rows a batch text tool holds at once: memory is bounded whatever the file's size


def read_text_rows(path: str | Path, text_key: str = "text") -> list[TextRow]:
    """All rows of a .txt/.jsonl/.csv file (`iter_text_rows`, as a list)."""
    return list(iter_text_rows(path, text_key))


def iter_text_rows(path: str | Path, text_key: str = "text") -> Iterator[TextRow]:
    """Rows of a .txt/.jsonl/.csv file, read line by line (memory: one line or CSV record at a time);
    bad rows (not UTF-8, empty, no `text_key`) carry an error.

    Raises (when iteration starts, before any row):
        FileNotFoundError: no such file.
        ValueError: another suffix, or a CSV without a `text_key` column.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    if path.suffix not in TEXT_FILE_SUFFIXES:
        raise ValueError(f"{path}: use a {', '.join(TEXT_FILE_SUFFIXES)} file")
    with open(path, "rb") as f:
        lines = enumerate((piece for chunk in f for piece in chunk.splitlines()), 1)  # as bytes.splitlines()
        if path.suffix == ".csv":
            yield from _csv_rows(path, lines, text_key)
            return
        for n, line in lines:
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield TextRow(n, None, f"not UTF-8 text (byte {e.start})")
                continue
            if path.suffix == ".txt":
                yield _checked(n, text)
                continue
            if not text.strip():
                continue  # blank lines between JSON records are not records
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                record = None
            value = record.get(text_key) if isinstance(record, dict) else None
            yield (_checked(n, value, {k: v for k, v in record.items() if k != text_key}) if isinstance(value, str)
                   else TextRow(n, None, f"not a JSON object with a string {text_key!r}"))


def _csv_rows(path: Path, lines: Iterator[tuple[int, bytes]], text_key: str) -> Iterator[TextRow]:
    """CSV records (one may span lines, in quotes) as rows numbered by the line where each ends; a line
    that is not UTF-8 is a bad row of its own and left out of the CSV text."""
    bad: list[TextRow] = []  # bad lines met since the last record
    last = [0]  # the number of the last line handed to the reader

    def decoded() -> Iterator[str]:
        for n, line in lines:
            try:
                text = line.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                bad.append(TextRow(n, None, f"not UTF-8 text (byte {e.start})"))
                continue
            last[0] = n
            yield text + "\n"  # a quoted field spanning lines keeps its line break

    reader = csv.DictReader(decoded())
    if reader.fieldnames is None or text_key not in reader.fieldnames:
        raise ValueError(f"{path}: no {text_key!r} column (columns: {', '.join(reader.fieldnames or [])})")
    for record in reader:
        row = _checked(last[0], record[text_key] or "", {k: v for k, v in record.items() if k != text_key})
        yield from sorted(bad + [row], key=lambda r: r.line)
        bad.clear()
    yield from bad


def chunks(rows: Iterable[T], size: int | None = None) -> Iterator[list[T]]:
    """Consecutive lists of at most `size` (default `ROWS_PER_CHUNK`) items of `rows`, read lazily."""
    size = size or ROWS_PER_CHUNK
    chunk: list[T] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _checked(line: int, text: str, fields: dict | None = None) -> TextRow:
    if not text.strip():
        return TextRow(line, None, "empty text")
    return TextRow(line, text, None, fields)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp file's path beside `path` for the body to write; renamed over `path` when the body
    ends, removed if it raises: readers never see a half-written output, and an existing output is
    replaced only by a complete one."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomically(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Call `write(f)` on a temp file beside `path`, then rename it over `path` (`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path).expanduser()
