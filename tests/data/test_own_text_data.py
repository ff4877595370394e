"""One's own text for the BERT and translation recipes: `MaskedLMDataModule(files=...)` (.txt paragraphs,
.jsonl rows; long documents cut into windows; the tokenizer folder logic of the corpus path) and
`TranslationPairsDataModule` (.tsv/.jsonl pairs, bad rows said in one warning a file, the shared
SentencePiece vocabulary and batches of `NumberPhrasesDataModule`), then both through `mmkit fit` with
the shipped recipes shrunk, their exports read by `mmkit fill-mask` and `mmkit translate`."""
from __future__ import annotations

import json
import logging
import sys
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _gpt import tiny_corpus

from mmkit.cli import main
from mmkit.data import MaskedLMDataModule, TranslationPairsDataModule, read_pairs_file
from mmkit.data.bert_tokenizer import EncoderTokenizer
from mmkit.data.corpora import is_held_out
from mmkit.data.number_phrases import NumberPhrasesDataModule
from mmkit.data.spm_tokenizer import BOS, EOS, PAD, SentencePieceTokenizer
from mmkit.data.text_blocks import TRAINED_FOR_FILE
from mmkit.data.token_rows import TokenRows, windows
from mmkit.data.translation_batches import IGNORE_INDEX

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
WORDS = "red green blue small big cat dog bird runs sleeps sings".split()


