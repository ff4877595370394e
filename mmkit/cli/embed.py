"""`mmkit embed TEXTS_FILE --model DIR --out vectors.npy|.jsonl`: sentence embeddings with a BERT-family
encoder (an mmkit export or a transformers BERT/RoBERTa directory): mean pooling over the attention
mask then L2 normalisation (sentence-transformers' convention), length-sorted batches, a progress bar.
TEXTS_FILE is .txt (one text per line), .jsonl or .csv (--text-key, default "text"). Bad rows (empty,
not UTF-8) are reported and skipped: in .jsonl output they are absent, in .npy they are NaN rows so
row i is always line i.

Under torchrun (or any launcher setting torch.distributed's environment) the ranks share the work: each
reads every row and plans the same length-sorted batches as one process, embeds every world_size-th batch
and hands its vectors to rank 0, which writes the output a chunk at a time: bit for bit one process's.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from typing import Callable, Iterator, Sequence

import numpy as np

from mmkit.cli.bert_text_files import RowCounts, open_texts_and_encoder, row_chunks, texts_file_parser
from mmkit.cli.options import add_precision_argument
from mmkit.inference.embed import Embedder
from mmkit.inference.quantize import QUANTIZATIONS
from mmkit.cli.ranked import on_ranks
from mmkit.inference.ranks import InputsDiverged, Lockstep, RankFailed, Ranks
from mmkit.inference.text_rows import atomic_path, write_atomically

OUT_SUFFIXES = (".npy", ".jsonl")


def _parser() -> argparse.ArgumentParser:
    p = texts_file_parser("mmkit embed", __doc__,
                          "sentence embeddings (masked mean pooling + L2 norm) with a BERT encoder",
                          "mmkit BERT export or transformers BERT directory",
                          "vectors.npy (N x dim float32) or vectors.jsonl")
    p.add_argument("--quantize", default="none", choices=QUANTIZATIONS,
                   help="int8: int8 weights for every Linear layer (CPU; faster, vectors close to but not equal "
                        "to fp32's: see mmkit bench embed)")
    add_precision_argument(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Returns 0 done (bad rows reported on stderr), 2 a usage or input error (one line on stderr), 1 the
    output could not be written (one line; nothing was)."""
    return on_ranks("mmkit embed", _parser, argv, _main)


def _main(args: argparse.Namespace, ranks: Ranks) -> int:
    from mmkit.cli.progress import progress

    opened = open_texts_and_encoder(args, "mmkit embed", OUT_SUFFIXES,
                                    lambda encoder: Embedder(encoder, args.batch_size, args.quantize, args.precision),
                                    ranks)
    if opened is None:
        return 2
    total, embedder = opened
    counts = RowCounts()
    if not ranks.first:  # its vectors go to the first rank, which writes and says how it went
        ranks.lockstep(_shared(args, ranks, embedder, counts, lambda n=1: None)).follow()
        return ranks.broadcast(None)
    with progress("embedding", total, "text", enabled=not args.quiet and total > 1) as advance:
        def embedded() -> Iterator[tuple[list, list, np.ndarray]]:
            for rows, good in row_chunks(args, "mmkit embed", embedder.encoder.tokenizer, counts, advance):
                yield rows, good, embedder.embed([r.text for r in good], on_batch=advance,
                                                 on_truncated=counts.add_truncated)

        if not ranks.multi:
            code = _write(args, total, embedder.dim, embedded())
        else:
            read: list[tuple[list, list]] = []
            steps = ranks.lockstep(_shared(args, ranks, embedder, counts, advance, read))
            try:
                code = _write(args, total, embedder.dim, _merged(args.texts, steps, read, embedder.dim, advance))
            finally:
                steps.close()  # the other ranks wait for a last round if the output stopped early
            ranks.broadcast(code)
    if code:
        return code
    counts.report("mmkit embed", embedder.encoder.model.max_len,
                  f"embeddings of dim {embedder.dim} written to {args.out}")
    return 0


