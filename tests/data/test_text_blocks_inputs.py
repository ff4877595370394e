"""Bad inputs to the text DataModule: a bad line costs that line only, bad rows are reported (the first
few one by one, then a total) and skipped, and a corpus that cannot be used says why in one line."""
from __future__ import annotations

import json
import logging
import tracemalloc

import pytest
from _gpt import tiny_corpus, tiny_tokenizer

from mmkit.data.text_blocks import MAX_WARNINGS, TextBlocksDataModule, read_documents


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_non_utf8_line_skips_that_line_not_the_file(tmp_path, caplog):
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"First paragraph.\n\nCaf\xe9 in Latin-1.\nStill the second.\n\nThird one.\n")
    with caplog.at_level(logging.WARNING):
        docs = read_documents([path])
    assert docs == ["First paragraph.", "Still the second.", "Third one.\n"]
    assert _warnings(caplog) == [f"skipping {path} line 3: not UTF-8 text (byte 3 of the line)"]


def test_utf16_and_nul_lines_are_skipped_not_read_as_text(tmp_path, caplog):
    path = tmp_path / "utf16.txt"
    path.write_bytes("one\n\ntwo\n".encode("utf-16"))
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="no text in"):
        read_documents([path])
    assert "NUL bytes" in caplog.text


def test_a_lone_surrogate_is_a_bad_row(tmp_path, caplog):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "good row"}\n{"text": "bad \\ud800 row"}\n{"text": "paired \\ud83d\\ude00 ok"}\n')
    with caplog.at_level(logging.WARNING):
        docs = read_documents([path])
    assert docs == ["good row", "paired \U0001F600 ok"]
    assert _warnings(caplog) == [f"skipping {path} line 2: 'text' holds an unpaired surrogate escape "
                                 "(\\ud800-\\udfff), not valid Unicode"]


def test_warnings_are_capped_per_file_with_a_total(tmp_path, caplog):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "kept"}\n' + '{"title": "no text"}\n' * 200)
    with caplog.at_level(logging.WARNING):
        assert read_documents([path]) == ["kept"]
    warnings = _warnings(caplog)
    assert len(warnings) == MAX_WARNINGS + 1
    assert warnings[0] == f"skipping {path} line 2: not a JSON object with a string 'text'"
    assert warnings[-1] == f"skipped 200 bad lines of {path} in all (the first {MAX_WARNINGS} are listed above)"


def _setup(tmp_path, text: str, **kw):
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    TextBlocksDataModule(files=[str(path)], vocab_size=300, **kw).setup("fit")


def test_a_file_without_blank_lines_says_documents_are_separated_by_them(tmp_path):
    with pytest.raises(ValueError, match=r"1 training and 0 held-out documents: 1 document in all \(in .txt files "
                                         "documents are separated by blank lines"):
        _setup(tmp_path, "\n".join(tiny_corpus(300)))


def test_identical_documents_are_named_as_such(tmp_path):
    with pytest.raises(ValueError, match="all 200 documents are identical; give more text or change val_fraction"):
        _setup(tmp_path, "The same paragraph.\n\n" * 200)
    with pytest.raises(ValueError, match="only 2 distinct among 200 documents"):
        _setup(tmp_path, "One paragraph.\n\nAnother one.\n\n" * 100)


def test_a_held_out_split_too_short_for_a_block_names_the_split(tmp_path):
    with pytest.raises(ValueError, match=r"the held-out split is too short: \d+ tokens do not fill one block of 129; "
                                         "raise val_fraction, lower block_size"):
        _setup(tmp_path, "\n\n".join(tiny_corpus(100)), val_fraction=0.02)


def test_a_tokenizer_file_instead_of_a_folder_is_refused(tmp_path):
    (tmp_path / "ok.txt").write_text("x")
    with pytest.raises(ValueError, match=f"tokenizer must be a folder .*, but {tmp_path / 'ok.txt'} is a file"):
        TextBlocksDataModule(files=[str(tmp_path / "ok.txt")], tokenizer=str(tmp_path / "ok.txt"))


def test_no_files_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"no text files given \(files is empty\)"):
        TextBlocksDataModule(files=[]).setup("fit")


def test_peak_python_memory_is_a_small_multiple_of_the_corpus(tmp_path):
    """Token ids are held as int32 arrays, not Python lists of ints (~36 bytes a token, twice over)."""
    tiny_tokenizer().save(tmp_path / "tok")
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(40_000)))  # ~4 MB
    dm = TextBlocksDataModule(files=[str(path)], tokenizer=str(tmp_path / "tok"), block_size=64)
    tracemalloc.start()
    try:
        dm.setup("fit")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(dm.train_set) > 1000  # before int32 arrays: 20x the corpus; now 8x (text, ids, int64 blocks)
    assert peak < 10 * path.stat().st_size, f"peak {peak / 1e6:.0f} MB for a {path.stat().st_size / 1e6:.1f} MB corpus"
