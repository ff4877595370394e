"""Reading the batch text tools' inputs (`mmkit.inference.text_rows`): a line at a time, numbered as
`bytes.splitlines()` numbers them, in memory bounded whatever the file's size."""
from __future__ import annotations

import os
import random
import stat
import tracemalloc

import pytest

from mmkit.inference import text_rows
from mmkit.inference.text_rows import chunks, iter_lines, iter_text_rows, read_text_rows


def test_rows_are_numbered_as_splitlines_numbers_them(tmp_path):
    data = b"one\r\ntwo\rthree\n\n\xff\xfe\nfour"  # CRLF, a lone CR, an empty line, not UTF-8, no final newline
    path = tmp_path / "t.txt"
    path.write_bytes(data)
    rows = read_text_rows(path)
    assert [(r.line, r.text) for r in rows] == [(n, line.decode("utf-8", "replace") if n not in (4, 5) else None)
                                                for n, line in enumerate(data.splitlines(), 1)]
    assert [r.error for r in rows if r.error] == ["empty text", "not UTF-8 text (byte 0)"]


def test_csv_records_are_numbered_by_the_line_where_they_end(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'\xef\xbb\xbfid,text\n1,"two\nlines"\n2,caf\xe9\n3,last\n')
    rows = read_text_rows(path)
    assert [(r.line, r.text, r.fields) for r in rows] == [
        (3, "two\nlines", {"id": "1"}), (4, None, None), (5, "last", {"id": "3"})]


def test_a_large_file_is_read_in_bounded_memory(tmp_path):
    path = tmp_path / "big.jsonl"
    line = b'{"text": "' + b"word " * 30 + b'"}\n'
    with open(path, "wb") as f:
        for _ in range(100):
            f.write(line * 1000)  # 100,000 rows, ~16 MB
    tracemalloc.start()
    try:
        count = sum(len(chunk) for chunk in chunks(iter_text_rows(path), 1000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 100_000 and peak < 4_000_000  # one chunk of rows, not the file (16 MB) or its rows


@pytest.mark.parametrize("read_bytes", [1, 2, 3, 5, 1 << 16])
def test_lines_split_as_splitlines_splits_whatever_the_reads(tmp_path, monkeypatch, read_bytes):
    rng = random.Random(read_bytes)
    data = b"one\r\ntwo\rthree\n\n\r\r\n\xff\xfe\nfour\r" + bytes(rng.choice(b"ab\r\n") for _ in range(300))
    path = tmp_path / "t.txt"
    for tail in (b"", b"end", b"\r", b"\r\n"):  # the file ends inside a line, after CR, after CRLF
        path.write_bytes(data + tail)
        monkeypatch.setattr(text_rows, "_READ_BYTES", read_bytes)  # a CRLF falls across reads
        lines = list(iter_lines(path))
        assert [line.data for line in lines] == (data + tail).splitlines()
        assert [line.number for line in lines] == list(range(1, len(lines) + 1)) and not any(x.cut for x in lines)


def test_a_line_over_the_limit_keeps_its_beginning_in_txt_and_is_a_bad_row_in_jsonl(tmp_path, monkeypatch):
    monkeypatch.setattr(text_rows, "MAX_LINE_BYTES", 15)
    monkeypatch.setattr(text_rows, "_READ_BYTES", 4)
    body = "short\n" + "é" * 20 + "\nlast"  # the 15-byte cut splits the eighth "é": it is dropped, not garbled
    (tmp_path / "t.txt").write_text(body, encoding="utf-8")
    assert [(r.line, r.text) for r in read_text_rows(tmp_path / "t.txt")] == [(1, "short"), (2, "é" * 7), (3, "last")]
    (tmp_path / "t.jsonl").write_text('{"text": "ok"}\n{"text": "' + "x" * 20 + '"}\n{"text": "b"}\n')
    rows = read_text_rows(tmp_path / "t.jsonl")
    assert [(r.line, r.text) for r in rows] == [(1, "ok"), (2, None), (3, "b")]
    assert rows[1].error.startswith("a JSON record longer than")


def test_a_line_without_end_is_read_in_bounded_memory(tmp_path):
    path = tmp_path / "one_line.txt"
    with open(path, "wb") as f:
        for _ in range(24):
            f.write(b"word " * 200_000)  # 24 MB, no line break
    tracemalloc.start()
    try:
        rows = list(iter_text_rows(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(rows) == 1 and len(rows[0].text) == text_rows.MAX_LINE_BYTES and peak < 6 * text_rows.MAX_LINE_BYTES


def test_an_unreadable_csv_record_names_its_line(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    path.write_text("text,label\nfine,a\n" + "x" * 200_000 + ",b\nafter,c\n")  # over csv's field_size_limit
    with pytest.raises(ValueError, match=r"t.csv line 3: not a readable CSV record \(field larger than field limit"):
        read_text_rows(path)
    monkeypatch.setattr(text_rows, "MAX_LINE_BYTES", 100)
    path.write_text("text,label\nfine,a\n" + "y" * 150 + ",b\n")
    with pytest.raises(ValueError, match=r"t.csv line 3: longer than 0 MiB"):
        read_text_rows(path)


def test_chunks_end_at_a_row_count_or_a_character_budget(monkeypatch):
    monkeypatch.setattr(text_rows, "CHARS_PER_CHUNK", 10)
    words = ["abcd", "ef", "ghijkl", "m", "nopqrstuvwxyz", "z"]
    assert list(chunks(words, 3, chars=len)) == [["abcd", "ef", "ghijkl"], ["m", "nopqrstuvwxyz"], ["z"]]
    assert list(chunks(words, 3)) == [["abcd", "ef", "ghijkl"], ["m", "nopqrstuvwxyz", "z"]]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_permissions_of_a_plainly_created_file_not_mkstemps(tmp_path, umask):
    from mmkit.inference.writers import PredictionFile

    previous = os.umask(umask)
    try:
        written = text_rows.write_atomically(tmp_path / "vectors.jsonl", lambda f: f.write(b"{}\n"))
        predictions = PredictionFile(tmp_path / "preds.csv")
        predictions.commit()
    finally:
        os.umask(previous)
    for path in (written, tmp_path / "preds.csv"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
