"""Reading the batch text tools' inputs (`mmkit.inference.text_rows`): a line at a time, numbered as
`bytes.splitlines()` numbers them, in memory bounded whatever the file's size."""
from __future__ import annotations

import tracemalloc

from mmkit.inference.text_rows import chunks, iter_text_rows, read_text_rows


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
