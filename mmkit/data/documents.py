"""Training documents streamed from .txt/.jsonl files in bounded pieces, as nanoGPT's `prepare.py`
scripts stream theirs: a .txt file gives one document a paragraph (text between blank lines), a .jsonl
file one a row. Memory holds one line piece and one document, never the file: lines are read by
`mmkit.data.lines` a 64 KiB read at a time, a line at most `MAX_LINE_BYTES` at a time, and a paragraph
longer than `MAX_DOCUMENT_CHARS` is cut into documents.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from mmkit.data.lines import Block, Piece, iter_blocks, iter_line_pieces

log = logging.getLogger(__name__)
TEXT_SUFFIXES = (".txt", ".jsonl")
MAX_WARNINGS = 5  # bad lines of a file warned about one by one; the rest are counted in one line
MAX_LINE_BYTES = 1 << 20  # a longer .txt line is read in pieces of this size (nothing is lost)
MAX_RECORD_BYTES = 16 << 20  # a longer .jsonl row is a bad row: the one place a whole line is held
MAX_DOCUMENT_CHARS = 16 << 20  # a longer .txt paragraph is cut into documents of about this size
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_BLANK_TO_END = re.compile(r"[ \t]*\Z")  # what may follow the line break a paragraph break starts with
_SURROGATE = re.compile("[\ud800-\udfff]")
_CR_BREAK = re.compile("\r\n?")  # CRLF and lone-CR line breaks, read as LF (text mode's universal newlines)


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
        # A break can only start at the last line break, and only if spaces or tabs alone follow it: what
        # comes before it is settled text (so is all of `s` otherwise: a long line is never held as tail).
        k = s.rfind("\n", pos)
        k = len(s) if k < 0 or not _BLANK_TO_END.match(s, k + 1) else k
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


def _texts(blocks: Iterable[Block], bad: _BadLines) -> Iterator[str]:
    """The good lines as text, decoded a block (a read's whole lines, `lines.iter_blocks`) at a time: a
    block decodes if and only if each of its lines does, as line breaks are single ASCII bytes and a long
    line is cut between characters; one holding a bad line is decoded line (piece) by line. Line breaks
    come out as LF whatever the file has (CRLF, lone CR), so that a blank line between paragraphs of a
    Windows file is a paragraph break too (`_PARAGRAPH_BREAK` knows LF only); a block never ends between
    the CR and LF of one break (`iter_blocks` settles a CR at the end of a read with the next one)."""
    for block in blocks:
        try:
            text = block.data.decode("utf-8")
            ok = "\0" not in text
        except UnicodeDecodeError:
            ok = False
        for good in [text] if ok else filter(None, (_decode(piece, bad) for piece in block.pieces())):
            yield _CR_BREAK.sub("\n", good) if "\r" in good else good


def _txt_documents(path: Path, bad: _BadLines) -> Iterator[str]:
    return split_paragraphs(_texts(iter_blocks(path, MAX_LINE_BYTES), bad), name=str(path))


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
        IsADirectoryError: a path is a folder (`files` lists files).
        ValueError: no paths, a suffix other than .txt/.jsonl, or (at the end) no document at all.
    """
    if not paths:
        raise ValueError("no text files given (files is empty): list at least one .txt or .jsonl file")
    for path in map(Path, paths):
        if path.is_dir():
            raise IsADirectoryError(f"--data.init_args.files: {path} is a folder, not a text file: {_listed(path)}")
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


def _listed(folder: Path) -> str:
    """What to give instead of `folder` in `files`: its text files, listed (the first two, as an example)."""
    try:
        found = sorted(str(p) for p in folder.iterdir() if p.suffix in TEXT_SUFFIXES and p.is_file())
    except OSError:
        found = []
    if not found:
        return f"list the {' or '.join(TEXT_SUFFIXES)} files to read (it holds none)"
    more = ", ..." if len(found) > 2 else ""
    return f"list the files to read instead, e.g. --data.init_args.files '[{', '.join(found[:2])}{more}]'"


def read_documents(paths: Sequence[str | Path], text_key: str = "text") -> list[str]:
    """`iter_documents` as a list (for small inputs and tests)."""
    return list(iter_documents(paths, text_key))
