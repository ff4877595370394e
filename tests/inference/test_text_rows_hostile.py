"""Hostile and odd rows of the batch text tools' inputs (`mmkit.inference.text_rows`, `mmkit translate`'s
`iter_lines`): JSON nested a hundred thousand deep or holding a 100,000-digit number is one bad row reported
with its line, not a RecursionError or a run ended on a message naming no line; a UTF-8 byte order mark
before the first line is not part of the first text, nor makes the first .jsonl record unreadable."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _text_tools import write_text_tool_models

from mmkit.cli import main
from mmkit.cli.translate import iter_lines as translate_lines
from mmkit.inference.text_rows import count_text_rows, read_text_rows

DEEP = b'{"text": "a", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
LONG_NUMBER = b'{"text": "b", "x": ' + b"7" * 100_000 + b"}"
BOM = "\ufeff".encode()


def _hostile(path: Path) -> Path:
    """A .jsonl file: a good row, the two hostile rows (lines 2 and 3), a good row."""
    path.write_bytes(b'{"text": "the cat sees the moon."}\n' + DEEP + b"\n" + LONG_NUMBER + b'\n{"text": "a dog"}\n')
    return path


def test_deep_nesting_and_long_numbers_are_bad_rows_with_their_lines(tmp_path):
    path = _hostile(tmp_path / "h.jsonl")
    rows = read_text_rows(path)
    assert [(r.line, r.text) for r in rows] == [(1, "the cat sees the moon."), (2, None), (3, None), (4, "a dog")]
    assert rows[1].error == "not readable JSON (nested too deeply)"
    assert rows[2].error.startswith("not readable JSON (Exceeds the limit") and "\n" not in rows[2].error
    assert count_text_rows(path) == 4


def test_a_file_of_only_hostile_rows_is_bad_rows_not_a_wrong_text_key(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_bytes(DEEP + b"\n" + LONG_NUMBER + b"\n")
    assert count_text_rows(path) == 2 and all(r.error for r in read_text_rows(path))


def test_translate_lines_report_hostile_rows_with_their_lines(tmp_path):
    path = _hostile(tmp_path / "h.jsonl")
    got = list(translate_lines(path))
    assert got[0] == ("the cat sees the moon.", None) and got[3] == ("a dog", None)
    assert got[1] == ("", "line 2: not readable JSON (nested too deeply)")
    assert got[2][0] == "" and got[2][1].startswith("line 3: not readable JSON (Exceeds the limit")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return write_text_tool_models(tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize("tool", ["embed", "classify-text", "translate"])
def test_the_tools_skip_hostile_rows_and_go_on(models, tmp_path, capsys, tool):
    path = _hostile(tmp_path / "h.jsonl")
    out = tmp_path / "out.jsonl"
    option = "--output" if tool == "translate" else "--out"
    argv = [tool, str(path), "--model", str(models[tool]), option, str(out)]
    assert main(argv + ([] if tool == "translate" else ["--quiet"])) == 0
    err = capsys.readouterr().err
    assert "line 2: not readable JSON (nested too deeply)" in err and "Traceback" not in err
    assert "line 3: not readable JSON (Exceeds the limit" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    if tool == "translate":  # line N of the output answers line N of the input
        assert len(records) == 4 and [bool(r.get("error")) for r in records] == [False, True, True, False]
    else:
        assert [r["line"] for r in records] == [1, 4]


@pytest.mark.parametrize("suffix, first", [(".jsonl", b'{"text": "the cat"}'), (".txt", b"the cat")])
def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path, suffix, first):
    """(A .csv file's header already drops it: test_text_rows.)"""
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(BOM + first + (b'\n{"text": "a dog"}\n' if suffix == ".jsonl" else b"\na dog\n"))
    rows = read_text_rows(path)
    assert [r.text for r in rows] == ["the cat", "a dog"] and not any(r.error for r in rows)


@pytest.mark.parametrize("suffix, first", [(".jsonl", b'{"text": "the cat"}'), (".txt", b"the cat")])
def test_translate_drops_a_byte_order_mark_too(tmp_path, suffix, first):
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(BOM + first + b"\n")
    assert list(translate_lines(path)) == [("the cat", None)]


def test_a_byte_order_mark_alone_is_an_empty_first_row(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(BOM + b"\nthe cat\n")
    assert [(r.text, r.error) for r in read_text_rows(path)] == [(None, "empty text"), ("the cat", None)]


def test_embed_of_a_jsonl_file_with_a_byte_order_mark_embeds_its_first_row(models, tmp_path, capsys):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(BOM + b'{"text": "the cat sees the moon."}\n')
    assert main(["embed", str(path), "--model", str(models["embed"]), "--out", str(tmp_path / "v.npy"),
                 "--quiet"]) == 0
    assert "skipped" not in capsys.readouterr().err and not np.isnan(np.load(tmp_path / "v.npy")).any()
