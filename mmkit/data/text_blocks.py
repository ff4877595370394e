"""Causal language-modelling data, packed as in GPT-2 and nanoGPT: documents from .txt/.jsonl
files (or an embedded offline corpus, `mmkit.data.corpora`) are tokenised, joined with
<|endoftext|> and cut into fixed blocks of `block_size + 1` tokens (inputs and next-token targets),
so no compute is spent on padding. The held-out documents are chosen by a stable hash.
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mmkit.data.corpora import corpus_texts, split_held_out
from mmkit.data.gpt_tokenizer import TOKENIZER_FILE, ByteBPETokenizer

log = logging.getLogger(__name__)
TEXT_SUFFIXES = (".txt", ".jsonl")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")


def read_documents(paths: Sequence[str | Path], text_key: str = "text") -> list[str]:
    """Documents from .txt files (one per paragraph: text between blank lines, so a single long
    file still yields a held-out share) and .jsonl files (one per row, `text_key`). Bad lines (not
    UTF-8, NUL bytes, rows without a valid string `text_key`) are logged and skipped: the first
    `MAX_WARNINGS` of a file one by one, then one line with the file's total.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: no paths, a suffix other than .txt/.jsonl, or no document at all.
    """
    if not paths:
        raise ValueError("no text files given (files is empty): list at least one .txt or .jsonl file")
    docs: list[str] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"text file not found: {path}")
        if path.suffix not in TEXT_SUFFIXES:
            raise ValueError(f"{path}: use {' or '.join(TEXT_SUFFIXES)} files")
        bad = _BadLines(path)
        if path.suffix == ".txt":
            docs.extend(_PARAGRAPH_BREAK.split("".join(line for _, line in _utf8_lines(path, bad))))
        else:
            docs.extend(_jsonl_texts(path, text_key, bad))
        bad.done()
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"no text in {', '.join(map(str, paths))}")
    return docs


MAX_WARNINGS = 5  # bad lines of a file warned about one by one; the rest are counted in one line
_SURROGATE = re.compile("[\ud800-\udfff]")


class _BadLines:
    """Skipped lines of one file: the first MAX_WARNINGS are logged one by one, `done` logs the total."""

    def __init__(self, path: Path) -> None:
        self.path, self.count = path, 0

    def skip(self, n: int, why: str) -> None:
        self.count += 1
        if self.count <= MAX_WARNINGS:
            log.warning("skipping %s line %d: %s", self.path, n, why)

    def done(self) -> None:
        if self.count > MAX_WARNINGS:
            log.warning("skipped %d bad lines of %s in all (the first %d are listed above)",
                        self.count, self.path, MAX_WARNINGS)


def _utf8_lines(path: Path, bad: _BadLines) -> Iterator[tuple[int, str]]:
    """(line number, line with its end) for the lines of `path` that are UTF-8 text without NUL."""
    for n, raw in enumerate(path.read_bytes().splitlines(keepends=True), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad.skip(n, f"not UTF-8 text (byte {e.start} of the line)")
            continue
        if "\0" in line:
            bad.skip(n, "NUL bytes (binary or UTF-16 text?), not UTF-8 text")
            continue
        yield n, line


def _jsonl_texts(path: Path, text_key: str, bad: _BadLines) -> Iterator[str]:
    for n, line in _utf8_lines(path, bad):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        doc = row.get(text_key) if isinstance(row, dict) else None
        if not isinstance(doc, str):
            bad.skip(n, f"not a JSON object with a string {text_key!r}")
        elif _SURROGATE.search(doc):
            bad.skip(n, f"{text_key!r} holds an unpaired surrogate escape (\\ud800-\\udfff), not valid Unicode")
        else:
            yield doc


def pack_blocks(docs: Sequence[Sequence[int]], block_size: int) -> Tensor:
    """Token sequences (lists or arrays) -> (N, block_size + 1) int64 blocks of their concatenation;
    the tail shorter than a block is dropped."""
    flat = _concat(docs, np.int64)
    n = (len(flat) - 1) // block_size
    if n < 1:
        raise ValueError(f"{len(flat)} tokens do not fill one block of {block_size + 1}")
    stream = torch.from_numpy(flat[: n * block_size + 1])
    # Blocks overlap by one token: the last target of a block is the first input of the next.
    return stream.unfold(0, block_size + 1, block_size)  # (N, block_size + 1)


def _concat(docs: Sequence[Sequence[int]], dtype: type = np.int32) -> np.ndarray:
    """The concatenation of token sequences as one array (int32: 4 bytes a token, not a Python int's 36)."""
    return np.concatenate([np.asarray(d) for d in docs] or [np.zeros(0)], dtype=dtype, casting="unsafe")


def encode_stream(tok: ByteBPETokenizer, docs: Sequence[str], chunk: int = 256) -> list[np.ndarray]:
    """The token ids of `docs`, each followed by <|endoftext|> (GPT-2's separator, so the model
    learns where texts end), as int32 arrays of `chunk` documents each: only one chunk at a time is
    held as Python lists."""
    end = [tok.eos_id] if tok.eos_id is not None else []
    return [_concat([ids + end for ids in tok.encode_batch(docs[i: i + chunk])]) for i in range(0, len(docs), chunk)]


def unigram_perplexity(train: Sequence[Sequence[int]], held_out: Sequence[Sequence[int]], vocab_size: int) -> float:
    """Perplexity of an add-one unigram model fitted on `train`, on the `held_out` tokens: the
    baseline a language model must beat to have learned anything beyond token frequencies."""
    tokens = _concat(held_out)
    size = max([vocab_size, int(tokens.max(initial=0)) + 1] + [int(np.max(d, initial=0)) + 1 for d in train])
    counts = sum((np.bincount(np.asarray(d, dtype=np.int64), minlength=size) for d in train), np.zeros(size, np.int64))
    total = counts.sum() + vocab_size
    nll = -np.log((counts[tokens] + 1) / total).sum() / max(len(tokens), 1)
    return math.exp(nll)


def _few_documents(docs: list[str]) -> str:
    """Why `docs` could not be split into a training and a held-out part."""
    distinct = len(set(docs))
    if distinct < len(docs):
        return (f"only {distinct} distinct among {len(docs)} documents (the hash split puts identical documents "
                "on the same side)" if distinct > 1 else f"all {len(docs)} documents are identical")
    return (f"{len(docs)} document{'s' if len(docs) > 1 else ''} in all (in .txt files documents are separated "
            "by blank lines, in .jsonl files there is one a row: split long texts)")


class Blocks(Dataset):
    def __init__(self, blocks: Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        block = self.blocks[i]
        return {"tokens": block[:-1], "targets": block[1:]}


class TextBlocksDataModule(pl.LightningDataModule):
    """Blocks of text for `mmkit.tasks.language_model.LanguageModel`.

    Args:
        files: .txt/.jsonl training files (give `files` or `corpus`).
        corpus: an embedded corpus instead ("fortunes", "wordnet"; see `mmkit.data.corpora`).
        tokenizer: a directory with GPT-2 tokenizer files to use; when it holds none, a byte-level
            BPE is trained on the training documents and saved there (so a resumed run reads the same).
            None: train one and keep it in memory.
        vocab_size: size of a trained tokenizer.
        block_size: tokens per training example (at most the model's `max_len`).
        val_fraction: share of the documents held out for validation (chosen by hash).
        batch_size, num_workers: DataLoader settings.
        text_key: field of .jsonl rows holding the text.
    """

    def __init__(
        self,
        files: list[str] | None = None,
        corpus: str | None = None,
        tokenizer: str | None = None,
        vocab_size: int = 4096,
        block_size: int = 128,
        val_fraction: float = 0.05,
        batch_size: int = 32,
        num_workers: int = 0,
        text_key: str = "text",
    ) -> None:
        super().__init__()
        if (files is None) == (corpus is None):
            raise ValueError("give either files or corpus")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if tokenizer and Path(tokenizer).expanduser().exists() and not Path(tokenizer).expanduser().is_dir():
            raise ValueError(f"tokenizer must be a folder (for the tokenizer files), but {tokenizer} is a file")
        self.save_hyperparameters()
        self.tokenizer: ByteBPETokenizer | None = None
        self.train_set: Blocks | None = None
        self.val_set: Blocks | None = None
        self.unigram_ppl: float | None = None

    def _documents(self) -> list[str]:
        hp = self.hparams
        return corpus_texts(hp.corpus) if hp.corpus else read_documents(hp.files, hp.text_key)

    def _tokenizer(self, train_docs: list[str]) -> ByteBPETokenizer:
        where = self.hparams.tokenizer
        if where and any((Path(where) / f).is_file() for f in (TOKENIZER_FILE, "vocab.json")):
            return ByteBPETokenizer.from_dir(where)
        tok = ByteBPETokenizer.train(train_docs, self.hparams.vocab_size)
        if where:
            tok.save(where)
            log.info("trained a %d-token byte-level BPE, saved to %s", tok.vocab_size, where)
        return tok

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        docs = self._documents()
        train_docs, val_docs = split_held_out(docs, hp.val_fraction)
        if not train_docs or not val_docs:
            raise ValueError(f"{len(train_docs)} training and {len(val_docs)} held-out documents: "
                             f"{_few_documents(docs)}; give more text or change val_fraction ({hp.val_fraction})")
        self.tokenizer = tok = self._tokenizer(train_docs)
        train_ids, val_ids = encode_stream(tok, train_docs), encode_stream(tok, val_docs)
        self.train_set, self.val_set = (Blocks(self._pack(ids, split)) for ids, split in
                                        ((train_ids, "training"), (val_ids, "held-out")))
        self.unigram_ppl = unigram_perplexity(train_ids, val_ids, tok.vocab_size)
        log.info("%d training and %d held-out blocks of %d tokens; unigram held-out perplexity %.1f",
                 len(self.train_set), len(self.val_set), hp.block_size, self.unigram_ppl)

    def _pack(self, ids: list[np.ndarray], split: str) -> Tensor:
        try:
            return pack_blocks(ids, self.hparams.block_size)
        except ValueError as e:
            more = "raise val_fraction, " if split == "held-out" else ""
            raise ValueError(f"the {split} split is too short: {e}; {more}lower block_size or give more text") from None

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers)

    def test_dataloader(self) -> DataLoader:  # no third split: `mmkit test` reports the held-out one
        return self.val_dataloader()
