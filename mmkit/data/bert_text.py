"""Data for BERT (Devlin et al., 2019): sentences for masked-LM pretraining with dynamic masking
(RoBERTa's: a new 15% of the tokens per batch, 80% [MASK] / 10% random / 10% unchanged, §3.1 of
BERT) and WordNet definitions labelled by lexicographer file ("noun.animal", "verb.motion", ...)
for sequence classification, held-out synsets chosen by a stable hash (`mmkit.data.corpora`).
Masked-LM pretraining also reads one's own .txt/.jsonl files (`mmkit.data.documents`), a long
document cut into consecutive windows of `max_len` tokens as BERT's pretraining packs its text.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from mmkit.data.bert_tokenizer import TOKENIZER_FILES, EncoderTokenizer
from mmkit.data.corpora import (
    CORPORA, LEXNAMES, WORDNET_PARTS, Synset, corpus_texts, is_held_out, split_held_out, wordnet_sentences,
    wordnet_synsets,
)
from mmkit.data.documents import TEXT_SUFFIXES, iter_documents
from mmkit.data.text_blocks import files_source, record_vocab_size, saved_vocab_mismatch, warn_other_texts
from mmkit.data.token_rows import TokenRows, windows

log = logging.getLogger(__name__)
IGNORE = -100  # cross-entropy's ignore_index: positions with no MLM target
ENCODE_DOCS = 256  # documents of one `encode_batch` (the files path): a bounded batch of text at a time
WORDNET_TEXTS = "corpus wordnet"  # what the recipes' shared tokenizer is trained on (`record_vocab_size`)


def mask_tokens(ids: Tensor, special: Tensor, mask_id: int, vocab_size: int, prob: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """BERT's masking: choose `prob` of the non-special tokens; of those 80% become [MASK], 10% a
    random token, 10% stay. Returns (inputs, labels) with labels IGNORE where nothing is predicted.

    Args:
        ids: (B, T) int64 token ids.
        special: (B, T) bool, True where a token may not be chosen ([CLS], [SEP], padding).
    """
    chosen = (torch.rand(ids.shape, generator=generator) < prob) & ~special
    labels = ids.masked_fill(~chosen, IGNORE)
    roll = torch.rand(ids.shape, generator=generator)
    inputs = ids.masked_fill(chosen & (roll < 0.8), mask_id)
    randomise = chosen & (roll >= 0.8) & (roll < 0.9)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator)
    return torch.where(randomise, random_ids, inputs), labels


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad id lists to the longest: (B, T) ids and (B, T) bool attention mask."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    mask = torch.arange(T)[None, :] < torch.tensor([len(r) for r in rows])[:, None]
    return ids, mask


class LengthBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of similar lengths, so little compute goes to padding: each epoch shuffles, sorts
    pools of `pool` batches by length, cuts them into batches and shuffles the batch order."""

    def __init__(self, lengths: Sequence[int], batch_size: int, pool: int = 50, seed: int = 0) -> None:
        self.lengths, self.batch_size, self.pool, self.seed, self.epoch = list(lengths), batch_size, pool, seed, 0

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):  # noqa: ANN204 - Iterator[list[int]]
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.batch_size * self.pool
        batches = []
        for start in range(0, len(order), size):
            chunk = sorted(order[start : start + size], key=self.lengths.__getitem__)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for i in torch.randperm(len(batches), generator=g).tolist():
            yield batches[i]


class MaskingCollate:
    """Pads a batch of encoded sentences and masks it afresh every time (dynamic masking)."""

    def __init__(self, tokenizer: EncoderTokenizer, prob: float = 0.15) -> None:
        self.pad_id, self.mask_id, self.vocab_size = tokenizer.pad_id, tokenizer.mask_id, len(tokenizer)
        self.prob = prob
        self.special_ids = torch.tensor(sorted(tokenizer.special_ids))

    def __call__(self, rows: list[list[int]]) -> dict[str, Tensor]:
        ids, mask = pad_batch(rows, self.pad_id)
        special = torch.isin(ids, self.special_ids) | ~mask
        inputs, labels = mask_tokens(ids, special, self.mask_id, self.vocab_size, self.prob)
        return {"input_ids": inputs, "attention_mask": mask, "labels": labels}


