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
from collections import Counter
from pathlib import Path
from typing import Sequence

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
    file still yields a held-out share) and .jsonl files (one per row, `text_key`). Unreadable
    files and bad rows are logged and skipped.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a suffix other than .txt/.jsonl, or no document at all.
    """
    docs: list[str] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"text file not found: {path}")
        if path.suffix not in TEXT_SUFFIXES:
            raise ValueError(f"{path}: use {' or '.join(TEXT_SUFFIXES)} files")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            log.warning("skipping %s: not UTF-8 text (byte %d)", path, e.start)
            continue
        if path.suffix == ".txt":
            docs.extend(_PARAGRAPH_BREAK.split(text))
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            doc = row.get(text_key) if isinstance(row, dict) else None
            if isinstance(doc, str):
                docs.append(doc)
            else:
                log.warning("skipping %s line %d: not a JSON object with a string %r", path, n, text_key)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"no text in {', '.join(map(str, paths))}")
    return docs


def pack_blocks(docs: Sequence[list[int]], block_size: int) -> Tensor:
    """Token lists -> (N, block_size + 1) int64 blocks of their concatenation; the tail shorter
    than a block is dropped."""
    flat = [t for doc in docs for t in doc]
    n = (len(flat) - 1) // block_size
    if n < 1:
        raise ValueError(f"{len(flat)} tokens do not fill one block of {block_size + 1}")
    stream = torch.tensor(flat[: n * block_size + 1], dtype=torch.long)
    # Blocks overlap by one token: the last target of a block is the first input of the next.
    return stream.unfold(0, block_size + 1, block_size)  # (N, block_size + 1)


def unigram_perplexity(train: Sequence[list[int]], held_out: Sequence[list[int]], vocab_size: int) -> float:
    """Perplexity of an add-one unigram model fitted on `train`, on the `held_out` tokens: the
    baseline a language model must beat to have learned anything beyond token frequencies."""
    counts = Counter(t for doc in train for t in doc)
    total = sum(counts.values()) + vocab_size
    tokens = [t for doc in held_out for t in doc]
    nll = -sum(math.log((counts[t] + 1) / total) for t in tokens) / max(len(tokens), 1)
    return math.exp(nll)


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
        train_docs, val_docs = split_held_out(self._documents(), hp.val_fraction)
        if not train_docs or not val_docs:
            raise ValueError(f"{len(train_docs)} training and {len(val_docs)} held-out documents: "
                             "give more text or change val_fraction")
        self.tokenizer = tok = self._tokenizer(train_docs)
        # Each document ends with <|endoftext|>, GPT-2's separator, so the model learns where texts end.
        end = [tok.eos_id] if tok.eos_id is not None else []
        train_ids, val_ids = ([ids + end for ids in tok.encode_batch(docs)] for docs in (train_docs, val_docs))
        self.train_set = Blocks(pack_blocks(train_ids, hp.block_size))
        self.val_set = Blocks(pack_blocks(val_ids, hp.block_size))
        self.unigram_ppl = unigram_perplexity(train_ids, val_ids, tok.vocab_size)
        log.info("%d training and %d held-out blocks of %d tokens; unigram held-out perplexity %.1f",
                 len(self.train_set), len(self.val_set), hp.block_size, self.unigram_ppl)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers)

    def test_dataloader(self) -> DataLoader:  # no third split: `mmkit test` reports the held-out one
        return self.val_dataloader()
