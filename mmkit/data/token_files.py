"""Token ids on disk, as nanoGPT's `train.bin`: a flat file of ids (uint16 while the vocabulary fits,
else int32) written a chunk at a time and read through `np.memmap`, so a corpus of any size costs
the page cache, not the process's memory. `Blocks` serves the GPT-2 training examples from it.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import weakref
from pathlib import Path
from types import TracebackType

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmkit.data.cache import cache_root

log = logging.getLogger(__name__)
DEFAULT_SCRATCH = "~/.cache/mmkit/text_blocks"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 (2 bytes a token) when every id fits, as in nanoGPT; else int32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.int32)


class TokenWriter:
    """Appends id arrays to a flat file of `dtype`, counting each id on the way (for the unigram
    baseline). Use as a context manager."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path, self.dtype = path, np.dtype(dtype)
        self.size = 0
        self.counts = np.zeros(0, np.int64)  # occurrences of each id
        self._file = open(path, "wb")

    def write(self, ids: np.ndarray) -> None:
        if len(ids) and (ids.min() < 0 or ids.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"token ids {ids.min()}..{ids.max()} do not fit in {self.dtype}")
        ids.astype(self.dtype).tofile(self._file)
        self.size += len(ids)
        c = np.bincount(ids, minlength=len(self.counts))
        self.counts = np.pad(self.counts, (0, len(c) - len(self.counts))) + c

    def __enter__(self) -> "TokenWriter":
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._file.close()


class Blocks(Dataset):
    """Training examples from a token file: block i is tokens[i * block_size : (i + 1) * block_size + 1],
    as int64 `tokens` (its first block_size) and next-token `targets` (its last block_size); blocks
    overlap by one token (the last target of a block is the first input of the next) and the tail
    shorter than a block is dropped. The memmap opens on first use in each process, so DataLoader
    workers (forked or spawned) each open their own.

    Args:
        path: a flat file of `dtype` token ids.
        block_size: tokens per example.
        owner: kept alive with the dataset (the scratch folder holding `path`); not pickled.

    Raises:
        ValueError: the file holds fewer than `block_size + 1` tokens.
    """

    def __init__(self, path: str | Path, block_size: int, dtype: np.dtype, owner: object = None) -> None:
        self.path, self.block_size, self.dtype, self.owner = Path(path), block_size, np.dtype(dtype), owner
        self.num_tokens = self.path.stat().st_size // self.dtype.itemsize
        self._len = (self.num_tokens - 1) // block_size
        if self._len < 1:
            raise ValueError(f"{self.num_tokens} tokens do not fill one block of {block_size + 1}")
        self._tokens: np.memmap | None = None

    @property
    def tokens(self) -> np.memmap:
        """All the ids of the file, read-only, memory-mapped."""
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))
        return self._tokens

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not -self._len <= i < self._len:
            raise IndexError(f"block {i} of {self._len}")
        start = (i % self._len) * self.block_size
        block = torch.from_numpy(self.tokens[start: start + self.block_size + 1].astype(np.int64))
        return {"tokens": block[:-1], "targets": block[1:]}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None, "owner": None}  # a worker maps the file itself


class ScratchFolder:
    """A private folder for token files under `$MMKIT_CACHE/text_blocks` (or `~/.cache/mmkit/text_blocks`;
    not the temp folder, which is often memory, tmpfs), removed when this object is garbage-collected
    or the process exits; folders that a killed process left behind on this host are removed on the
    next creation. Not persistent: a cache keyed on the files would have to read them all to know
    them unchanged, and the tokenizer pass is about as fast. Where that folder cannot be made (a
    read-only home, a cluster without one), the temp folder serves, with one warning."""

    def __init__(self, root: str | Path | None = None) -> None:
        base = cache_root(str(root or DEFAULT_SCRATCH), DEFAULT_SCRATCH, "text_blocks")
        host = socket.gethostname()
        try:
            self.path = _private_folder(base, host)
        except OSError as e:
            fallback = Path(tempfile.gettempdir()) / "mmkit-text_blocks"
            log.warning("cannot make the token files' folder in %s (%s); using %s", base, e.strerror or e, fallback)
            self.path = _private_folder(fallback, host)
        weakref.finalize(self, _remove, self.path, os.getpid())


def _private_folder(base: Path, host: str) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    _remove_orphans(base, host)
    return Path(tempfile.mkdtemp(prefix=f"{host}-{os.getpid()}-", dir=base))


def _remove(path: Path, pid: int) -> None:
    if os.getpid() == pid:  # not in a forked DataLoader worker that inherited the object
        shutil.rmtree(path, ignore_errors=True)


def _remove_orphans(base: Path, host: str) -> None:
    for folder in base.glob(f"{host}-*-*"):
        try:
            os.kill(int(folder.name[len(host) + 1:].split("-")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, PermissionError):  # not ours, or a live process of another user
            pass
