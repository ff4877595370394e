"""Training documents streamed from .txt/.jsonl files in bounded pieces, as nanoGPT's `prepare.py`
scripts stream theirs: a .txt file gives one document a paragraph (text between blank lines), a .jsonl
file one a row. Memory holds one line piece and one document, never the file: a line is read at most
`MAX_LINE_BYTES` at a time, and a paragraph longer than `MAX_DOCUMENT_CHARS` is cut into documents.
"""
from __future__ import annotations

import itertools
import json
import logging
import re
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

log = logging.getLogger(__name__)
TEXT_SUFFIXES = (".txt", ".jsonl")
MAX_WARNINGS = 5  # bad lines of a file warned about one by one; the rest are counted in one line
MAX_LINE_BYTES = 1 << 20  # a longer .txt line is read in pieces of this size (nothing is lost)
MAX_RECORD_BYTES = 16 << 20  # a longer .jsonl row is a bad row: the one place a whole line is held
MAX_DOCUMENT_CHARS = 16 << 20  # a longer .txt paragraph is cut into documents of about this size
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_SURROGATE = re.compile("[\ud800-\udfff]")


class Piece(NamedTuple):
    """A line of a file as `bytes.splitlines(keepends=True)` gives it (`data` ends with its line break,
    except the file's last line), or, for a line longer than the reader's limit, one piece of it:
    `cut` is True on every piece but the last, which carries the line break. `number` is 1-based."""

    number: int
    data: bytes
    cut: bool = False


def iter_line_pieces(path: str | Path, max_bytes: int = MAX_LINE_BYTES) -> Iterator[Piece]:
    """The lines of `path` split at LF, CRLF or a lone CR exactly as `bytes.splitlines(keepends=True)`
    splits the whole file, read a line (at most `max_bytes`) at a time. A longer line comes in pieces
    cut between UTF-8 characters, whose concatenation is the line."""
    with open(path, "rb") as f:
        number, carry = 0, b""
        while True:
            data = carry + f.readline(max_bytes - len(carry))  # stops at LF; a CR needs splitlines
            if data.endswith(b"\r") and f.peek(1)[:1] == b"\n":
                data += f.read(1)  # the LF of a CRLF that the limit split
            if not data:
                return
            at_end = not f.peek(1)
            lines = data.splitlines(keepends=True)
            last = lines[-1]
            whole = last.endswith((b"\n", b"\r")) or at_end
            for line in lines if whole else lines[:-1]:
                number += 1
                yield Piece(number, line)
            carry = b""
            if not whole:
                if len(last) < max_bytes:
                    carry = last  # the start of a line after CR-separated ones: read on
                else:
                    cut = _utf8_boundary(last)
                    yield Piece(number + 1, last[:cut], True)
                    carry = last[cut:]


def _utf8_boundary(data: bytes) -> int:
    """The end of the last complete UTF-8 character in `data` (its length unless one is split)."""
    i = len(data) - 1
    while i > 0 and len(data) - i < 4 and data[i] & 0xC0 == 0x80:  # continuation bytes
        i -= 1
    lead = data[i]
    need = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1
    return i if 0 < i and len(data) - i < need else len(data)


class _BadLines:
    """Skipped lines of one file: the first MAX_WARNINGS are logged one by one, `done` logs the total."""

    def __init__(self, path: Path) -> None:
        self.path, self.count = path, 0

    def skip(self, n: int, why: str) -> None:
        self.count += 1
        if self.count <= MAX_WARNINGS:
            log.warning("skipping %s line %d: %s", self.path, n, why)

    def done(self) -> None:
        if self.count > MAX_WARNINGS:
            log.warning("skipped %d bad lines of %s in all (the first %d are listed above)",
                        self.count, self.path, MAX_WARNINGS)


def _decode(piece: Piece, bad: _BadLines) -> str | None:
    """The piece as text, or None (reported) when it is not UTF-8 text without NUL."""
    try:
        text = piece.data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad.skip(piece.number, f"not UTF-8 text (byte {e.start} of the line)")
        return None
    if "\0" in text:
        bad.skip(piece.number, "NUL bytes (binary or UTF-16 text?), not UTF-8 text")
        return None
    return text


