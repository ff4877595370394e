"""A file's lines read in bounded memory: the one line reader of the training corpora (`documents`) and the
batch text tools (`mmkit.inference.text_rows`: `mmkit embed`, `classify-text`, `translate`).

Lines are split at LF, CRLF or a lone CR exactly as `bytes.splitlines` splits the whole file, but the file is
read `READ_BYTES` at a time: memory holds one read and at most one `max_bytes` piece of a line, however long
the file or its lines. `iter_blocks` gives the lines a read at a time, as one `bytes` object each (decoding
or splitting 64 KiB of lines at once costs far less than handling each line in Python: a corpus of short
lines is read as fast as a whole-file `read().splitlines()`); `iter_line_pieces` and `iter_lines` give them
one by one.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator, NamedTuple

READ_BYTES = 1 << 16  # bytes a read asks for
MAX_LINE_BYTES = 1 << 20  # `iter_lines`: a longer line keeps its first MiB (far beyond any model's context)


class Piece(NamedTuple):
    """A line of a file as `bytes.splitlines(keepends=True)` gives it (`data` ends with its line break,
    except the file's last line), or, for a line longer than the reader's limit, one piece of it:
    `cut` is True on every piece but the last, which carries the line break. `number` is 1-based."""

    number: int
    data: bytes
    cut: bool = False


class Block(NamedTuple):
    """Consecutive lines of a file, `data` their bytes with their line breaks, the first being line
    `number` (1-based); or, when `cut`, one piece of line `number` (a line whose text before its break is
    `max_bytes` or longer) that the next block continues. A block that does not start a line starts with
    the rest of a line cut before; every line in it ends with its break but the file's last line."""

    number: int
    data: bytes
    cut: bool = False

    def pieces(self) -> list[Piece]:
        """The block as `iter_line_pieces` gives it: its lines (or its one piece) numbered from `number`."""
        if self.cut:
            return [Piece(self.number, self.data, True)]
        return list(map(Piece, itertools.count(self.number), self.data.splitlines(keepends=True)))


def iter_blocks(path: str | Path, max_bytes: int = MAX_LINE_BYTES, read_bytes: int = READ_BYTES) -> Iterator[Block]:
    """The lines of `path` (split as `bytes.splitlines(keepends=True)` splits the whole file), a read of
    `read_bytes` (at most `max_bytes`) at a time, as `Block`s: the whole lines a read completes, or a piece
    of a line. A line is one piece when the text before its break is shorter than `max_bytes` (the file's
    last line, without a break, when it is at most `max_bytes`); a longer one comes in pieces of its first
    `max_bytes` bytes cut back to the last complete UTF-8 character, then the rest as a whole line or in
    pieces again. Memory: a buffer of at most `max_bytes` + `read_bytes` bytes and the block given.

    Raises:
        ValueError: `max_bytes` below 4 (a piece must have room for any UTF-8 character) or `read_bytes`
            below 1.
    """
    if max_bytes < 4 or read_bytes < 1:
        raise ValueError(f"max_bytes must be at least 4 and read_bytes at least 1, not {max_bytes} and {read_bytes}")
    # Reads of at most max_bytes bytes: a line begun before the last read is the only one that may be
    # max_bytes long, so only the first line of `buf` is ever looked at on its own.
    size = min(read_bytes, max_bytes)
    with open(path, "rb") as f:
        number, buf, eof = 1, bytearray(), False
        clean = 0  # the first line of `buf` holds no line break in buf[:clean]
        while not eof:
            block = f.read(size)
            eof = not block
            buf += block
            while buf:
                # a CR ending `buf` may be the first half of a CRLF: the next read settles it
                lim = len(buf) - 1 if buf[-1] == 0x0D and not eof else len(buf)
                head = min(lim, max_bytes)  # a break here ends a first line that is one piece
                if clean < head and (buf.find(b"\n", clean, head) >= 0 or buf.find(b"\r", clean, head) >= 0):
                    end = max(buf.rfind(b"\n", 0, lim), buf.rfind(b"\r", 0, lim)) + 1
                    data = _take(buf, end)
                    yield Block(number, data, False)
                    crs = data.count(b"\r")
                    number += data.count(b"\n") + (crs and crs - data.count(b"\r\n"))
                    clean = 0
                elif len(buf) > max_bytes:  # the first max_bytes bytes of a line, without its break
                    data = _take(buf, _utf8_boundary(buf, max_bytes))
                    yield Block(number, data, True)
                    clean = max_bytes - len(data)
                elif eof:
                    yield Block(number, _take(buf, len(buf)), False)
                else:
                    clean = lim
                    break


def _take(buf: bytearray, end: int) -> bytes:
    """buf[:end] as bytes, removed from `buf` (one copy)."""
    with memoryview(buf) as view:
        data = bytes(view[:end])
    del buf[:end]
    return data


def _utf8_boundary(data: bytes | bytearray, end: int) -> int:
    """The end of the last complete UTF-8 character in data[:end] (`end` unless one is split there)."""
    i = end - 1
    while i > 0 and end - i < 4 and data[i] & 0xC0 == 0x80:  # continuation bytes
        i -= 1
    lead = data[i]
    need = 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1
    return i if 0 < i and end - i < need else end


def iter_line_pieces(path: str | Path, max_bytes: int = MAX_LINE_BYTES,
                     read_bytes: int = READ_BYTES) -> Iterator[Piece]:
    """The lines of `path` split at LF, CRLF or a lone CR exactly as `bytes.splitlines(keepends=True)`
    splits the whole file, each with its number. A line whose text before the break is `max_bytes` or
    longer comes in pieces cut between UTF-8 characters (`iter_blocks`), whose concatenation is the line."""
    for block in iter_blocks(path, max_bytes, read_bytes):
        yield from block.pieces()


class Line(NamedTuple):
    """One line of a file: its 1-based number, its bytes without the line break, and whether it was
    longer than the limit (`MAX_LINE_BYTES`) and cut to its first that many bytes."""

    number: int
    data: bytes
    cut: bool = False


def iter_lines(path: str | Path, max_bytes: int = MAX_LINE_BYTES, read_bytes: int = READ_BYTES) -> Iterator[Line]:
    """The lines of a file as `bytes.splitlines()` splits them (at LF, CRLF or a lone CR; a final line
    break ends the last line, it does not start another), each keeping its first `max_bytes` bytes (`cut`
    if it had more). A long line is read in pieces of a read's size and only its first `max_bytes` kept:
    memory holds about twice `max_bytes` (the kept pieces and their join) at most, however long the lines
    or the file.

    Raises:
        ValueError: `max_bytes` below 4 or `read_bytes` below 1.
    """
    if max_bytes < 4:
        raise ValueError(f"max_bytes must be at least 4, not {max_bytes}")
    # Any piece size works, as a line's pieces are joined: one no larger than a read keeps the reader's
    # memory small, and no larger than max_bytes makes every line of a whole-line block short enough.
    piece_bytes = max(4, min(max_bytes, read_bytes))
    parts: list[bytes] = []  # the first max_bytes bytes so far of a line read in pieces
    size, cut = 0, False
    for block in iter_blocks(path, piece_bytes, read_bytes):
        if block.cut:
            keep = block.data[:max_bytes - size]
            if keep:
                parts.append(keep)
            size, cut = size + len(keep), cut or len(keep) < len(block.data)
            continue
        lines = block.data.splitlines()
        number, start = block.number, 0
        if parts:  # the block starts with the end of a line read in pieces
            keep = lines[0][:max_bytes - size]
            yield Line(number, b"".join(parts + [keep]), cut or len(keep) < len(lines[0]))
            parts, size, cut = [], 0, False
            number, start = number + 1, 1
        yield from map(Line, itertools.count(number), itertools.islice(lines, start, None))


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