def _pairs(n: int, start: int = 0) -> list[tuple[str, str]]:
    """n distinct toy pairs: the target reverses the source's words."""
    out = []
    for i in range(start, start + n):
        words = [WORDS[(i // len(WORDS) ** k) % len(WORDS)] for k in range(3)]
        out.append((" ".join(words), " ".join(reversed(words))))
    return out


def _tsv(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return path


# --- masked-LM on files ------------------------------------------------------------------------------

def test_token_rows_and_windows():
    rows = TokenRows([[1, 2, 3], [4], [5, 6]])
    assert len(rows) == 3 and rows[0] == [1, 2, 3] and rows[-1] == [5, 6] and rows.lengths() == [3, 1, 2]
    with pytest.raises(IndexError):
        rows[3]
    framed = [[101, *range(10), 102], [101, 102], [101, 7, 102]]
    assert list(windows(framed, 6)) == [[101, 0, 1, 2, 3, 102], [101, 4, 5, 6, 7, 102], [101, 8, 9, 102],
                                        [101, 7, 102]]


def test_masked_lm_reads_txt_paragraphs_and_jsonl_rows(tmp_path, caplog):
    docs = tiny_corpus(120)
    (tmp_path / "a.txt").write_text("\n\n".join(docs[:60]) + "\n", encoding="utf-8")
    rows = [json.dumps({"body": d}) for d in docs[60:]] + ['{"title": "no body"}']
    (tmp_path / "b.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    folder = tmp_path / "tok"
    files = [str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]
    dm = MaskedLMDataModule(corpus=None, files=files, text_key="body", tokenizer=str(folder), vocab_size=150,
                            max_len=12, val_fraction=0.2, batch_size=8)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert "b.jsonl line 61" in caplog.text  # the row without "body", skipped by `iter_documents`
    tok = dm.tokenizer
    train = [d for d in docs if not is_held_out(d, 0.2)]
    val = [d for d in docs if is_held_out(d, 0.2)]
    # every document is cut into windows of at most max_len tokens that together hold all of its tokens
    assert [list(dm.train_ids[i]) for i in range(len(dm.train_ids))] == list(windows(tok.encode_batch(train), 12))
    assert [list(dm.val_ids[i]) for i in range(len(dm.val_ids))] == list(windows(tok.encode_batch(val), 12))
    assert len(dm.train_ids) > len(train) and max(dm.train_ids.lengths()) == 12
    # the tokenizer was trained on the training documents alone, and saved with what it was trained on
    assert tok.hf.get_vocab() == EncoderTokenizer.train(train, 150).hf.get_vocab()
    record = json.loads((folder / TRAINED_FOR_FILE).read_text())
    assert record["vocab_size"] == 150 and str(tmp_path / "a.txt") in record["texts"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == batch["labels"].shape and batch["input_ids"].shape[1] <= 12


def test_masked_lm_reuses_its_folder_and_keeps_its_refusals(tmp_path, caplog):
    (tmp_path / "a.txt").write_text("\n\n".join(tiny_corpus(80)), encoding="utf-8")
    (tmp_path / "b.txt").write_text("\n\n".join(tiny_corpus(80, seed=1)), encoding="utf-8")
    folder = str(tmp_path / "tok")
    kwargs = dict(corpus=None, tokenizer=folder, vocab_size=120, max_len=16, val_fraction=0.2)
    first = MaskedLMDataModule(files=[str(tmp_path / "a.txt")], **kwargs)
    first.setup()
    with caplog.at_level(logging.WARNING):
        again = MaskedLMDataModule(files=[str(tmp_path / "a.txt")], **kwargs)
        again.setup()
        assert not caplog.records and again.tokenizer.hf.get_vocab() == first.tokenizer.hf.get_vocab()
        MaskedLMDataModule(files=[str(tmp_path / "b.txt")], **kwargs).setup()  # other texts: used, and said
    assert len(caplog.records) == 1 and "was trained on" in caplog.text and "b.txt" in caplog.text
    with pytest.raises(ValueError, match="vocab_size is 500, but the tokenizer folder"):
        MaskedLMDataModule(files=[str(tmp_path / "a.txt")], **{**kwargs, "vocab_size": 500}).setup()


def test_masked_lm_takes_exactly_one_source_and_refuses_too_few_documents(tmp_path):
    (tmp_path / "one.txt").write_text("a single paragraph\nover two lines\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^corpus 'wordnet' and files \[.*\] are both given: .*corpus null"):
        MaskedLMDataModule(files=[str(tmp_path / "one.txt")])
    with pytest.raises(ValueError, match=r"^files is the string 'one.txt', not a list of paths: give \['one.txt'\]"):
        MaskedLMDataModule(corpus=None, files="one.txt")
    with pytest.raises(ValueError, match="^corpus is None and files is None: give a corpus"):
        MaskedLMDataModule(corpus=None)
    with pytest.raises(ValueError, match="^val_fraction 1.5 is not in"):
        MaskedLMDataModule(corpus=None, files=[str(tmp_path / "one.txt")], val_fraction=1.5)
    dm = MaskedLMDataModule(corpus=None, files=[str(tmp_path / "one.txt")], tokenizer=str(tmp_path / "tok"),
                            vocab_size=60, val_fraction=0.5)
    with pytest.raises(ValueError) as caught:
        dm.setup()
    assert "val_fraction 0.5 puts" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "tok").exists()  # no tokenizer saved from files that cannot be used


# --- translation pairs ------------------------------------------------------------------------------

def test_tsv_bad_rows_are_skipped_with_one_warning(tmp_path, caplog):
    path = tmp_path / "p.tsv"
    path.write_bytes(b"one\teins\n\n"  # a blank line is no row
                     b"no tab here\n"  # 3
                     b"a\tb\tc\n"  # 4
                     b"two\t  \n"  # 5
                     b"\xff\xfe\tbad\n"  # 6
                     b"nul\x00\tx\n"  # 7
                     b"  three \t drei\r\n"  # 8: sides stripped, CRLF
                     b"four\t\n")  # 9
    with caplog.at_level(logging.WARNING):
        assert read_pairs_file(path) == [("one", "eins"), ("three", "drei")]
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "skipped 6 of 8 rows" in message
    for part in (f"2 without exactly one tab between source and target (first at {path}:3)",
                 f"2 with an empty side (first at {path}:5)", f"1 not UTF-8 text (first at {path}:6)",
                 f"1 with NUL bytes (binary or UTF-16 text?) (first at {path}:7)"):
        assert part in message


def test_jsonl_pairs_with_own_keys_and_bad_rows(tmp_path, caplog):
    rows = [{"en": "one", "de": "eins"}, {"en": "two"}, {"en": "three", "de": 3}, {"en": " ", "de": "x"},
            ["en", "de"], {"en": "lone \ud800", "de": "x"}, {"en": "four", "de": "vier"}]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert read_pairs_file(path, "val_file", "en", "de") == [("one", "eins"), ("four", "vier")]
    message = caplog.records[0].getMessage()
    assert len(caplog.records) == 1 and "skipped 6 of 8 rows" in message
    assert f"1 without a 'en' or 'de' key (first at {path}:2)" in message
    assert f"1 without a string source and target (first at {path}:3)" in message
    assert f"(first at {path}:6)" in message and f"1 not JSON (first at {path}:8)" in message


def test_a_row_longer_than_the_limit_is_skipped_not_held(tmp_path, caplog):
    from mmkit.data.translation_pairs import MAX_ROW_BYTES

    path = tmp_path / "long.tsv"
    path.write_text("one\teins\n" + "x" * (MAX_ROW_BYTES + 10) + "\ty\ntwo\tzwei\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert read_pairs_file(path) == [("one", "eins"), ("two", "zwei")]
    assert f"skipped 1 of 3 rows: 1 longer than 1 MiB (first at {path}:2)" in caplog.text


def test_unusable_files_are_one_line_errors_naming_the_option(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("just one column\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^val_file .*empty.tsv holds no usable pair \(1 bad rows, said above\)"):
        read_pairs_file(empty, "val_file")
    with pytest.raises(ValueError, match=r"^train_file pairs.csv is neither .tsv nor .jsonl: give"):
        TranslationPairsDataModule("pairs.csv")
    with pytest.raises(ValueError, match=r"^test_file .*missing.jsonl is not a file"):
        TranslationPairsDataModule(str(_tsv(tmp_path / "t.tsv", _pairs(50))), test_file=str(tmp_path / "missing.jsonl"),
                                   vocab_size=40).setup()
    with pytest.raises(ValueError, match="^val_split 0 holds out no pairs"):
        TranslationPairsDataModule("t.tsv", val_split=0)


def test_pairs_data_module_splits_by_source_and_batches_as_number_phrases(tmp_path):
    train = _tsv(tmp_path / "train.tsv", _pairs(300))
    dm = TranslationPairsDataModule(str(train), val_split=0.1, vocab_size=40, batch_size=16)
    dm.setup("fit")
    assert dm.pairs["test"] is dm.pairs["val"] and len(dm.pairs["train"]) + len(dm.pairs["val"]) == 300
    assert {s for s, _ in dm.pairs["val"]} == {s for s, _ in _pairs(300) if is_held_out(s, 0.1)}
    assert not {s for s, _ in dm.pairs["train"]} & {s for s, _ in dm.pairs["val"]}
    # the vocabulary NumberPhrasesDataModule would train on the same training pairs
    expected = SentencePieceTokenizer.train([t for p in dm.pairs["train"] for t in p], 40)
    assert dm.tokenizer == expected
    batch = next(iter(dm.val_dataloader()))
    s, t = dm.pairs["val"][0]
    assert batch["sources"][0] == s and batch["references"][0] == t
    src, tgt = expected.encode(s), expected.encode(t)
    assert batch["src"][0, : len(src)].tolist() == src and batch["src_mask"][0].sum() == len(src)
    assert batch["tokens"][0, : len(tgt)].tolist() == [BOS] + tgt[:-1] and batch["targets"][0, len(tgt) - 1] == EOS
    number = NumberPhrasesDataModule(n_train=40, n_val=4, n_test=4, vocab_size=60, batch_size=4)
    number.setup()
    other = next(iter(number.val_dataloader()))
    assert set(other) == set(batch)  # one collate for both
    padded = batch["src"] == PAD
    assert (padded == ~batch["src_mask"]).all() and (batch["targets"][batch["tokens"] == PAD] == IGNORE_INDEX).all()


def test_pairs_data_module_files_and_max_len(tmp_path, caplog):
    train = _tsv(tmp_path / "train.tsv", _pairs(200) + [("red " * 30, "long target")])
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in _pairs(10, 500)))
    test = _tsv(tmp_path / "test.tsv", _pairs(6, 700))
    dm = TranslationPairsDataModule(str(train), val_file=str(val), test_file=str(test), vocab_size=40, max_len=8)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert [len(dm.pairs[s]) for s in ("train", "val", "test")] == [200, 10, 6]
    assert dm.pairs["val"] == _pairs(10, 500) and dm.pairs["test"] == _pairs(6, 700)
    assert len(caplog.records) == 1 and "left out 1 of 201 pairs with a side longer than max_len 8" in caplog.text
    with pytest.raises(ValueError, match="^no pair of train_file .* fits in max_len 2 tokens a side: raise"):
        TranslationPairsDataModule(str(train), val_file=str(val), vocab_size=40, max_len=2).setup()


def test_pairs_max_len_is_the_models_unless_given(tmp_path, caplog):
    """Without max_len the run's model's is taken (linked, not repeated: 64 outside a run); one above it, whose
    longer pairs the model's positions cannot hold, is refused in one line."""
    train = _tsv(tmp_path / "train.tsv", _pairs(200) + [("red " * 30, "long target"), ("red " * 12, "a")])
    val = str(_tsv(tmp_path / "val.tsv", _pairs(10, 500)))
    in_run = SimpleNamespace(lightning_module=SimpleNamespace(model=SimpleNamespace(max_len=8)))
    linked = TranslationPairsDataModule(str(train), val_file=val, vocab_size=40)
    linked.trainer = in_run
    with caplog.at_level(logging.WARNING):
        linked.setup()
    assert linked.max_len == 8 and "left out 2 of 202 pairs" in caplog.text
    alone = TranslationPairsDataModule(str(train), val_file=val, vocab_size=40)
    alone.setup()
    assert alone.max_len == 64 and sum(map(len, alone.pairs.values())) == sum(map(len, linked.pairs.values())) + 2
    over = TranslationPairsDataModule(str(train), val_file=val, vocab_size=40, max_len=16)
    over.trainer = in_run
    with pytest.raises(ValueError, match=r"^max_len 16 is more than the model's 8 positions: drop "
                                         r"--data.init_args.max_len \(the model's is taken\) or raise"):
        over.setup()


def test_pairs_data_module_holds_the_pairs_not_their_ids(tmp_path):
    pairs = _pairs(6000)
    train = _tsv(tmp_path / "train.tsv", pairs)
    dm = TranslationPairsDataModule(str(train), vocab_size=40)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        dm.setup()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    text = sum(sys.getsizeof(s) + sys.getsizeof(t) + sys.getsizeof((s, t)) + 8 for s, t in pairs)
    assert held < 1.4 * text + len(dm.tokenizer.proto), (held, text)  # ids as lists: ~2.3x
    assert isinstance(dm.pairs["train"][0], tuple) and isinstance(dm.pairs["train"][0][0], str)


# --- end to end: the shipped recipes on one's own files ---------------------------------------------------

@pytest.fixture
def one_thread(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FIT = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "1.0", "--trainer.limit_val_batches", "1",
       "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
def test_bert_recipe_on_own_files_exports_for_fill_mask(tmp_path, one_thread, capsys):
    (tmp_path / "my.txt").write_text("\n\n".join(tiny_corpus(60)), encoding="utf-8")
    bert = "--model.init_args.model.init_args."
    assert main(["fit", "--config", str(CONFIGS / "bert_wordnet_mlm.yaml"), "--data.init_args.corpus", "null",
                 "--data.init_args.files", "[my.txt]", "--data.init_args.tokenizer", "runs/my_bert/tokenizer",
                 "--trainer.default_root_dir", "runs/my_bert", "--data.init_args.vocab_size", "120",
                 "--data.init_args.val_fraction", "0.2", bert + "dim", "32", bert + "depth", "1", *FIT]) == 0
    export = tmp_path / "runs" / "my_bert" / "export"
    assert not (tmp_path / "runs" / "bert_wordnet").exists()  # the recipe's own tokenizer folder is untouched
    saved = EncoderTokenizer.from_dir(tmp_path / "runs" / "my_bert" / "tokenizer")
    assert EncoderTokenizer.from_dir(export).hf.get_vocab() == saved.hf.get_vocab()
    capsys.readouterr()
    assert main(["fill-mask", "the cat [MASK] the dog.", "--model", str(export), "--top-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and all(line.strip().split()[1] in saved.hf.get_vocab() for line in out[:3])


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
def test_translation_recipe_on_own_pairs_exports_for_translate(tmp_path, one_thread, capsys):
    _tsv(tmp_path / "pairs.tsv", _pairs(200))
    s2s = "--model.init_args.model.init_args."
    assert main(["fit", "--config", str(CONFIGS / "translate_numbers.yaml"), "--data",
                 "mmkit.data.TranslationPairsDataModule", "--data.init_args.train_file", "pairs.tsv",
                 "--data.init_args.val_split", "0.05", "--data.init_args.vocab_size", "40",
                 "--trainer.default_root_dir", "runs/my_translate", s2s + "dim", "16", s2s + "encoder_depth", "1",
                 s2s + "decoder_depth", "1", "--model.init_args.max_new_tokens", "4", *FIT,
                 "--trainer.max_steps", "3"]) == 0  # 3 batches an epoch: validation scores the held-out pairs
    run = tmp_path / "runs" / "my_translate"
    logged = (next((run / "lightning_logs").glob("version_*/metrics.csv"))).read_text().splitlines()[0].split(",")
    assert {"val/loss", "val/chrf", "val/bleu", "val/exact"} <= set(logged)
    export = run / "export"
    trained = SentencePieceTokenizer.train([t for p in _pairs(200) if not is_held_out(p[0], 0.05) for t in p], 40)
    assert SentencePieceTokenizer.load(export) == trained
    capsys.readouterr()
    assert main(["translate", "red cat sings", "--model", str(export), "--max-length", "4"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    from mmkit.inference.translator import TranslationOptions, load_translator

    (direct,) = load_translator(export).translate("red cat sings", TranslationOptions(max_new_tokens=4))
    assert direct.error is None and line == direct.text
