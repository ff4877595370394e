"""EncoderTokenizer: a trained WordPiece saved as vocab.txt encodes exactly as transformers'
BertTokenizer reads it (specials included), tokenizer.json round-trips, truncation keeps [SEP]."""
from __future__ import annotations

import pytest
from transformers import BertTokenizer

from mmkit.data.bert_tokenizer import BERT_SPECIALS, EncoderTokenizer

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Playing games is fun!",
         "A dog is a domesticated animal, running fast."] * 20


@pytest.fixture(scope="module")
def trained() -> EncoderTokenizer:
    return EncoderTokenizer.train(TEXTS, vocab_size=120)


def test_vocab_txt_matches_transformers_bert_tokenizer(trained, tmp_path):
    trained.save(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    tok = EncoderTokenizer.from_dir(tmp_path)
    ref = BertTokenizer(str(tmp_path / "vocab.txt"))
    for text in ["The Quick fox, playing!", "unseen wörds héllo", "dogs [MASK] run", ""]:
        assert tok.encode(text) == ref(text)["input_ids"] == trained.encode(text)
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 2, 3, 4)
    assert tok.tokens(tok.encode("dogs")) == ["[CLS]", "dog", "##s", "[SEP]"]


def test_tokenizer_json_round_trip_and_truncation(trained, tmp_path):
    tok = EncoderTokenizer.from_dir(trained.save(tmp_path))
    ids = tok.encode("the quick brown fox jumps over the lazy dog", max_len=5)
    assert len(ids) == 5 and ids[0] == tok.cls_id and ids[-1] == tok.sep_id
    assert tok.decode(tok.encode("the lazy dog")) == "the lazy dog"


def test_missing_or_unusable_tokenizer_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        EncoderTokenizer.from_dir(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ValueError, match=r"no \[CLS\], \[SEP\], \[MASK\] token"):
        EncoderTokenizer.from_dir(tmp_path)


def test_training_on_the_same_texts_gives_the_same_vocabulary():
    """tokenizers' WordPiece trainer alone numbers its "##" pieces in hash order, so repeated training
    picked other merges (8 vocabularies in 8 runs on these 300 sentences, before the fix)."""
    from mmkit.cli.bench.embed import bench_texts

    texts = bench_texts("synthetic", 300) + ["Wel come to the 🤗 Tok en izers libr ary."]
    vocabularies = {tuple(sorted(EncoderTokenizer.train(texts, vocab_size=300).hf.get_vocab().items()))
                    for _ in range(4)}
    assert len(vocabularies) == 1
    vocab = dict(next(iter(vocabularies)))
    assert [vocab[s] for s in BERT_SPECIALS] == [0, 1, 2, 3, 4] and 100 < len(vocab) <= 300
