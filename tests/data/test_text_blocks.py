"""Text DataModule: .txt/.jsonl reading with bad rows and non-UTF-8 files skipped, exact block
packing, the unigram baseline, and a trained tokenizer saved once and reused."""
from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from _gpt import tiny_corpus

from mmkit.data.text_blocks import TextBlocksDataModule, pack_blocks, read_documents, unigram_perplexity


def test_documents_from_txt_and_jsonl_skip_bad_rows_and_files(tmp_path, caplog):
    (tmp_path / "a.txt").write_text("First paragraph,\nstill the first.\n  \n\nSecond one.\n")
    (tmp_path / "b.jsonl").write_text('{"text": "row one"}\nnot json\n{"title": "no text"}\n[1, 2]\n\n'
                                      '{"text": 7}\n{"text": "row two"}\n')
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "blank.txt").write_text("  \n")
    with caplog.at_level(logging.WARNING):
        docs = read_documents([tmp_path / n for n in ("a.txt", "b.jsonl", "latin1.txt", "blank.txt")])
    assert docs == ["First paragraph,\nstill the first.", "Second one.\n", "row one", "row two"]
    assert "latin1.txt line 1: not UTF-8" in caplog.text
    assert [f"line {n}" in caplog.text for n in (2, 3, 4, 6)] == [True] * 4
    with pytest.raises(ValueError, match="use .txt or .jsonl"):
        read_documents([tmp_path / "a.txt", _touch(tmp_path / "c.csv")])
    with pytest.raises(FileNotFoundError):
        read_documents([tmp_path / "missing.txt"])
    with pytest.raises(ValueError, match="no text"):
        read_documents([tmp_path / "blank.txt"])


def _touch(path):
    path.write_text("x")
    return path


def test_pack_blocks_cuts_the_concatenation_into_overlapping_windows():
    blocks = pack_blocks([[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]], block_size=3)
    assert blocks.tolist() == [[1, 2, 3, 4], [4, 5, 6, 7], [7, 8, 9, 10]]
    assert pack_blocks([[1, 2, 3, 4, 5, 6]], 4).tolist() == [[1, 2, 3, 4, 5]]  # the short tail is dropped
    with pytest.raises(ValueError, match="one block"):
        pack_blocks([[1, 2]], 4)


def test_unigram_perplexity_is_add_one_smoothed_counts():
    # train counts: 0 -> 3, 1 -> 1, vocab 4 => p = (4/8, 2/8, 1/8, 1/8); held out: tokens 0 and 2.
    ppl = unigram_perplexity([[0, 0, 1], [0]], [[0, 2]], vocab_size=4)
    assert ppl == pytest.approx(math.exp(-(math.log(4 / 8) + math.log(1 / 8)) / 2))


def test_datamodule_trains_a_tokenizer_once_and_packs_blocks(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(200)))
    dm = TextBlocksDataModule(files=[str(corpus)], tokenizer=str(tmp_path / "tok"), vocab_size=300, block_size=16,
                              val_fraction=0.1, batch_size=4)
    dm.setup("fit")
    assert (tmp_path / "tok" / "tokenizer.json").is_file() and dm.tokenizer.vocab_size == 300
    batch = next(iter(dm.train_dataloader()))
    assert batch["tokens"].shape == batch["targets"].shape == (4, 16)
    assert torch.equal(batch["tokens"][:, 1:], batch["targets"][:, :-1])  # targets are the next tokens
    eos = dm.tokenizer.eos_id
    assert (dm.train_set.blocks == eos).any()  # documents are separated by <|endoftext|>
    n_train, n_val = len(dm.train_set), len(dm.val_set)
    assert n_val > 0 and 5 < n_train / n_val < 20
    assert 1 < dm.unigram_ppl < 300
    again = TextBlocksDataModule(files=[str(corpus)], tokenizer=str(tmp_path / "tok"), vocab_size=999, block_size=16,
                                 val_fraction=0.1)
    again.setup("fit")  # reads the saved tokenizer (vocab_size is for training one only)
    assert again.tokenizer == dm.tokenizer and torch.equal(again.val_set.blocks, dm.val_set.blocks)


def test_datamodule_arguments_are_checked():
    with pytest.raises(ValueError, match="either files or corpus"):
        TextBlocksDataModule()
    with pytest.raises(ValueError, match="unknown corpus"):
        TextBlocksDataModule(corpus="nope").setup("fit")
