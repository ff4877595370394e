"""`mmkit embed TEXTS_FILE --model DIR --out vectors.npy|.jsonl`: sentence embeddings with a BERT-family
encoder (an mmkit export or a transformers BERT/RoBERTa directory): mean pooling over the attention
mask then L2 normalisation (sentence-transformers' convention), length-sorted batches, a progress bar.
TEXTS_FILE is .txt (one text per line), .jsonl or .csv (--text-key, default "text"). Bad rows (empty,
not UTF-8) are reported and skipped: in .jsonl output they are absent, in .npy they are NaN rows so
row i is always line i.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from typing import Iterator, Sequence

import numpy as np

from mmkit.cli.bert_text_files import RowCounts, open_texts_and_encoder, row_chunks, texts_file_parser
from mmkit.cli.options import add_precision_argument
from mmkit.inference.embed import Embedder
from mmkit.inference.quantize import QUANTIZATIONS
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
    args = _parser().parse_args(argv)
    from mmkit.cli.progress import progress

    opened = open_texts_and_encoder(args, "mmkit embed", OUT_SUFFIXES,
                                    lambda encoder: Embedder(encoder, args.batch_size, args.quantize, args.precision))
    if opened is None:
        return 2
    total, embedder = opened
    counts = RowCounts()
    with progress("embedding", total, "text", enabled=not args.quiet and total > 1) as advance:
        def embedded() -> Iterator[tuple[list, list, np.ndarray]]:
            for rows, good in row_chunks(args, "mmkit embed", embedder.encoder.tokenizer, counts, advance):
                yield rows, good, embedder.embed([r.text for r in good], on_batch=advance,
                                                 on_truncated=counts.add_truncated)

        try:
            if args.out.endswith(".npy"):
                _write_npy(args.out, args.texts, total, embedder.dim, embedded())
            else:
                write_atomically(args.out, lambda f: _write_jsonl(f, embedded()))
        except InputChanged as e:  # nothing was written: the temp file is gone
            print(f"mmkit embed: {e}", file=sys.stderr)
            return 2
        except OSError as e:  # writing failed (a full disk, a folder made at --out meanwhile): nothing written
            print(f"mmkit embed: {e}", file=sys.stderr)
            return 1
    counts.report("mmkit embed", embedder.encoder.model.max_len,
                  f"embeddings of dim {embedder.dim} written to {args.out}")
    return 0


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
