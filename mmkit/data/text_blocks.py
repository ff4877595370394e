"""Causal language-modelling data, packed as in GPT-2 and nanoGPT: documents from .txt/.jsonl
files (or an embedded offline corpus, `mmkit.data.corpora`) are tokenised, joined with
<|endoftext|> and cut into fixed blocks of `block_size + 1` tokens (inputs and next-token targets),
so no compute is spent on padding. The held-out documents are chosen by a stable hash.

As in nanoGPT's `prepare.py`, memory stays bounded whatever the corpus's size: documents are read as
a stream (`mmkit.data.documents`), the tokenizer is trained from an iterator, and the token ids are
written a chunk at a time to files (`mmkit.data.token_files`) that the datasets read through a memmap.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from mmkit.data.corpora import CORPORA, corpus_texts, is_held_out
from mmkit.data.documents import MAX_WARNINGS, iter_documents, read_documents
from mmkit.data.gpt_tokenizer import TOKENIZER_FILE, ByteBPETokenizer
from mmkit.data.sampling import order
from mmkit.data.token_files import Blocks, ScratchFolder, TokenWriter, token_dtype

__all__ = ["MAX_WARNINGS", "Blocks", "TextBlocksDataModule", "counts_perplexity", "encode_stream", "iter_documents",
           "read_documents", "text_pieces", "token_counts", "unigram_perplexity"]
log = logging.getLogger(__name__)
# Beside a tokenizer that mmkit trained and saved: the vocab_size it was trained for. A small corpus can
# end a training short of it, and a later run asking the same vocab_size then still matches the folder.
TRAINED_FOR_FILE = "mmkit_vocab_size.json"
BATCH_DOCS, BATCH_CHARS = 256, 1 << 18  # texts given to one `encode_batch`: about 100k tokens in Python lists
PIECE_CHARS = 1 << 16  # a longer document is tokenised (and the tokenizer trained) in pieces of about this size
_DISTINCT_LIMIT = 1 << 16  # distinct documents counted for an error message (memory: their hashes)


def text_pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """`text` in pieces of at most `size` characters, cut where GPT-2's pre-tokenizer splits anyway
    (before a space between two non-spaces, which starts a new word), so the pieces tokenise to the ids
    of the whole text: a long document costs the tokenizer one piece of memory at a time."""
    start = 0
    while len(text) - start > size:
        cut = start + size
        at = text.rfind(" ", start + size // 2, cut)
        while at > start + size // 2:  # the last space with a non-space on either side
            if not text[at - 1].isspace() and at + 1 < len(text) and not text[at + 1].isspace():
                cut = at
                break
            at = text.rfind(" ", start + size // 2, at)
        yield text[start:cut]
        start = cut
    yield text[start:]


def encode_stream(tok: ByteBPETokenizer, docs: Iterable[str]) -> Iterator[np.ndarray]:
    """The token ids of `docs`, each followed by <|endoftext|> (GPT-2's separator, so the model
    learns where texts end), as int32 arrays of a batch of documents each: only one batch at a time
    is held as Python lists."""
    end = [tok.eos_id] if tok.eos_id is not None else []
    texts: list[str] = []
    ends: list[bool] = []  # whether a document ends with this text
    chars = 0
    for doc in docs:
        pieces = list(text_pieces(doc)) if len(doc) > PIECE_CHARS else [doc]
        for i, piece in enumerate(pieces):
            texts.append(piece)
            ends.append(i == len(pieces) - 1)
            chars += len(piece)
            if len(texts) >= BATCH_DOCS or chars >= BATCH_CHARS:
                yield _ids(tok.encode_batch(texts), ends, end)
                texts, ends, chars = [], [], 0
    if texts:
        yield _ids(tok.encode_batch(texts), ends, end)


def _ids(ids: list[list[int]], ends: list[bool], end: list[int]) -> np.ndarray:
    """One int32 array (4 bytes a token, not a Python int's 36) of the ids, with `end` after each end."""
    return np.fromiter(itertools.chain.from_iterable(seq + end if last else seq for seq, last in zip(ids, ends)),
                       np.int32)


def token_counts(chunks: Iterable[Iterable[int]], size: int = 0) -> np.ndarray:
    """How often each id occurs in `chunks` (token sequences or arrays), counted a chunk at a time."""
    counts = np.zeros(size, np.int64)
    for chunk in chunks:
        c = np.bincount(np.asarray(chunk, dtype=np.int64), minlength=len(counts))
        counts = np.pad(counts, (0, len(c) - len(counts))) + c
    return counts


def unigram_perplexity(train: Iterable[Iterable[int]], held_out: Iterable[Iterable[int]], vocab_size: int) -> float:
    """Perplexity of an add-one unigram model fitted on `train`, on the `held_out` tokens: the
    baseline a language model must beat to have learned anything beyond token frequencies. Both are
    token sequences, counted one at a time."""
    return counts_perplexity(token_counts(train), token_counts(held_out), vocab_size)


def counts_perplexity(train: np.ndarray, held_out: np.ndarray, vocab_size: int) -> float:
    """`unigram_perplexity` from the counts of each id (`token_counts`) in the two parts."""
    size = max(vocab_size, len(train), len(held_out))
    train, held_out = np.pad(train, (0, size - len(train))), np.pad(held_out, (0, size - len(held_out)))
    nll = -(held_out * np.log((train + 1) / (train.sum() + vocab_size))).sum() / max(int(held_out.sum()), 1)
    return math.exp(nll)


def record_vocab_size(where: str | Path, vocab_size: int, texts: str | None = None) -> None:
    """Note in tokenizer folder `where` the vocab_size its tokenizer was trained for (`TRAINED_FOR_FILE`), and
    the texts it was trained on (`texts`: "corpus NAME" or the files; `other_texts` compares them)."""
    record = {"vocab_size": vocab_size, **({"texts": texts} if texts else {})}
    (Path(where).expanduser() / TRAINED_FOR_FILE).write_text(json.dumps(record) + "\n")


def files_source(files: Sequence[str | Path]) -> str:
    """Files in a few words (resolved paths, shortened past three), as a tokenizer folder notes its texts."""
    paths = [str(Path(f).expanduser().resolve()) for f in files]
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more files" if len(paths) > 3 else "")


def warn_other_texts(where: str | Path, texts: str) -> None:
    """Warn when the tokenizer read from folder `where` was trained on other texts than `texts` (`other_texts`):
    a second data set into a recipe's folder, whose words then split into many more tokens."""
    trained_on = other_texts(where, texts)
    if trained_on:
        log.warning("the tokenizer in %s was trained on %s, not on these texts (%s): using it as it is; to train one "
                    "on these texts give another folder (--data.init_args.tokenizer)", where, trained_on, texts)


def other_texts(where: str | Path, texts: str) -> str | None:
    """The texts the tokenizer in folder `where` was trained on (as `record_vocab_size` noted them) where they
    are not `texts`, else None (the same, or not recorded: a downloaded tokenizer, an older mmkit's)."""
    try:
        recorded = json.loads((Path(where).expanduser() / TRAINED_FOR_FILE).read_text()).get("texts")
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, str) and recorded != texts else None


