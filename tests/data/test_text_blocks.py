"""Text DataModule: .txt/.jsonl reading with bad rows and non-UTF-8 files skipped, exact block
packing from token files, the unigram baseline, a trained tokenizer saved once and reused, and the
streaming pipeline giving exactly the blocks of the whole-corpus algorithm it replaced."""
from __future__ import annotations

import gc
import json
import logging
import math
import pickle
import tempfile
import random
import re
import socket

import numpy as np
import pytest
import torch
from _gpt import tiny_corpus

from mmkit.data.corpora import FORTUNES_DIR, corpus_texts, split_held_out
from mmkit.data.gpt_tokenizer import ByteBPETokenizer
from mmkit.data.text_blocks import (PIECE_CHARS, Blocks, TextBlocksDataModule, read_documents, text_pieces,
                                    unigram_perplexity)
from mmkit.data.token_files import TokenWriter


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
    # a folder given in `files` was "text file not found: DIR": it says so, and lists what to give instead
    with pytest.raises(IsADirectoryError, match=re.escape(f"--data.init_args.files: {tmp_path} is a folder, not a text "
                                                          f"file: list the files to read instead, e.g. --data.init_args"
                                                          f".files '[{tmp_path / 'a.txt'}, {tmp_path / 'b.jsonl'}, "
                                                          "...]'")):
        read_documents([tmp_path])
    with pytest.raises(IsADirectoryError, match=r"it holds none\)$"):
        read_documents([_folder(tmp_path / "empty")])
    with pytest.raises(ValueError, match="no text"):
        read_documents([tmp_path / "blank.txt"])


def _folder(path):
    path.mkdir()
    return path


def _touch(path):
    path.write_text("x")
    return path


def test_blocks_cut_the_token_file_into_overlapping_windows(tmp_path):
    with TokenWriter(tmp_path / "t.bin", np.uint16) as w:
        for chunk in ([1, 2, 3], [4, 5], [6, 7, 8, 9, 10]):
            w.write(np.array(chunk, np.int32))
    assert w.size == 10 and w.counts.tolist() == [0] + [1] * 10
    blocks = Blocks(w.path, block_size=3, dtype=np.uint16)
    assert [(b["tokens"].tolist(), b["targets"].tolist()) for b in blocks] == [
        ([1, 2, 3], [2, 3, 4]), ([4, 5, 6], [5, 6, 7]), ([7, 8, 9], [8, 9, 10])]
    assert blocks[0]["tokens"].dtype == torch.int64
    assert len(Blocks(w.path, 4, np.uint16)) == 2  # the short tail (token 10) is dropped
    with pytest.raises(ValueError, match="10 tokens do not fill one block of 11"):
        Blocks(w.path, 10, np.uint16)


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
    assert (_all_blocks(dm.train_set) == eos).any()  # documents are separated by <|endoftext|>
    n_train, n_val = len(dm.train_set), len(dm.val_set)
    assert n_val > 0 and 5 < n_train / n_val < 20
    assert 1 < dm.unigram_ppl < 300
    again = TextBlocksDataModule(files=[str(corpus)], tokenizer=str(tmp_path / "tok"), vocab_size=999, block_size=16,
                                 val_fraction=0.1)
    again.setup("fit")  # reads the saved tokenizer (vocab_size is for training one only)
    assert again.tokenizer == dm.tokenizer and torch.equal(_all_blocks(again.val_set), _all_blocks(dm.val_set))


def test_a_tokenizer_trained_on_other_texts_is_said_when_reused(tmp_path, caplog):
    """The recipe's tokenizer folder, trained on one data set, was read for the next one without a word (its
    words then split into many more tokens: a worse model, exit 0)."""
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("\n\n".join(tiny_corpus(120)))
    second.write_text("\n\n".join(tiny_corpus(120, seed=5)))
    tok = str(tmp_path / "tok")
    TextBlocksDataModule(files=[str(first)], tokenizer=tok, vocab_size=300, block_size=16).setup("fit")
    with caplog.at_level(logging.WARNING, logger="mmkit"):
        TextBlocksDataModule(files=[str(first)], tokenizer=tok, vocab_size=300, block_size=16).setup("fit")
        assert "trained on" not in caplog.text  # the same texts (a resumed run): nothing to say
        TextBlocksDataModule(files=[str(second)], tokenizer=tok, vocab_size=300, block_size=16).setup("fit")
    assert (f"the tokenizer in {tok} was trained on {first.resolve()}, not on these texts ({second.resolve()}): "
            "using it as it is") in caplog.text