def wordnet_split(held_out: float, parts: Sequence[str] = WORDNET_PARTS) -> tuple[list[Synset], list[Synset]]:
    """(training, held-out) synsets by the stable hash of their key; the held-out synsets' text never
    reaches pretraining, so fine-tuning accuracy on them is measured on unseen definitions."""
    return split_held_out(wordnet_synsets(parts=parts), held_out, key=lambda s: s.key)


def load_or_train_tokenizer(where: str | None, texts: Iterable[str], vocab_size: int,
                            source: str | None = None) -> EncoderTokenizer:
    """The tokenizer saved in `where`, else a WordPiece trained on `texts` (saved to `where`).

    Args:
        source: what `texts` are in a few words ("corpus wordnet", the files), noted beside a saved
            tokenizer; reusing one noted for other texts is said in a warning.

    Raises:
        ValueError: the saved tokenizer does not answer `vocab_size` (`saved_tokenizer`).
    """
    tok = saved_tokenizer(where, vocab_size, source)
    if tok is None:
        tok = EncoderTokenizer.train(texts, vocab_size)
        save_tokenizer(tok, where, vocab_size, source)
    return tok


def saved_tokenizer(where: str | None, vocab_size: int, source: str | None = None) -> EncoderTokenizer | None:
    """The tokenizer saved in `where`, or None when it holds none (or `where` is None).

    Raises:
        ValueError: the saved tokenizer does not answer `vocab_size` (it has another size, and mmkit
            did not train it for this vocab_size): one line naming the folder, both sizes and what to
            do. The recipes share a folder on purpose (classification reuses the masked-LM
            pretraining's vocabulary, which the pretrained model's embeddings are sized by), so a
            vocab_size the folder cannot give is refused rather than silently not applied.
    """
    # Any file of a saved tokenizer (RoBERTa's vocab.json + merges.txt too) means the folder holds one: read
    # it (an incomplete one is refused by from_dir), never train over it and write a WordPiece beside it.
    if not where or not any((Path(where).expanduser() / f).is_file() for f in TOKENIZER_FILES):
        return None
    tok = EncoderTokenizer.from_dir(where)
    mismatch = saved_vocab_mismatch(where, len(tok), vocab_size)
    if mismatch:
        message, answers = mismatch
        raise ValueError(f"{message}: give vocab_size {answers} to use it, or another tokenizer folder, or "
                         f"delete the folder to train a {vocab_size}-token one (a model pretrained with the old "
                         f"one will not fit the new one)")
    if source:
        warn_other_texts(where, source)
    return tok


def save_tokenizer(tok: EncoderTokenizer, where: str | None, vocab_size: int, source: str | None = None) -> None:
    """Save a just-trained `tok` to folder `where` (if any) with the vocab_size (and texts) it was trained for."""
    if where:
        tok.save(where)
        record_vocab_size(where, vocab_size, source)
        short = f" (vocab_size {vocab_size}: the training text holds no more)" if len(tok) < vocab_size else ""
        log.info("trained a %d-token WordPiece vocabulary%s, saved to %s", len(tok), short, where)


def _tokenizer_texts(held_out: float) -> list[str]:
    # One definition of the tokenizer's training text for both recipes, so they share a vocabulary.
    return wordnet_sentences(wordnet_split(held_out)[0])


