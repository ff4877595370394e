"""The shared line reader (`mmkit.data.lines`): random files full of CR, LF, CRLF, multi-byte and invalid
UTF-8, read at small read and piece sizes so that a CRLF, a character or a line falls across every kind of
boundary, give exactly the lines `bytes.splitlines` gives the whole file, in memory bounded by a piece."""
from __future__ import annotations

import random
import tracemalloc

import pytest

from mmkit.data.lines import Line, Piece, decode_line, iter_blocks, iter_line_pieces, iter_lines

_ALPHABET = [b"a", b"bc", b"\r", b"\n", b"\r\n", b"\r\r\n", b"\n\r", "é".encode(), "€".encode(), "😀".encode(),
             b"\xff", b"\x80", b"\xe2\x82", b"\xf0\x9f", b"\xc0", b"\x00", b"  "]


def _random_files(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    files = [b"", b"\r", b"\n", b"\r\n", b"x", b"x\r", b"\r\r"]
    for _ in range(count):
        data = b"".join(rng.choice(_ALPHABET) if rng.random() < 0.8 else b"x" * rng.randint(1, 25)
                        for _ in range(rng.randint(0, 40)))
        files.append(data + rng.choice([b"", b"\r", b"\n", b"\r\n", b"end"]))  # how the file ends
    return files


def _need(lead: int) -> int:
    """The length of the UTF-8 sequence a byte starts (by its high bits), 1 for any other byte."""
    return 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1


def _boundary(b: bytes) -> int:
    """Where a piece of the first bytes `b` of a line ends: before the last lead byte within its last four
    bytes (not the first) if the sequence it starts is incomplete in `b`, else at its end."""
    j = next((i for i in range(len(b) - 1, max(len(b) - 5, -1), -1) if not 0x80 <= b[i] < 0xC0), None)
    return j if j and len(b) - j < _need(b[j]) else len(b)


def _expected_pieces(data: bytes, max_bytes: int) -> list[Piece]:
    """The pieces by the rule: a line whose text before its break is shorter than max_bytes (the last
    line without a break: at most max_bytes) is one piece; a longer one gives its first max_bytes bytes
    cut back to a character boundary, and the rest is a line again."""
    pieces = []
    for number, rest in enumerate(data.splitlines(keepends=True), 1):
        while True:
            body_len = len(rest) - (2 if rest.endswith(b"\r\n") else 1 if rest.endswith((b"\r", b"\n")) else 0)
            if body_len < max_bytes or (body_len == len(rest) and len(rest) <= max_bytes):
                pieces.append(Piece(number, rest))
                break
            k = _boundary(rest[:max_bytes])
            pieces.append(Piece(number, rest[:k], True))
            rest = rest[k:]
    return pieces


@pytest.mark.parametrize("max_bytes", [4, 5, 6, 9, 16])
@pytest.mark.parametrize("read_bytes", [1, 2, 3, 5, 8, 64])
def test_pieces_and_lines_are_those_of_splitlines_whatever_the_reads(tmp_path, max_bytes, read_bytes):
    path = tmp_path / "t.txt"
    for data in _random_files(max_bytes * 100 + read_bytes, 60):
        path.write_bytes(data)
        blocks = list(iter_blocks(path, max_bytes, read_bytes))
        assert b"".join(b.data for b in blocks) == data and all(b.data for b in blocks)
        pieces = list(iter_line_pieces(path, max_bytes, read_bytes))
        assert pieces == [p for b in blocks for p in b.pieces()]
        assert pieces == _expected_pieces(data, max_bytes), data
        whole: dict[int, bytes] = {}
        for p in pieces:
            assert len(p.data) <= max_bytes + (not p.cut and p.data.endswith(b"\r\n"))
            whole[p.number] = whole.get(p.number, b"") + p.data
        assert list(whole.values()) == data.splitlines(keepends=True)
        assert list(whole) == list(range(1, len(whole) + 1))
        lines = list(iter_lines(path, max_bytes, read_bytes))  # each line's first max_bytes bytes
        assert lines == [Line(n, body[:max_bytes], len(body) > max_bytes)
                         for n, body in enumerate(data.splitlines(), 1)], data


def test_pieces_of_utf8_text_are_cut_between_characters(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "t.txt"
    for _ in range(200):
        text = "".join(rng.choice(["a", "é", "€", "😀", "\n", "\r\n", "\r"]) for _ in range(rng.randint(0, 60)))
        path.write_text(text, encoding="utf-8", newline="")
        for max_bytes in (4, 5, 7):
            pieces = list(iter_line_pieces(path, max_bytes, 3))
            assert "".join(p.data.decode("utf-8") for p in pieces) == text  # every piece decodes alone
            assert all(len(p.data) > max_bytes - 4 for p in pieces if p.cut)  # cut back by at most 3 bytes
            for line in iter_lines(path, max_bytes, 3):
                assert decode_line(line) == line.data.decode("utf-8", "ignore")  # a split character is dropped


def test_a_long_line_is_read_in_memory_bounded_by_a_piece(tmp_path):
    path = tmp_path / "long.txt"
    path.write_bytes(b"first\n" + b"word " * 800_000 + b"\r\nlast")  # a 4 MB line
    limit = 1 << 18
    tracemalloc.start()
    try:
        pieces = sum(1 for _ in iter_line_pieces(path, limit))
        pieces_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        lines = [(line.number, len(line.data), line.cut) for line in iter_lines(path, limit)]
        lines_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the pieces: the read buffer (a piece and a read), the piece being cut and the one just given
    assert pieces == 2 + 4_000_000 // limit + 1 and pieces_peak < 4 * limit
    # the lines: a read-sized piece, the line's first `limit` bytes and their join
    assert lines == [(1, 5, False), (2, limit, True), (3, 4, False)] and lines_peak < 3 * limit


def test_limits_below_a_utf8_character_are_refused(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"abc\n")
    for read in (lambda p: iter_blocks(p, 3), lambda p: iter_lines(p, 3), lambda p: iter_blocks(p, 4, 0)):
        with pytest.raises(ValueError, match="at least"):
            list(read(tmp_path / "t.txt"))