def test_datamodule_arguments_are_checked():
    with pytest.raises(ValueError, match="^give either files or corpus: --data.init_args.files '\\[FILE.txt, ...\\]' "
                                         "\\(.txt or .jsonl\\) or --data.init_args.corpus fortunes or wordnet$"):
        TextBlocksDataModule()
    # files given on the command line while the recipe keeps its corpus: how to drop the corpus
    with pytest.raises(ValueError, match=re.escape("give either files or corpus, not both (--data.init_args.files "
                                                   "['a.txt'], --data.init_args.corpus fortunes): add "
                                                   "--data.init_args.corpus null to train on the files")):
        TextBlocksDataModule(files=["a.txt"], corpus="fortunes")
    with pytest.raises(ValueError, match="unknown corpus"):
        TextBlocksDataModule(corpus="nope").setup("fit")


def test_unigram_perplexity_is_the_same_counted_a_chunk_at_a_time():
    rng = np.random.default_rng(0)
    train, held = rng.integers(0, 50, 5000), rng.integers(0, 60, 700)  # held-out ids beyond the training ones
    whole = unigram_perplexity([train], [held], vocab_size=64)
    assert unigram_perplexity(np.array_split(train, 7), np.array_split(held, 3), 64) == pytest.approx(whole, rel=1e-12)
    counts = np.bincount(train, minlength=64)
    p = (counts[held] + 1) / (counts.sum() + 64)
    assert whole == pytest.approx(math.exp(-np.log(p).mean()), rel=1e-12)


def _all_blocks(ds: Blocks) -> torch.Tensor:
    """(N, block_size + 1): every example of a dataset, its inputs plus its last target."""
    return torch.stack([torch.cat([b["tokens"], b["targets"][-1:]]) for b in ds])


# --- the algorithm the streaming pipeline replaced, whole-corpus and in memory, as a reference ----------------

def _old_documents(paths) -> list[str]:
    docs = []
    for path in paths:
        lines = []
        for raw in path.read_bytes().splitlines(keepends=True):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if "\0" not in line:
                lines.append(line)
        if path.suffix == ".txt":
            docs.extend(re.split(r"\n[ \t]*\n\s*", "".join(lines)))
        else:
            rows = [json.loads(line) for line in lines if line.strip().startswith("{")]
            docs.extend(r["text"] for r in rows if isinstance(r.get("text"), str))
    return [d for d in docs if d.strip()]


def _old_blocks(docs: list[str], vocab_size: int, block_size: int, val_fraction: float):
    train, val = split_held_out(docs, val_fraction)
    tok = ByteBPETokenizer.train(train, vocab_size)

    def pack(part):
        flat = torch.tensor([t for d in part for t in tok.encode(d) + [tok.eos_id]])
        n = (len(flat) - 1) // block_size
        return flat[: n * block_size + 1].unfold(0, block_size + 1, block_size), flat

    (train_blocks, train_ids), (val_blocks, val_ids) = pack(train), pack(val)
    return tok, train_blocks, val_blocks, unigram_perplexity([train_ids], [val_ids], tok.vocab_size)


def _assert_same_as_old(dm: TextBlocksDataModule, docs: list[str]) -> None:
    hp = dm.hparams
    tok, train, val, ppl = _old_blocks(docs, hp.vocab_size, hp.block_size, hp.val_fraction)
    dm.setup("fit")
    assert dm.tokenizer == tok
    assert torch.equal(_all_blocks(dm.train_set), train) and torch.equal(_all_blocks(dm.val_set), val)
    assert dm.unigram_ppl == pytest.approx(ppl, rel=1e-9)


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(["tea", "Kaffee", "naïve", "3.14", "don't", "€5", "x", "  ", "\t"]) for _ in range(n))


def test_streamed_blocks_equal_the_whole_corpus_algorithm(tmp_path):
    """Same documents, split, tokenizer and blocks as before streaming, on awkward input: CRLF and
    lone-CR line breaks, blank lines of spaces, a bad line, and paragraphs longer than a tokenizer
    piece (`text_pieces`), so the recipes' published results still hold."""
    rng = random.Random(0)
    paragraphs = [_words(rng, rng.randint(1, 40)) for _ in range(400)] + [_words(rng, 30_000) for _ in range(3)]
    rng.shuffle(paragraphs)
    breaks = ["\n\n", "\n \t\n", "\r\n\r\n\n", "\n\n\n  ", "\r\r", "\n\x0c\n\n"]
    text = "".join(p + rng.choice(breaks) for p in paragraphs)
    (tmp_path / "a.txt").write_bytes(text.encode() + b"caf\xe9\n\nlast one")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(300)) + "oops\n")
    paths = [tmp_path / "a.txt", tmp_path / "b.jsonl"]
    # CRLF and lone CR are read as LF now (a Windows file's blank lines were no paragraph breaks before)
    (tmp_path / "lf").mkdir()
    (tmp_path / "lf" / "a.txt").write_bytes(text.replace("\r\n", "\n").replace("\r", "\n").encode()
                                            + b"caf\xe9\n\nlast one")
    docs = _old_documents([tmp_path / "lf" / "a.txt", tmp_path / "b.jsonl"])
    assert read_documents(paths) == docs and max(map(len, docs)) > PIECE_CHARS
    dm = TextBlocksDataModule(files=list(map(str, paths)), vocab_size=400, block_size=32, val_fraction=0.1)
    _assert_same_as_old(dm, docs)