class MaskedLMDataModule(pl.LightningDataModule):
    """Sentences (or windows of one's own documents) for `mmkit.tasks.masked_lm.MaskedLM`.

    Args:
        corpus: "wordnet" (definitions and examples of the training synsets) or another embedded
            corpus (`mmkit.data.corpora`, e.g. "fortunes"); None with `files`.
        tokenizer: directory of an encoder tokenizer; when it holds none, a WordPiece is trained (on
            the training synsets' sentences for a corpus, on the training documents for `files`) and
            saved there. None: train one, keep it in memory.
        vocab_size: size of a trained tokenizer; a saved one of another size is refused (one line,
            `saved_tokenizer`): give its size, or another folder.
        max_len: tokens per row at most ([CLS]/[SEP] included): a longer corpus sentence is cut, a longer
            document of `files` is cut into consecutive windows of this size.
        held_out: share of WordNet synsets kept out (the classification recipe's test synsets).
        val_fraction: share of the sentences (of `files`: documents) held out by a stable hash to
            validate the MLM loss.
        mask_prob: share of tokens masked per batch.
        batch_size, num_workers: DataLoader settings.
        files: .txt files (a document a paragraph: text between blank lines) and .jsonl files (a
            document a row) to pretrain on instead of `corpus` (give one of the two).
        text_key: field of .jsonl rows holding the text.
    """

    def __init__(self, corpus: str | None = "wordnet", tokenizer: str | None = None, vocab_size: int = 8000,
                 max_len: int = 64, held_out: float = 0.1, val_fraction: float = 0.02, mask_prob: float = 0.15,
                 batch_size: int = 64, num_workers: int = 0, files: list[str] | None = None,
                 text_key: str = "text") -> None:
        super().__init__()
        if isinstance(files, str):
            raise ValueError(f"files is the string {files!r}, not a list of paths: give [{files!r}]")
        if corpus is not None and files is not None:
            raise ValueError(f"corpus {corpus!r} and files {files} are both given: give one of them (with files, "
                             "corpus None: --data.init_args.corpus null)")
        if corpus is None and not files:
            raise ValueError(f"corpus is None and files is {files}: give a corpus ({', '.join(CORPORA)}) or a list "
                             f"of {' or '.join(TEXT_SUFFIXES)} files")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction {val_fraction} is not in [0, 1): give the share of the texts to validate "
                             "on, such as 0.02")
        if files is not None and max_len < 3:
            raise ValueError(f"max_len {max_len} leaves no room for a token between [CLS] and [SEP]: give at least 3")
        self.save_hyperparameters()
        self.tokenizer: EncoderTokenizer | None = None
        self.train_ids = TokenRows()
        self.val_ids = TokenRows()

    def setup(self, stage: str | None = None) -> None:
        if self.train_ids:
            return
        if self.hparams.files is not None:
            self._setup_files()
        else:
            hp = self.hparams
            tok_texts = _tokenizer_texts(hp.held_out)
            texts = tok_texts if hp.corpus == "wordnet" else corpus_texts(hp.corpus)
            self.tokenizer = tok = load_or_train_tokenizer(hp.tokenizer, tok_texts, hp.vocab_size, WORDNET_TEXTS)
            train, val = split_held_out(texts, hp.val_fraction)
            self.train_ids, self.val_ids = (TokenRows(tok.encode_batch(t, hp.max_len)) for t in (train, val))
        log.info("%d training and %d validation rows for masked-LM", len(self.train_ids), len(self.val_ids))

    def _setup_files(self) -> None:
        """Two passes over the files (three when a tokenizer is trained); memory holds the token ids and one
        batch of documents (and, while a tokenizer trains, its training text: `EncoderTokenizer.train`)."""
        hp = self.hparams
        source = files_source(hp.files)
        tok = saved_tokenizer(hp.tokenizer, hp.vocab_size, source)
        if tok is None:
            counts = [0, 0]
            tok = EncoderTokenizer.train((doc for held, doc in self._split(counts) if not held), hp.vocab_size)
            self._check_split(counts)  # before saving a tokenizer of files that cannot be used
            save_tokenizer(tok, hp.tokenizer, hp.vocab_size, source)
        self.tokenizer = tok
        counts, batches = [0, 0], ([], [])
        rows = (TokenRows(), TokenRows())
        for held, doc in self._split(counts):
            batches[held].append(doc)
            if len(batches[held]) >= ENCODE_DOCS:
                rows[held].extend(windows(tok.encode_batch(batches[held]), hp.max_len))
                batches[held].clear()
        for held in (False, True):
            rows[held].extend(windows(tok.encode_batch(batches[held]), hp.max_len))
        self._check_split(counts)
        self.train_ids, self.val_ids = rows

    def _split(self, counts: list[int]) -> Iterator[tuple[bool, str]]:
        """(held out?, document) over the files, by the stable hash of `split_held_out`, counted in `counts`."""
        for doc in iter_documents(self.hparams.files, self.hparams.text_key):
            held = is_held_out(doc, self.hparams.val_fraction)
            counts[held] += 1
            yield held, doc

    def _check_split(self, counts: list[int]) -> None:
        if not counts[0] or (not counts[1] and self.hparams.val_fraction > 0):
            raise ValueError(f"val_fraction {self.hparams.val_fraction} puts {counts[0]} of the {sum(counts)} "
                             f"documents of files in training and {counts[1]} in validation: give more documents "
                             "(in .txt files separated by blank lines, in .jsonl files one a row) or change "
                             "val_fraction")

    def _loader(self, rows: TokenRows) -> DataLoader:
        return DataLoader(rows, batch_sampler=LengthBatches(rows.lengths(), self.hparams.batch_size),
                          collate_fn=MaskingCollate(self.tokenizer, self.hparams.mask_prob),
                          num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_ids)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_ids)


