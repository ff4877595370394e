"""A saved tokenizer folder and the vocab_size a recipe now asks for: the GPT data (TextBlocksDataModule)
keeps using the folder's tokenizer but warns in one line naming both sizes; the BERT data
(`load_or_train_tokenizer`, shared by the masked-LM and classification recipes) refuses in one line
naming the folder, both sizes and what to do (exit 2 from `mmkit fit`); a RoBERTa folder (vocab.json +
merges.txt) is a saved tokenizer too. A tokenizer mmkit trained for a vocab_size its corpus could not fill
still answers that vocab_size (a resumed run is not refused).
Tokenizers are trained on the tiny grammar corpus of tests/_gpt.py in well under a second."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from _bert import ROBERTA_SPECIALS
from _gpt import tiny_corpus
from tokenizers import ByteLevelBPETokenizer

from mmkit.cli import main
from mmkit.data import bert_text
from mmkit.data.bert_text import MaskedLMDataModule, load_or_train_tokenizer
from mmkit.data.bert_tokenizer import EncoderTokenizer
from mmkit.data.gpt_tokenizer import ByteBPETokenizer
from mmkit.data.text_blocks import TRAINED_FOR_FILE, TextBlocksDataModule

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(200)))
    return path


def _blocks(corpus: Path, folder: Path, vocab_size: int) -> TextBlocksDataModule:
    dm = TextBlocksDataModule(files=[str(corpus)], tokenizer=str(folder), vocab_size=vocab_size, block_size=16,
                              val_fraction=0.1, batch_size=4)
    dm.setup("fit")
    return dm


def _reuse_warning(folder: Path, want: int, size: int, made: str = "") -> str:
    """GPT data's warning for a saved tokenizer of another size (the folder wins)."""
    return (f"vocab_size is {want}, but the tokenizer folder {folder} holds a {size}-token tokenizer{made}: using it "
            f"as it is (the GPT's vocab_size follows it); to train a {want}-token one, delete the folder or give "
            "another tokenizer folder")


def test_gpt_data_warns_when_the_saved_tokenizer_has_another_size(tmp_path, corpus, caplog):
    folder = tmp_path / "tok"
    with caplog.at_level(logging.WARNING):
        first = _blocks(corpus, folder, 300)
        assert first.tokenizer.vocab_size == 300 and _warnings(caplog) == []
        assert json.loads((folder / TRAINED_FOR_FILE).read_text())["vocab_size"] == 300
        again = _blocks(corpus, folder, 300)  # the same request: silent
        assert _warnings(caplog) == []
        other = _blocks(corpus, folder, 400)
    assert other.tokenizer == first.tokenizer == again.tokenizer  # the folder wins (a resumed run reads it)
    assert _warnings(caplog) == [_reuse_warning(folder, 400, 300)]


def test_gpt_data_warns_for_a_tokenizer_it_did_not_train(tmp_path, corpus, caplog):
    folder = tmp_path / "given"
    ByteBPETokenizer.train(tiny_corpus(), 300).save(folder)  # e.g. a downloaded GPT-2 folder: no record
    with caplog.at_level(logging.WARNING):
        dm = _blocks(corpus, folder, 4096)
    assert dm.tokenizer.vocab_size == 300
    assert _warnings(caplog) == [_reuse_warning(folder, 4096, 300)]


def test_a_tokenizer_short_of_its_vocab_size_still_answers_it(tmp_path, corpus, caplog):
    folder = tmp_path / "tok"
    with caplog.at_level(logging.INFO):
        first = _blocks(corpus, folder, 5000)  # the tiny corpus has far fewer merges
    size = first.tokenizer.vocab_size
    assert size < 5000 and "(vocab_size 5000: the training text holds no more merges)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = _blocks(corpus, folder, 5000)  # a resumed run: same request, no warning
        assert again.tokenizer == first.tokenizer and _warnings(caplog) == []
        _blocks(corpus, folder, size)  # its actual size is an answer too
        assert _warnings(caplog) == []
        _blocks(corpus, folder, 4000)
    assert _warnings(caplog) == [_reuse_warning(folder, 4000, size, " (trained for vocab_size 5000)")]


def _refusal(folder: Path, want: int, size: int, answers: int, made: str = "") -> str:
    return (f"vocab_size is {want}, but the tokenizer folder {folder} holds a {size}-token tokenizer{made}: give "
            f"vocab_size {answers} to use it, or another tokenizer folder, or delete the folder to train a "
            f"{want}-token one (a model pretrained with the old one will not fit the new one)")


