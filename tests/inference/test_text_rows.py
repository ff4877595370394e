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


@pytest.mark.parametrize("text, problem", [
    ("a cat", None), ("\u0300", None), ("\u200bcat", None),  # a combining mark shows; so does a word after U+200B
    ("   \t", "empty text"), ("\x1c\x1f", "empty text"),  # str.isspace() counts \x1c-\x1f as whitespace
    ("\x01\x02", "empty text (only control or invisible characters)"),
    ("\u200b\ufeff\u00ad", "empty text (only control or invisible characters)"),  # zero-width space, BOM, soft hyphen
    ("\u3164 \u2800", "empty text (only control or invisible characters)"),  # Hangul filler, blank Braille
    ("c\x00a\x00t\x00", "holds NUL bytes (UTF-16 text? save it as UTF-8)"),
])
def test_a_text_without_a_visible_character_is_empty(text, problem):
    assert text_rows.text_problem(text) == problem


def test_lines_of_control_or_invisible_characters_and_utf16_are_bad_rows(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"cat\n\x01\x02\n\xe2\x80\x8b\n\x00\n")
    assert [(r.line, r.text, r.error) for r in read_text_rows(path)] == [
        (1, "cat", None), (2, None, "empty text (only control or invisible characters)"),
        (3, None, "empty text (only control or invisible characters)"),
        (4, None, "holds NUL bytes (UTF-16 text? save it as UTF-8)")]
    path.write_bytes("the cat\nthe dog\n".encode("utf-16"))
    rows = read_text_rows(path)
    assert rows[0].error == "not UTF-8 text (byte 0); UTF-16 text? save it as UTF-8"
    assert [r.error for r in rows[1:]] == ["holds NUL bytes (UTF-16 text? save it as UTF-8)"] * 2
    csv_path = tmp_path / "t.csv"
    csv_path.write_bytes("text\nthe cat\n".encode("utf-16"))  # its header was skipped: a record became the header
    with pytest.raises(ValueError, match=r"t.csv line 1: the header is not UTF-8 text .*UTF-16 text\?"):
        read_text_rows(csv_path)


@pytest.mark.parametrize("body, line", [('text,n\nthe cat,1\n"unterminated,3\nthe dog,4\n', 3),
                                        ('text,n\n"two\nlines",1\n\n"open,2\n', 5)])
def test_a_csv_quote_never_closed_names_the_line_of_its_record(tmp_path, body, line):
    path = tmp_path / "t.csv"
    path.write_text(body)  # a lenient reader made the rest of the file one text
    with pytest.raises(ValueError, match=rf"t.csv line {line}: a quoted field .* never closed"):
        read_text_rows(path)


def test_csv_text_after_a_closing_quote_is_refused_not_mangled(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('text\nfine\n"he said "hi" twice"\n')  # a lenient reader gave 'he said hi" twice"'
    with pytest.raises(ValueError, match=r"t.csv line 3: not a readable CSV record \(',' expected after"):
        read_text_rows(path)


def test_a_jsonl_file_without_the_text_key_is_an_error_when_counted(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a cat"}\n{"body": "x"}\n')
    assert text_rows.count_text_rows(path) == 2  # one row has it: the other is a bad row, not an error
    with pytest.raises(ValueError, match=r"t.jsonl: no row is a JSON object with a string 'nobody' field"):
        text_rows.count_text_rows(path, "nobody")
    path.write_text("")
    assert text_rows.count_text_rows(path, "nobody") == 0


def test_inputs_that_are_not_regular_files_are_named_so(tmp_path):
    with pytest.raises(ValueError, match="/dev/null: not a regular file"):
        read_text_rows("/dev/null")
    (tmp_path / "d.txt").mkdir()
    with pytest.raises(ValueError, match="d.txt: not a regular file"):
        read_text_rows(tmp_path / "d.txt")
    with pytest.raises(FileNotFoundError, match="input file not found"):
        read_text_rows(tmp_path / "none.txt")


def test_check_output_probes_the_location_in_one_line_and_leaves_nothing(tmp_path):
    (tmp_path / "folder.npy").mkdir()
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "folder.npy", "it is a folder"), (tmp_path / "file" / "v.npy", "is not a folder"),
                         (tmp_path / "file" / "sub" / "v.npy", "file is not a folder"),
                         ("/proc/v.npy", "no file can be made in /proc")):
        with pytest.raises(OSError, match=f"cannot write {out}: .*{message}") as e:
            text_rows.check_output(out)
        assert "\n" not in str(e.value)
    assert text_rows.check_output(tmp_path / "new" / "v.npy") == tmp_path / "new" / "v.npy"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file", "folder.npy"]  # no temp file, no folder made


def test_atomic_path_failing_to_rename_is_one_line_and_leaves_no_temp_file(tmp_path):
    out = tmp_path / "v.jsonl"
    with pytest.raises(OSError, match=r"cannot write .*v.jsonl: Is a directory; nothing was written"):
        with text_rows.atomic_path(out) as tmp:
            tmp.write_text("{}\n")
            out.mkdir()  # a folder appears at the output while it is written
    assert [p.name for p in tmp_path.iterdir()] == ["v.jsonl"] and out.is_dir()