class LabelledCollate:
    """Pads encoded texts; labels as a (B,) tensor."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[tuple[list[int], int]]) -> dict[str, Tensor]:
        ids, mask = pad_batch([r[0] for r in rows], self.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r[1] for r in rows])}


class WordNetLexnameDataModule(pl.LightningDataModule):
    """WordNet definitions -> lexicographer file, for `mmkit.tasks.text_classifier.TextClassifier`.

    Args:
        tokenizer: as in `MaskedLMDataModule` (the same directory gives the same vocabulary).
        vocab_size: size of a trained tokenizer; as in `MaskedLMDataModule`, it must be the saved one's.
        parts: parts of speech whose synsets are used ("noun", "verb", "adj", "adv").
        max_len: tokens per definition at most.
        held_out: share of synsets for validation/test (never seen in training or pretraining).
        max_train: use at most this many training synsets (an evenly spaced subset; None = all).
        batch_size, num_workers: DataLoader settings.
    """

    def __init__(self, tokenizer: str | None = None, vocab_size: int = 8000, parts: list[str] | None = None,
                 max_len: int = 64, held_out: float = 0.1, max_train: int | None = None, batch_size: int = 64,
                 num_workers: int = 0) -> None:
        super().__init__()
        parts = list(parts or ["noun", "verb"])
        unknown = sorted(set(parts) - set(WORDNET_PARTS))
        if unknown:
            raise ValueError(f"unknown WordNet parts of speech {unknown}; use {', '.join(WORDNET_PARTS)}")
        self.save_hyperparameters()
        # Known before setup, so the recipe links them to the model (LightningCLI link_arguments).
        prefixes = tuple(f"{p}." for p in parts)
        self.class_names = [n for n in LEXNAMES if n.startswith(prefixes)]
        self.num_classes = len(self.class_names)
        self.tokenizer: EncoderTokenizer | None = None
        self.train_rows: list[tuple[list[int], int]] = []
        self.val_rows: list[tuple[list[int], int]] = []

    def _rows(self, synsets: list[Synset]) -> list[tuple[list[int], int]]:
        index = {n: i for i, n in enumerate(self.class_names)}
        synsets = [s for s in synsets if s.definition and s.lexname in index]
        ids = self.tokenizer.encode_batch([s.definition for s in synsets], self.hparams.max_len)
        return [(i, index[s.lexname]) for i, s in zip(ids, synsets)]

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows:
            return
        hp = self.hparams
        self.tokenizer = load_or_train_tokenizer(hp.tokenizer, _tokenizer_texts(hp.held_out), hp.vocab_size,
                                                 WORDNET_TEXTS)
        train, held = wordnet_split(hp.held_out, hp.parts)
        if hp.max_train and len(train) > hp.max_train:
            step = len(train) / hp.max_train
            train = [train[int(i * step)] for i in range(hp.max_train)]
        self.train_rows, self.val_rows = self._rows(train), self._rows(held)
        log.info("%d training and %d held-out definitions, %d classes", len(self.train_rows), len(self.val_rows),
                 self.num_classes)

    def _loader(self, rows: list) -> DataLoader:
        return DataLoader(rows, batch_sampler=LengthBatches([len(r[0]) for r in rows], self.hparams.batch_size),
                          collate_fn=LabelledCollate(self.tokenizer.pad_id), num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_rows)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_rows)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