def test_bert_tokenizer_of_another_size_is_refused_in_one_line(tmp_path):
    folder, texts = tmp_path / "tok", tiny_corpus()
    first = load_or_train_tokenizer(str(folder), texts, 120)
    assert len(first) == 120 and json.loads((folder / TRAINED_FOR_FILE).read_text()) == {"vocab_size": 120}
    assert load_or_train_tokenizer(str(folder), texts, 120).hf.get_vocab() == first.hf.get_vocab()
    with pytest.raises(ValueError) as caught:
        load_or_train_tokenizer(str(folder), texts, 8000)
    assert str(caught.value) == _refusal(folder, 8000, 120, 120)
    assert len(EncoderTokenizer.from_dir(folder)) == 120  # nothing was overwritten


def test_bert_tokenizer_short_of_its_vocab_size_or_not_trained_here(tmp_path):
    texts = tiny_corpus()
    short = tmp_path / "short"
    size = len(load_or_train_tokenizer(str(short), texts, 5000))
    assert size < 5000
    assert len(load_or_train_tokenizer(str(short), texts, 5000)) == size  # the same request again
    assert len(load_or_train_tokenizer(str(short), texts, size)) == size
    with pytest.raises(ValueError) as caught:
        load_or_train_tokenizer(str(short), texts, 8000)
    assert str(caught.value) == _refusal(short, 8000, size, 5000, " (trained for vocab_size 5000)")
    given = tmp_path / "given"
    EncoderTokenizer.train(texts, 100).save(given)  # e.g. a downloaded vocab.txt: no record
    assert len(load_or_train_tokenizer(str(given), texts, 100)) == 100
    with pytest.raises(ValueError) as caught:
        load_or_train_tokenizer(str(given), texts, 8000)
    assert str(caught.value) == _refusal(given, 8000, 100, 100)


def test_bert_data_reads_a_roberta_folder_and_never_writes_a_wordpiece_beside_it(tmp_path):
    """A hub RoBERTa folder holds only vocab.json + merges.txt: it is the saved tokenizer (of its own size),
    not an empty folder to train a WordPiece into; half of it (vocab.json alone) is refused, not trained over."""
    folder, texts = tmp_path / "roberta", tiny_corpus()
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, special_tokens=ROBERTA_SPECIALS, show_progress=False)
    folder.mkdir()
    bpe.save_model(str(folder))
    size = bpe.get_vocab_size()
    tok = load_or_train_tokenizer(str(folder), texts, size)
    assert len(tok) == size and tok.mask_id == 4 and sorted(p.name for p in folder.iterdir()) == [
        "merges.txt", "vocab.json"]
    with pytest.raises(ValueError) as caught:
        load_or_train_tokenizer(str(folder), texts, 8000)
    assert str(caught.value) == _refusal(folder, 8000, size, size)
    (folder / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_or_train_tokenizer(str(folder), texts, size)
    assert [p.name for p in folder.iterdir()] == ["vocab.json"]


def test_bert_recipe_with_a_mismatched_tokenizer_folder_exits_2(tmp_path, monkeypatch, capsys):
    """configs/bert_wordnet_mlm.yaml with its tokenizer folder made for vocab_size 120 and the
    recipe's 8000: one line, exit 2, before any training (WordNet replaced by the tiny corpus)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.setattr(bert_text, "_tokenizer_texts", lambda held_out: tiny_corpus())
    folder = tmp_path / "runs" / "bert_wordnet" / "tokenizer"
    load_or_train_tokenizer(str(folder), tiny_corpus(), 120)
    recipe = str(Path(__file__).resolve().parents[2] / "configs" / "bert_wordnet_mlm.yaml")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["fit", "--config", recipe, "--model.init_args.model.init_args.dim", "32",
                     "--model.init_args.model.init_args.depth", "1", "--trainer.enable_progress_bar", "false",
                     "--trainer.enable_model_summary", "false"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, err
        assert _refusal(Path("runs/bert_wordnet/tokenizer"), 8000, 120, 120) in lines[0]
        assert not (tmp_path / "runs" / "bert_wordnet_mlm" / "checkpoints").exists()
        # the same recipe asking for the folder's size goes on (setup only: no training here)
        dm = MaskedLMDataModule(tokenizer="runs/bert_wordnet/tokenizer", vocab_size=120, max_len=16)
        dm.setup("fit")
        assert len(dm.tokenizer) == 120 and dm.train_ids
    finally:
        torch.set_num_threads(threads)
