"""Bad inputs to the text DataModule: a bad line costs that line only, bad rows are reported (the first
few one by one, then a total) and skipped, and a corpus that cannot be used says why in one line."""
from __future__ import annotations

import json
import logging
import random
import re
import tracemalloc
from types import SimpleNamespace

import pytest
from _gpt import tiny_corpus, tiny_tokenizer

from mmkit.data import documents
from mmkit.data.documents import iter_line_pieces, split_paragraphs
from mmkit.data.text_blocks import MAX_WARNINGS, TextBlocksDataModule, read_documents

PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")  # what the whole-text reader split .txt files with


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


def test_a_batch_size_beyond_the_training_blocks_still_trains_on_them_all(tmp_path, caplog):
    """drop_last dropped the only, partial, batch: no training step, "nothing exported", and exit 0."""
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(tiny_corpus(200)))
    dm = TextBlocksDataModule(files=[str(path)], vocab_size=300, block_size=16, val_fraction=0.1, batch_size=1000)
    dm.setup("fit")
    blocks = len(dm.train_set)
    assert 16 < blocks < 1000
    with caplog.at_level(logging.WARNING):
        batches = list(dm.train_dataloader())
    assert [b["tokens"].shape for b in batches] == [(blocks, 16)]
    assert _warnings(caplog) == [f"batch_size 1000 exceeds the {blocks} training blocks of block_size 16: each step "
                                 "trains on all of them (lower batch_size to take more steps)"]
    caplog.clear()
    dm.hparams.batch_size = blocks // 3 + 1  # two full batches and a partial one: the partial one is still dropped
    assert [len(b["tokens"]) for b in dm.train_dataloader()] == [blocks // 3 + 1] * 2 and not _warnings(caplog)
    # Under DDP each rank gets ceil(blocks / world) of them: a batch is full only within that share.
    dm.trainer = SimpleNamespace(world_size=2)
    dm.hparams.batch_size = (blocks + 1) // 2
    assert dm.train_dataloader().drop_last and not _warnings(caplog)
    dm.hparams.batch_size += 1
    assert not dm.train_dataloader().drop_last
    assert "training blocks of block_size 16 shared by 2 processes: each step" in caplog.text


def test_a_tokenizer_file_instead_of_a_folder_is_refused(tmp_path):
    (tmp_path / "ok.txt").write_text("x")
    with pytest.raises(ValueError, match=f"tokenizer must be a folder .*, but {tmp_path / 'ok.txt'} is a file"):
        TextBlocksDataModule(files=[str(tmp_path / "ok.txt")], tokenizer=str(tmp_path / "ok.txt"))


def test_no_files_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"no text files given \(files is empty\)"):
        TextBlocksDataModule(files=[]).setup("fit")
    (tmp_path / "blank.txt").write_text("  \n\n\t\n")  # the tokenizer's pass over the stream meets it first
    with pytest.raises(ValueError, match=f"^no text in {tmp_path / 'blank.txt'}$"):
        TextBlocksDataModule(files=[str(tmp_path / "blank.txt")], vocab_size=300).setup("fit")


def test_peak_python_memory_is_a_small_fraction_of_the_corpus(tmp_path):
    """Documents are streamed and token ids go to a file: Python holds a batch of them at a time (the
    whole-corpus version peaked at 8x the corpus; the process's RSS: tests/data/test_text_blocks_memory.py)."""
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
    assert len(dm.train_set) > 1000
    assert peak < path.stat().st_size / 4, f"peak {peak / 1e6:.1f} MB for a {path.stat().st_size / 1e6:.1f} MB corpus"


def test_lines_are_split_as_splitlines_splits_the_whole_file(tmp_path):
    path = tmp_path / "t.txt"
    data = "a\r\nb\rc\n\n\r\r\n" + "é" * 9 + "\r\nend"  # CRLF, lone CRs, a long line of 2-byte characters
    path.write_bytes(data.encode())
    pieces = list(iter_line_pieces(path, max_bytes=4))  # CRLFs fall across the 4-byte reads
    assert b"".join(p.data for p in pieces) == data.encode()
    lines = {}
    for p in pieces:
        assert len(p.data) <= 4 and (p.cut or p.data.decode())  # cut between characters, never inside one
        lines[p.number] = lines.get(p.number, b"") + p.data
    assert list(lines) == list(range(1, 9)) and list(lines.values()) == data.encode().splitlines(keepends=True)
    assert [p.cut for p in pieces if p.number == 7] == [True] * 4 + [False]


def test_paragraphs_are_split_as_the_whole_text_is(tmp_path):
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice(["a", " ", "\t", "\n", "\r", "\r\n", "\n\n", "\x0c", "\u2028", "é"])
                       for _ in range(rng.randint(0, 40)))
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, 5)))
        texts = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
        assert [d for d in split_paragraphs(texts) if d] == [d for d in PARAGRAPH_BREAK.split(text) if d], texts


def test_an_overlong_paragraph_is_cut_into_documents_with_one_warning(caplog):
    lines = [f"line {i} of one long paragraph\n" for i in range(100)]
    with caplog.at_level(logging.WARNING):
        docs = list(split_paragraphs(lines + ["\n", "next\n"], max_chars=500, name="big.txt"))
    assert "".join(docs[:-1]) == "".join(lines)[:-1] and docs[-1] == "next\n"
    assert len(docs) > 5 and max(map(len, docs)) < 600
    assert _warnings(caplog) == ["big.txt: a paragraph longer than 500 characters is cut into documents of that size"]


def test_a_long_line_after_a_line_break_is_cut_into_documents_too(caplog):
    """Text after the last line break is held back (a paragraph break may start there) only while it is
    blank: a long line after a break is paragraph text, counted and cut, never held whole."""
    texts = ["first\n"] + ["word " * 1000] * 20 + ["\n\nnext\n"]
    with caplog.at_level(logging.WARNING):
        docs = list(split_paragraphs(texts, max_chars=5000, name="long.txt"))
    assert "".join(docs[:-1]) == "first\n" + "word " * 20_000 and docs[-1] == "next\n"
    assert len(docs) > 5 and max(map(len, docs)) < 11_000
    assert len(_warnings(caplog)) == 1


def test_an_overlong_jsonl_row_is_one_bad_row(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(documents, "MAX_RECORD_BYTES", 64)
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"text": "x" * 500}) + "\n" + json.dumps({"text": "short"}) + "\n")
    with caplog.at_level(logging.WARNING):
        assert read_documents([path]) == ["short"]
    assert _warnings(caplog) == [f"skipping {path} line 1: a JSON record longer than 0 MiB"]