def test_a_windows_corpus_has_the_paragraphs_of_the_same_text_with_lf(tmp_path):
    """Blank lines between CRLF (or lone-CR) lines break paragraphs as LF ones do: the corpus was one
    document before, so no held-out share."""
    text = "".join(f"paragraph {i}, line one\nline two\n\n" for i in range(50))
    for name, newline in (("lf.txt", "\n"), ("crlf.txt", "\r\n"), ("cr.txt", "\r")):
        (tmp_path / name).write_bytes(text.replace("\n", newline).encode())
    docs = read_documents([tmp_path / "lf.txt"])
    assert len(docs) == 50 and docs[0] == "paragraph 0, line one\nline two"
    assert read_documents([tmp_path / "crlf.txt"]) == read_documents([tmp_path / "cr.txt"]) == docs


@pytest.mark.skipif(not FORTUNES_DIR.is_dir(), reason="needs Debian's fortunes package")
def test_the_fortunes_recipe_data_is_unchanged():
    """configs/gpt_fortunes.yaml's data settings: the published perplexities were measured on these blocks."""
    dm = TextBlocksDataModule(corpus="fortunes", vocab_size=4096, block_size=128, val_fraction=0.05)
    _assert_same_as_old(dm, corpus_texts("fortunes"))


def test_text_pieces_tokenise_like_the_whole_text():
    rng = random.Random(1)
    text = _words(rng, 20_000)
    pieces = list(text_pieces(text, 1000))
    assert "".join(pieces) == text and max(map(len, pieces)) <= 1000 and len(pieces) > 80
    tok = ByteBPETokenizer.train([text], 500)
    assert [t for p in pieces for t in tok.encode(p)] == tok.encode(text)
    assert ByteBPETokenizer.train(pieces, 500) == tok  # the same pre-token counts
    spaceless = "x" * 2500  # no place to cut between words: cut anywhere, still bounded
    assert list(map(len, text_pieces(spaceless, 1000))) == [1000, 1000, 500]


def test_token_files_live_in_a_scratch_folder_that_goes_with_the_data(tmp_path, monkeypatch):
    monkeypatch.setenv("MMKIT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "cache" / "text_blocks"
    orphan = root / f"{socket.gethostname()}-{(1 << 22) + 1}-x"  # left by a killed process (no such pid)
    orphan.mkdir(parents=True)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(200)))
    dm = TextBlocksDataModule(files=[str(corpus)], vocab_size=300, block_size=16, val_fraction=0.1, batch_size=4,
                              num_workers=2)
    dm.setup("fit")
    (folder,) = root.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["train.bin", "val.bin"]
    expected = _all_blocks(dm.val_set)
    copy = pickle.loads(pickle.dumps(dm.val_set))  # as a spawned DataLoader worker gets it: maps the file itself
    assert copy.owner is None and copy._tokens is None and torch.equal(_all_blocks(copy), expected)
    batches = list(dm.val_dataloader())  # two forked workers
    assert torch.equal(torch.cat([torch.cat([b["tokens"], b["targets"][:, -1:]], 1) for b in batches]), expected)
    del dm, copy, batches
    gc.collect()
    assert not folder.exists()


def test_an_unwritable_cache_folder_falls_back_to_the_temp_folder(tmp_path, monkeypatch, caplog):
    from mmkit.data.token_files import ScratchFolder

    (tmp_path / "file").write_text("a file where the cache folder would go")
    monkeypatch.setenv("MMKIT_CACHE", str(tmp_path / "file"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    scratch = ScratchFolder()
    assert scratch.path.parent == tmp_path / "tmp" / "mmkit-text_blocks" and scratch.path.is_dir()
    assert "cannot make the token files' folder in" in caplog.text