def _write(args: argparse.Namespace, total: int, dim: int,
           chunks: Iterator[tuple[list, list, np.ndarray]]) -> int:
    """Write the output from `chunks`; the exit code (a failure reported in one line, nothing written)."""
    try:
        if args.out.endswith(".npy"):
            _write_npy(args.out, args.texts, total, dim, chunks)
        else:
            write_atomically(args.out, lambda f: _write_jsonl(f, chunks))
    except (InputChanged, InputsDiverged) as e:  # nothing was written: the temp file is gone
        print(f"mmkit embed: {e}", file=sys.stderr)
        return 2
    except RankFailed as e:  # another rank failed (its traceback is on its stderr)
        print(f"mmkit embed: {e}; nothing written", file=sys.stderr)
        return 1
    except OSError as e:  # writing failed (a full disk, a folder made at --out meanwhile): nothing written
        print(f"mmkit embed: {e}", file=sys.stderr)
        return 1
    return 0


def _shared(args: argparse.Namespace, ranks: Ranks, embedder: Embedder, counts: RowCounts,
            advance: Callable[[int], None], read: list | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """This rank's part of each chunk of rows (every rank reads them all and plans one process's batches,
    then embeds the batches it owns, round-robin across the run): (the chunk's good rows, the indices of
    those embedded here, their vectors). The first rank also keeps each chunk's rows in `read`, for
    `_merged`, and reports the bad rows."""
    b = 0
    for rows, good in row_chunks(args, "mmkit embed", embedder.encoder.tokenizer, counts, advance,
                                 report=ranks.first):
        ids, batches = embedder.plan([r.text for r in good], on_truncated=counts.add_truncated)
        mine = [batch for k, batch in enumerate(batches, b) if ranks.owns(k)]
        b += len(batches)
        index = np.array([i for batch in mine for i in batch], dtype=np.int64)
        if read is not None:
            read.append((rows, good))
        yield len(good), index, embedder.embed_batches(ids, mine)[index]


def _merged(source: str, steps: Lockstep, read: list, dim: int,
            advance: Callable[[int], None]) -> Iterator[tuple[list, list, np.ndarray]]:
    """(the first rank) Each chunk's rows with every rank's vectors in place: what one process embeds."""
    for parts in steps:
        rows, good = read.pop(0)  # the chunk this round is about (the only one read)
        vectors = np.empty((len(good), dim), dtype=np.float32)
        for n, index, part in parts:
            if n != len(good):
                raise InputChanged(f"{source} changed while it was read; nothing written")
            vectors[index] = part
        advance(len(good))
        yield rows, good, vectors


class InputChanged(ValueError):
    """The texts file has another number of rows than when it was counted."""


def _write_npy(out: str, source: str, total: int, dim: int, chunks: Iterator[tuple[list, list, np.ndarray]]) -> None:
    """An (total, dim) float32 .npy filled a chunk at a time through a memory map; bad rows are NaN.
    Raises `InputChanged` (and writes nothing) when `source` no longer has `total` rows."""
    with atomic_path(out) as tmp:
        if total == 0:  # a zero-length map cannot be made
            with open(tmp, "wb") as f:  # a file, not a name: np.save would add ".npy" to the name
                np.save(f, np.zeros((0, dim), dtype=np.float32))
            return
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, dim))
        start = 0
        for rows, good, vectors in chunks:
            if start + len(rows) > total:
                raise InputChanged(f"{source} changed while it was read (more than its {total} rows); nothing written")
            block = np.full((len(rows), dim), np.nan, dtype=np.float32)
            block[[i for i, r in enumerate(rows) if r.error is None]] = vectors
            array[start:start + len(rows)] = block
            start += len(rows)
        if start != total:
            raise InputChanged(f"{source} changed while it was read ({start} of its {total} rows); nothing written")
        array.flush()
        del array


def _write_jsonl(f: io.BufferedWriter, chunks: Iterator[tuple[list, list, np.ndarray]]) -> None:
    for _, good, vectors in chunks:
        for r, v in zip(good, vectors):
            f.write((json.dumps({"line": r.line, "text": r.text, "embedding": [round(float(x), 7) for x in v]},
                                ensure_ascii=False) + "\n").encode("utf-8"))
