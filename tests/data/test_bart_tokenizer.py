"""BartTokenizer gives the ids min-dalle's own `TextTokenizer` gives (normalisation, BPE merge order,
unknown pieces), on a small byte-level vocabulary; padding, min-dalle's null prompt, truncation,
unknown words and unreadable files."""
from __future__ import annotations

import json
import logging

import pytest

from mmkit.cli.bench.generate import import_min_dalle
from mmkit.data.bart_tokenizer import PAD_ID, BartTokenizer
from mmkit.weights import WeightsError

from _min_dalle import bpe_files

PROMPTS = ["a red circle", "A Red  Circle on the LEFT!", "avocado armchair \U0001F951", "h\u00e9llo w\u00f6rld",
           "x\ty", "circir", "  leading and trailing  ", "the star's 2 blue stars.", ""]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    vocab, merges = bpe_files()
    d = tmp_path_factory.mktemp("bpe")
    (d / "vocab.json").write_text(json.dumps(vocab), encoding="utf8")
    (d / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf8")
    return d / "vocab.json", d / "merges.txt"


def test_same_ids_as_min_dalle(files):
    TextTokenizer = import_min_dalle("min_dalle.text_tokenizer").TextTokenizer
    vocab = json.loads(files[0].read_text(encoding="utf8"))
    reference = TextTokenizer(vocab, files[1].read_text(encoding="utf8").split("\n")[1:-1])  # as MinDalle reads it
    ours = BartTokenizer.from_files(*files)
    for prompt in PROMPTS:
        assert ours.encode(prompt) == reference.tokenize(prompt), prompt
    assert len(set(ours.encode("avocado"))) == 3  # merged to one piece between <s> and </s>
    assert ours.encode("avocado \U0001F951") == [0] + ours.encode("avocado")[1:-1] * 2 + [2]  # emoji spelled out


def test_batch_null_prompt_and_truncation(files, caplog):
    tok = BartTokenizer.from_files(*files, text_len=8)
    ids = tok(["a red circle", "blue"])
    assert ids.shape == (2, 8) and ids[0, :5].tolist() == tok.encode("a red circle") and (ids[0, 5:] == PAD_ID).all()
    null = tok.null_text(["a red circle"])
    assert null[0, :2].tolist() == [0, 2] and (null[0, 2:] == PAD_ID).all()
    long = "a red circle on the left " * 3
    with caplog.at_level(logging.WARNING, logger="mmkit.data.bart_tokenizer"):
        cut = tok([long])
    assert "truncated to 8" in caplog.text
    assert cut[0].tolist() == tok.encode(long)[:8]
    assert tok.null_text([long])[0, :2].tolist() == [0, tok.encode(long)[7]]  # min-dalle: last id after the cut


def test_unknown_words(files):
    tok = BartTokenizer.from_files(*files)
    assert tok.unknown_words("a red circle") == []
    assert tok.unknown_words("a \u65e5\u672c red x\ty") == ["\u65e5\u672c", "x\ty"]  # all non-ASCII; a tab is <unk>


def test_unreadable_files(files, tmp_path):
    with pytest.raises(WeightsError, match="cannot read"):
        BartTokenizer.from_files(tmp_path / "vocab.json", files[1])
    (tmp_path / "vocab.json").write_text('["a", "b"]')
    with pytest.raises(WeightsError, match="not a BPE vocabulary"):
        BartTokenizer.from_files(tmp_path / "vocab.json", files[1])
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(WeightsError, match="not a BPE merges file"):
        BartTokenizer.from_files(files[0], tmp_path / "merges.txt")
    with pytest.raises(WeightsError, match="special tokens <s>"):
        BartTokenizer({"a": 0}, [])
