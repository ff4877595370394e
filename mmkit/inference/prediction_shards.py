"""`mmkit predict` on several processes: each streams its share of the rows, keyed by input index, to a
shard beside the output; process 0 merges the shards in index order with the inputs that got no
prediction (a k-way merge of index-sorted shards: memory is one row per shard, not one per input) and
writes the one output through `PredictionFile`. The process coordination is the caller's (Lightning);
this module only reads and writes files.
"""
from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Iterable, Iterator, Sequence

from mmkit.inference.classifier import Prediction

SKIPPED_WHILE_LOADING = "unreadable image (skipped while loading)"

Row = tuple[int, list[str], list[float]]  # (index in the readable inputs, top-k labels, their probabilities)


def shard_path(out: str | os.PathLike, token: str, rank: int) -> Path:
    """Process `rank`'s shard for output `out`: hidden, beside it (so on the file system every node
    shares with process 0), named after the run's `token` so two runs never mix rows."""
    out = Path(out).expanduser()
    return out.with_name(f".{out.name}.{token}.rank{rank}.shard")


def inputs_digest(inputs: Iterable[tuple[str, str | None]]) -> str:
    """A digest of the input list (paths, and why each was skipped): every process scans the inputs
    itself, and the shards' indices mean the same files only when the lists agree."""
    h = hashlib.sha256()
    for path, reason in inputs:
        h.update(json.dumps([path, reason]).encode() + b"\n")
    return h.hexdigest()


class ShardWriter:
    """One process's rows as JSON lines `[index, labels, probs]`, in increasing index order (the order of
    Lightning's unrepeated distributed sampler, strided over the inputs). `path` None: an unnamed file in
    `folder` (process 0's own share, which no other process reads), gone with the process however it ends.
    """

    def __init__(self, path: Path | None, folder: str | os.PathLike) -> None:
        self.path = path
        self._last = -1
        if path is None:
            self._file: IO[str] = tempfile.TemporaryFile("w+", encoding="ascii", newline="", dir=folder)
        else:
            self._file = open(path, "x", encoding="ascii", newline="")

    def write(self, rows: Sequence[Row]) -> None:
        lines = []
        for index, labels, probs in sorted(rows, key=lambda row: row[0]):
            if index <= self._last:  # the merge relies on it
                raise RuntimeError(f"predict: input {index} came after input {self._last} in one process")
            self._last = index
            lines.append(json.dumps([index, labels, probs], allow_nan=False) + "\n")
        self._file.write("".join(lines))

    def finish(self) -> None:
        """Flush: a named shard is closed for process 0 to read, an unnamed one rewound for `rows`."""
        self._file.flush()
        if self.path is None:
            self._file.seek(0)
        else:
            os.fsync(self._file.fileno())  # process 0 may be on another node
            self._file.close()

    def rows(self) -> Iterator[Row]:
        return _read(self._file)

    def discard(self) -> None:
        with contextlib.suppress(OSError):  # called on the way out of another error: never hide it
            self._file.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)


def read_shard(path: Path) -> Iterator[Row]:
    """The rows another process wrote to `path`, streamed (the file is closed when they run out)."""
    with open(path, encoding="ascii", newline="") as f:
        yield from _read(f)


def _read(f: IO[str]) -> Iterator[Row]:
    for line in f:
        index, labels, probs = json.loads(line)
        yield index, labels, probs


class InputRows:
    """The output's rows in input order, made from predictions keyed by index among the readable inputs
    (those with no reason) and given in increasing index order: every input that got none gets its row on
    the way, with its reason, or `SKIPPED_WHILE_LOADING` for a readable one (it failed to decode). One
    process writing as its batches end and process 0 merging shards both go through it."""

    def __init__(self, inputs: Sequence[tuple[str, str | None]]) -> None:
        self.inputs = inputs
        self._pos = 0  # next position in `inputs`
        self._kept = 0  # index of the next readable input

    def predicted(self, index: int, labels: list[str], probs: list[float]) -> list[Prediction]:
        """The rows of the inputs before readable input `index` that got no prediction, then its own."""
        if index < self._kept:
            raise RuntimeError(f"predict: input {index} was predicted twice")
        rows = self._upto(index)
        if self._pos == len(self.inputs):
            raise RuntimeError(f"predict: input {index} was predicted, of {self._kept} readable inputs")
        rows.append(Prediction(self.inputs[self._pos][0], labels, probs))
        self._pos, self._kept = self._pos + 1, self._kept + 1
        return rows

    def rest(self) -> list[Prediction]:
        """The rows of the inputs after the last prediction (none of them got one)."""
        return self._upto(None)

    def _upto(self, index: int | None) -> list[Prediction]:
        rows = []
        while self._pos < len(self.inputs):
            path, reason = self.inputs[self._pos]
            if reason is None and self._kept == index:
                break
            self._pos += 1
            if reason is None:
                self._kept += 1
                reason = SKIPPED_WHILE_LOADING
            rows.append(Prediction(path, error=reason))
        return rows


def merged_predictions(inputs: Sequence[tuple[str, str | None]], shards: Iterable[Iterator[Row]]
                       ) -> Iterator[Prediction]:
    """One row per input, in input order (`InputRows`), from the shards' predictions merged by index."""
    rows = InputRows(inputs)
    for index, labels, probs in heapq.merge(*shards, key=lambda row: row[0]):
        yield from rows.predicted(index, labels, probs)
    yield from rows.rest()
