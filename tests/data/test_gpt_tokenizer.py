"""ByteBPETokenizer: exact round trips, the same ids as transformers' GPT-2 tokenizer on the saved
files, and both on-disk forms (tokenizer.json; vocab.json + merges.txt) read back identically."""
from __future__ import annotations

import json

import pytest
from _gpt import tiny_corpus, tiny_tokenizer

from mmkit.data.gpt_tokenizer import EOS_TOKEN, ByteBPETokenizer

TEXTS = ["The cat sees the moon.", "  leading spaces\tand tabs\n", "unicode: héllo wörld — ✓ 日本語 🙂", ""]


def test_trained_tokenizer_round_trips_any_text_and_ends_with_eos():
    tok = tiny_tokenizer(300)
    assert tok.vocab_size == 300 and tok.eos_id == 299 and tok.eos_token == EOS_TOKEN
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text  # byte level: nothing is unknown
    # Merges learned from the corpus: its words take far fewer tokens than their bytes.
    assert len(tok.encode(tiny_corpus()[0])) < len(tiny_corpus()[0].encode()) / 2
    with pytest.raises(ValueError, match="vocab_size"):
        ByteBPETokenizer.train(["abc"], 100)


def test_saved_files_read_back_and_match_transformers(tmp_path):
    from transformers import AutoTokenizer, GPT2Tokenizer

    tok = tiny_tokenizer(300)
    tok.save(tmp_path)
    assert ByteBPETokenizer.from_dir(tmp_path) == tok
    assert json.loads((tmp_path / "vocab.json").read_text())[EOS_TOKEN] == tok.eos_id
    fast = AutoTokenizer.from_pretrained(tmp_path)
    slow = GPT2Tokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    for text in TEXTS[:3]:
        assert fast(text)["input_ids"] == slow(text)["input_ids"] == tok.encode(text)
    (tmp_path / "tokenizer.json").unlink()  # GPT-2's original form: vocab.json + merges.txt
    legacy = ByteBPETokenizer.from_dir(tmp_path)
    assert legacy.eos_id == tok.eos_id and legacy.vocab_size == tok.vocab_size
    assert all(legacy.encode(t) == tok.encode(t) for t in TEXTS)
    assert legacy.decode(tok.encode(TEXTS[2] + EOS_TOKEN)) == TEXTS[2]  # the special token is skipped


def test_missing_or_foreign_tokenizer_files_are_clear_errors(tmp_path):
    from tokenizers import Tokenizer, models

    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        ByteBPETokenizer.from_dir(tmp_path)
    Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="not a GPT-2-style"):
        ByteBPETokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable tokenizer"):
        ByteBPETokenizer.from_dir(tmp_path)