def saved_vocab_mismatch(where: str | Path, size: int, vocab_size: int) -> tuple[str, int] | None:
    """None when the tokenizer saved in folder `where`, of `size` tokens, answers a request for
    `vocab_size`: it has that size, or mmkit trained it for that vocab_size (the corpus had fewer).
    Else (the start of a one-line message naming the folder and both sizes, the vocab_size that the
    folder does answer); the caller says what follows.
    """
    try:
        trained_for = json.loads((Path(where).expanduser() / TRAINED_FOR_FILE).read_text())["vocab_size"]
    except (OSError, ValueError, TypeError, KeyError):
        trained_for = None  # not trained by mmkit (a downloaded tokenizer), or by an older mmkit
    if not isinstance(trained_for, int) or isinstance(trained_for, bool):
        trained_for = None
    if vocab_size in (size, trained_for):
        return None
    made = f" (trained for vocab_size {trained_for})" if trained_for not in (None, size) else ""
    return (f"vocab_size is {vocab_size}, but the tokenizer folder {where} holds a {size}-token tokenizer{made}",
            size if trained_for is None else trained_for)


def _few_documents(docs: Iterable[str], count: int) -> str:
    """Why the `count` documents `docs` yields could not be split into a training and a held-out part."""
    distinct: set[int] = set()  # hashes, not texts, and a limited number: a corpus this uniform is small
    for doc in docs:
        distinct.add(hash(doc))
        if len(distinct) > _DISTINCT_LIMIT:
            break
    n = len(distinct) if len(distinct) <= _DISTINCT_LIMIT else count
    if n < count:
        return (f"only {n} distinct among {count} documents (the hash split puts identical documents "
                "on the same side)" if n > 1 else f"all {count} documents are identical")
    return (f"{count} document{'s' if count > 1 else ''} in all (in .txt files documents are separated "
            "by blank lines, in .jsonl files there is one a row: split long texts)")