def split_paragraphs(texts: Iterable[str], max_chars: int = MAX_DOCUMENT_CHARS, name: str = "text") -> Iterator[str]:
    """`_PARAGRAPH_BREAK.split("".join(texts))`, holding one paragraph at a time; a paragraph of more
    than `max_chars` characters is given in parts of about that size (cut at a line break if any)."""
    parts: list[str] = []  # the paragraph so far, before `tail`
    size, tail, skip_space, warned = 0, "", False, False
    for text in texts:
        if skip_space:  # a break ends with \s*: whitespace after one at the end of a text is part of it
            text = text.lstrip()
            if not text:
                continue
            skip_space = False
        s, pos = tail + text, 0
        while m := _PARAGRAPH_BREAK.search(s, pos):
            yield "".join(parts) + s[pos:m.start()]
            parts, size, pos = [], 0, m.end()
            if pos == len(s):
                skip_space = True
                break
        # A break can only start at the last line break; what comes before it is settled text.
        k = s.rfind("\n", pos)
        k = len(s) if k < 0 else k
        if k > pos:
            parts.append(s[pos:k])
            size += k - pos
        tail = s[k:]
        if size > max_chars:
            if not warned:
                log.warning("%s: a paragraph longer than %d characters is cut into documents of that size",
                            name, max_chars)
                warned = True
            yield "".join(parts)
            parts, size = [], 0
    if parts or tail:
        yield "".join(parts) + tail


def _texts(pieces: Iterable[Piece], bad: _BadLines, run_bytes: int = 1 << 16) -> Iterator[str]:
    """The good pieces as text, decoded a run of lines at a time (a run decodes if and only if each of
    its lines does, as line breaks are single ASCII bytes), one by one where a run holds a bad line."""
    run: list[Piece] = []
    size = 0
    for piece in itertools.chain(pieces, [None]):
        if piece is not None:
            run.append(piece)
            size += len(piece.data)
        if run and (piece is None or size >= run_bytes):
            try:
                text = b"".join(p.data for p in run).decode("utf-8")
                ok = "\0" not in text
            except UnicodeDecodeError:
                ok = False
            yield from [text] if ok else filter(None, (_decode(p, bad) for p in run))
            run, size = [], 0


def _txt_documents(path: Path, bad: _BadLines) -> Iterator[str]:
    return split_paragraphs(_texts(iter_line_pieces(path), bad), name=str(path))


def _jsonl_documents(path: Path, text_key: str, bad: _BadLines) -> Iterator[str]:
    long_row = 0  # the number of a row longer than MAX_RECORD_BYTES, while its pieces go by
    for piece in iter_line_pieces(path, MAX_RECORD_BYTES):
        if piece.cut or piece.number == long_row:
            if piece.number != long_row:
                long_row = piece.number
                bad.skip(piece.number, f"a JSON record longer than {MAX_RECORD_BYTES >> 20} MiB")
            continue
        line = _decode(piece, bad)
        if line is None or not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        doc = row.get(text_key) if isinstance(row, dict) else None
        if not isinstance(doc, str):
            bad.skip(piece.number, f"not a JSON object with a string {text_key!r}")
        elif _SURROGATE.search(doc):
            bad.skip(piece.number, f"{text_key!r} holds an unpaired surrogate escape (\\ud800-\\udfff), "
                     "not valid Unicode")
        else:
            yield doc


def iter_documents(paths: Sequence[str | Path], text_key: str = "text") -> Iterator[str]:
    """Documents from .txt files (one per paragraph: text between blank lines, so a single long
    file still yields a held-out share) and .jsonl files (one per row, `text_key`), in file order,
    without the whitespace-only ones. Bad lines (not UTF-8, NUL bytes, rows without a valid string
    `text_key`) are logged and skipped: the first `MAX_WARNINGS` of a file one by one, then one line
    with the file's total. Every path is checked before the first document.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: no paths, a suffix other than .txt/.jsonl, or (at the end) no document at all.
    """
    if not paths:
        raise ValueError("no text files given (files is empty): list at least one .txt or .jsonl file")
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"text file not found: {path}")
        if path.suffix not in TEXT_SUFFIXES:
            raise ValueError(f"{path}: use {' or '.join(TEXT_SUFFIXES)} files")
    found = False
    for path in map(Path, paths):
        bad = _BadLines(path)
        docs = _txt_documents(path, bad) if path.suffix == ".txt" else _jsonl_documents(path, text_key, bad)
        for doc in docs:
            if doc.strip():
                found = True
                yield doc
        bad.done()
    if not found:
        raise ValueError(f"no text in {', '.join(map(str, paths))}")


def read_documents(paths: Sequence[str | Path], text_key: str = "text") -> list[str]:
    """`iter_documents` as a list (for small inputs and tests)."""
    return list(iter_documents(paths, text_key))
