"""Input and output rows of the text batch tools (`mmkit embed`, `mmkit classify-text`; `mmkit translate`
reads its lines with `iter_lines` too): texts from .txt (one per line), .jsonl or .csv files, read in
bounded pieces (a line holds at most `MAX_LINE_BYTES`) and decoded line by line so one non-UTF-8 or empty
row is reported and skipped, not fatal; outputs written atomically (temp file + rename).
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
from typing import Callable, Iterable, Iterator, NamedTuple, TypeVar

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
CHARS_PER_CHUNK = 16 << 20  # ... and at most about this many characters of text in those rows
MAX_LINE_BYTES = 1 << 20  # a longer line keeps its first MiB: far beyond any model's context (512 tokens or so)
_READ_BYTES = 1 << 16


class Line(NamedTuple):
    """One line of a file: its 1-based number, its bytes without the line break, and whether it was
    longer than `MAX_LINE_BYTES` and cut to its first `MAX_LINE_BYTES`."""

    number: int
    data: bytes
    cut: bool = False


def iter_lines(path: str | Path) -> Iterator[Line]:
    """The lines of a file as `bytes.splitlines()` splits them (at LF, CRLF or a lone CR; a final line
    break ends the last line, it does not start another), read `_READ_BYTES` at a time: memory holds at
    most one `MAX_LINE_BYTES` line, however long the file's lines or the file."""
    with open(Path(path).expanduser(), "rb") as f:
        number, parts, size, cut, after_cr = 0, [], 0, False, False
        while block := f.read(_READ_BYTES):
            if after_cr and block.startswith(b"\n"):
                block = block[1:]  # the LF of a CRLF that the previous read split
            after_cr = block.endswith(b"\r")
            for piece in block.splitlines(keepends=True):
                ending = 2 if piece.endswith(b"\r\n") else 1 if piece.endswith((b"\n", b"\r")) else 0
                body = piece[:len(piece) - ending]
                if size + len(body) > MAX_LINE_BYTES:
                    body, cut = body[:MAX_LINE_BYTES - size], True
                if body:
                    parts.append(body)
                    size += len(body)
                if ending:
                    number += 1
                    yield Line(number, b"".join(parts), cut)
                    parts, size, cut = [], 0, False
        if parts or cut:
            yield Line(number + 1, b"".join(parts), cut)


def decode_line(line: Line, encoding: str = "utf-8") -> str:
    """The line as text; a cut line loses the incomplete character the cut may have split.

    Raises:
        UnicodeDecodeError: bytes that are not `encoding` text.
    """
    try:
        return line.data.decode(encoding)
    except UnicodeDecodeError as e:
        if line.cut and e.reason == "unexpected end of data" and e.start >= len(line.data) - 3:
            return line.data[:e.start].decode(encoding)
        raise


def read_text_rows(path: str | Path, text_key: str = "text") -> list[TextRow]:
    """All rows of a .txt/.jsonl/.csv file (`iter_text_rows`, as a list)."""
    return list(iter_text_rows(path, text_key))


def iter_text_rows(path: str | Path, text_key: str = "text") -> Iterator[TextRow]:
    """Rows of a .txt/.jsonl/.csv file, read line by line (memory: one line or CSV record at a time);
    bad rows (not UTF-8, empty, no `text_key`) carry an error.

    A line longer than `MAX_LINE_BYTES` keeps its first MiB in a .txt file (a model reads far less of
    it) and is a bad row in a .jsonl file (the record is cut).

    Raises (when iteration starts, before any row):
        FileNotFoundError: no such file.
        ValueError: another suffix, or a CSV without a `text_key` column; or, after rows, a CSV record
            that cannot be read (`_csv_rows`).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    if path.suffix not in TEXT_FILE_SUFFIXES:
        raise ValueError(f"{path}: use a {', '.join(TEXT_FILE_SUFFIXES)} file")
    lines = iter_lines(path)
    if path.suffix == ".csv":
        yield from _csv_rows(path, lines, text_key)
        return
    for line in lines:
        n = line.number
        try:
            text = decode_line(line)
        except UnicodeDecodeError as e:
            yield TextRow(n, None, f"not UTF-8 text (byte {e.start})")
            continue
        if path.suffix == ".txt":
            yield _checked(n, text)
            continue
        if line.cut:
            yield TextRow(n, None, f"a JSON record longer than {MAX_LINE_BYTES >> 20} MiB")
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


def _csv_rows(path: Path, lines: Iterator[Line], text_key: str) -> Iterator[TextRow]:
    """CSV records (one may span lines, in quotes) as rows numbered by the line where each ends; a line
    that is not UTF-8 is a bad row of its own and left out of the CSV text. A line longer than
    `MAX_LINE_BYTES`, or a record the csv module cannot read (a field over its `field_size_limit`),
    raises ValueError naming the line: after it, where the next record starts is unknown."""
    bad: list[TextRow] = []  # bad lines met since the last record
    last = [0]  # the number of the last line handed to the reader

    def decoded() -> Iterator[str]:
        for line in lines:
            if line.cut:
                raise ValueError(f"{path} line {line.number}: longer than {MAX_LINE_BYTES >> 20} MiB; a CSV file's "
                                 "lines must be shorter (put long texts in a .txt or .jsonl file)")
            try:
                text = decode_line(line, "utf-8-sig" if line.number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                bad.append(TextRow(line.number, None, f"not UTF-8 text (byte {e.start})"))
                continue
            last[0] = line.number
            yield text + "\n"  # a quoted field spanning lines keeps its line break

    reader = csv.DictReader(decoded())
    try:
        if reader.fieldnames is None or text_key not in reader.fieldnames:
            raise ValueError(f"{path}: no {text_key!r} column (columns: {', '.join(reader.fieldnames or [])})")
        for record in reader:
            row = _checked(last[0], record[text_key] or "", {k: v for k, v in record.items() if k != text_key})
            yield from sorted(bad + [row], key=lambda r: r.line)
            bad.clear()
    except csv.Error as e:  # e.g. "field larger than field limit (131072)"
        hint = "; put long texts in a .txt or .jsonl file" if "field limit" in str(e) else ""
        raise ValueError(f"{path} line {last[0]}: not a readable CSV record ({e}){hint}") from None
    yield from bad


def chunks(rows: Iterable[T], size: int | None = None, chars: Callable[[T], int] | None = None) -> Iterator[list[T]]:
    """Consecutive lists of `rows`, read lazily: at most `size` (default `ROWS_PER_CHUNK`) items, and
    where `chars` gives an item's length in characters, ending as soon as they hold `CHARS_PER_CHUNK`."""
    size = size or ROWS_PER_CHUNK
    chunk: list[T] = []
    held = 0
    for row in rows:
        chunk.append(row)
        held += chars(row) if chars else 0
        if len(chunk) == size or held >= CHARS_PER_CHUNK:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def _checked(line: int, text: str, fields: dict | None = None) -> TextRow:
    if not text.strip():
        return TextRow(line, None, "empty text")
    return TextRow(line, text, None, fields)


def temp_beside(path: Path) -> tuple[int, Path]:
    """(an open descriptor, the path) of a new hidden temp file in `path`'s folder, for an output
    renamed over `path` when complete. It gets the permissions a plainly created file would (0666 less
    the umask), not `mkstemp`'s owner-only 0600, so the renamed output is readable as any other."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp file's path beside `path` for the body to write; renamed over `path` when the body
    ends, removed if it raises: readers never see a half-written output, and an existing output is
    replaced only by a complete one."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
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