def _batches(split: Iterable[tuple[bool, str]]) -> Iterator[tuple[bool, list[str]]]:
    """(held out?, documents): each side's documents in order, a bounded batch at a time."""
    pending: list[list[str]] = [[], []]
    chars = [0, 0]
    for held, doc in split:
        pending[held].append(doc)
        chars[held] += len(doc)
        if len(pending[held]) >= BATCH_DOCS or chars[held] >= BATCH_CHARS:
            yield held, pending[held]
            pending[held], chars[held] = [], 0
    for held in (False, True):
        if pending[held]:
            yield held, pending[held]


class TextBlocksDataModule(pl.LightningDataModule):
    """Blocks of text for `mmkit.tasks.language_model.LanguageModel`.

    Token ids go to files in a scratch folder (`mmkit.data.token_files.ScratchFolder`: under
    `$MMKIT_CACHE/text_blocks` or `~/.cache/mmkit/text_blocks`, removed when the data module is gone
    or the process exits), read back a block at a time.

    Args:
        files: .txt/.jsonl training files (give `files` or `corpus`).
        corpus: an embedded corpus instead ("fortunes", "wordnet"; see `mmkit.data.corpora`).
        tokenizer: a directory with GPT-2 tokenizer files to use; when it holds none, a byte-level
            BPE is trained on the training documents and saved there (so a resumed run reads the same).
            None: train one and keep it in memory.
        vocab_size: size of a trained tokenizer. A saved tokenizer of another size (one not trained by
            mmkit for this vocab_size) is still used, with a warning naming both sizes.
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
        if files is not None and corpus is not None:  # the recipe's corpus kept beside the files given
            raise ValueError(f"give either files or corpus, not both (--data.init_args.files {files}, "
                             f"--data.init_args.corpus {corpus}): add --data.init_args.corpus null to train on the "
                             "files")
        if files is None and corpus is None:
            raise ValueError(f"give either files or corpus: --data.init_args.files '[FILE.txt, ...]' (.txt or .jsonl) "
                             f"or --data.init_args.corpus {' or '.join(CORPORA)}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if tokenizer and Path(tokenizer).expanduser().exists() and not Path(tokenizer).expanduser().is_dir():
            raise ValueError(f"tokenizer must be a folder (for the tokenizer files), but {tokenizer} is a file")
        self.save_hyperparameters()
        self.tokenizer: ByteBPETokenizer | None = None
        self.train_set: Blocks | None = None
        self.val_set: Blocks | None = None
        self.unigram_ppl: float | None = None

    def _documents(self) -> Callable[[], Iterator[str]]:
        """A function that starts a new pass over the documents (the files are read once a pass)."""
        hp = self.hparams
        if hp.corpus:
            texts = corpus_texts(hp.corpus)  # small, shipped by Debian packages: kept for the passes
            return lambda: iter(texts)
        return lambda: iter_documents(hp.files, hp.text_key)

    def _texts(self) -> str:
        return f"corpus {self.hparams.corpus}" if self.hparams.corpus else files_source(self.hparams.files)

    def _split(self, docs: Iterable[str], counts: list[int]) -> Iterator[tuple[bool, str]]:
        """(held out?, document) by the stable hash of `split_held_out`, counting each side in `counts`."""
        for doc in docs:
            held = is_held_out(doc, self.hparams.val_fraction)
            counts[held] += 1
            yield held, doc

    def _check_split(self, counts: list[int], docs: Callable[[], Iterator[str]]) -> None:
        if not counts[0] or not counts[1]:
            raise ValueError(f"{counts[0]} training and {counts[1]} held-out documents: "
                             f"{_few_documents(docs(), sum(counts))}; give more text or change val_fraction "
                             f"({self.hparams.val_fraction})")

    def _tokenizer(self, docs: Callable[[], Iterator[str]]) -> ByteBPETokenizer:
        """The saved tokenizer, else one trained on the training documents (a pass over them)."""
        where, vocab_size = self.hparams.tokenizer, self.hparams.vocab_size
        if where and any((Path(where).expanduser() / f).is_file() for f in (TOKENIZER_FILE, "vocab.json")):
            tok = ByteBPETokenizer.from_dir(where)
            # The folder wins (a resumed run must read the tokenizer it trained with, and the GPT's
            # vocab_size follows the data's), but a vocab_size it does not answer is said, not ignored.
            mismatch = saved_vocab_mismatch(where, tok.vocab_size, vocab_size)
            if mismatch:
                log.warning("%s: using it as it is (the GPT's vocab_size follows it); to train a %d-token one, "
                            "delete the folder or give another tokenizer folder", mismatch[0], vocab_size)
            warn_other_texts(where, self._texts())
            return tok
        counts = [0, 0]
        train = (piece for held, doc in self._split(docs(), counts) if not held for piece in text_pieces(doc))
        tok = ByteBPETokenizer.train(train, vocab_size)
        self._check_split(counts, docs)  # before saving a tokenizer of a corpus that cannot be used
        if where:
            tok.save(where)
            record_vocab_size(where, vocab_size, self._texts())
            short = f" (vocab_size {vocab_size}: the training text holds no more merges)" \
                if tok.vocab_size < vocab_size else ""
            log.info("trained a %d-token byte-level BPE%s, saved to %s", tok.vocab_size, short, where)
        return tok

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        if not 0 <= hp.val_fraction < 1:
            raise ValueError(f"held-out fraction must be in [0, 1), got {hp.val_fraction}")
        docs = self._documents()
        self.tokenizer = tok = self._tokenizer(docs)
        scratch = ScratchFolder()
        dtype = token_dtype(tok.vocab_size)
        writers = (TokenWriter(scratch.path / "train.bin", dtype), TokenWriter(scratch.path / "val.bin", dtype))
        counts = [0, 0]
        with writers[0], writers[1]:
            for held, batch in _batches(self._split(docs(), counts)):
                for ids in encode_stream(tok, batch):
                    writers[held].write(ids)
        self._check_split(counts, docs)
        self.train_set, self.val_set = (self._blocks(w, split, scratch) for w, split in
                                        zip(writers, ("training", "held-out")))
        self.unigram_ppl = counts_perplexity(writers[0].counts, writers[1].counts, tok.vocab_size)
        log.info("%d training and %d held-out blocks of %d tokens; unigram held-out perplexity %.1f",
                 len(self.train_set), len(self.val_set), hp.block_size, self.unigram_ppl)

    def _blocks(self, writer: TokenWriter, split: str, scratch: ScratchFolder) -> Blocks:
        try:
            return Blocks(writer.path, self.hparams.block_size, writer.dtype, owner=scratch)
        except ValueError as e:
            more = "raise val_fraction, " if split == "held-out" else ""
            raise ValueError(f"the {split} split is too short: {e}; {more}lower block_size or give more text") from None

    def train_dataloader(self) -> DataLoader:
        # A last partial batch is dropped (every step sees batch_size blocks), except when a rank's share holds
        # less than one batch: dropping it then left no training batch at all, and a run that trained nothing
        # still exited 0. A smaller corpus than one batch still trains, as the caption data modules do, with
        # a warning: a recipe's batch_size is sized for its own corpus, not an error on a smaller one.
        blocks, batch_size = len(self.train_set), self.hparams.batch_size
        world = self.trainer.world_size if self.trainer is not None else 1
        full = math.ceil(blocks / world) >= batch_size  # DDP's sampler gives each rank ceil(blocks / world)
        if not full:
            log.warning("batch_size %d exceeds the %d training blocks of block_size %d%s: each step trains on "
                        "all of them (lower batch_size to take more steps)", batch_size, blocks,
                        self.hparams.block_size, f" shared by {world} processes" if world > 1 else "")
        return DataLoader(self.train_set, batch_size=batch_size, **order(self.train_set, True), drop_last=full,
                          num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers)

    def test_dataloader(self) -> DataLoader:  # no third split: `mmkit test` reports the held-out one
        return self.val_dataloader()
