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
from typing import Sequence

from mmkit.cli.bert_text_files import read_texts_and_encoder, texts_file_parser
from mmkit.cli.options import add_precision_argument
from mmkit.inference.quantize import QUANTIZATIONS

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
    """Returns 0 done (bad rows reported on stderr), 2 a usage or input error (one line on stderr)."""
    args = _parser().parse_args(argv)
    from mmkit.cli.progress import progress
    from mmkit.inference.embed import Embedder
    from mmkit.inference.text_rows import write_atomically

    read = read_texts_and_encoder(args, "mmkit embed", OUT_SUFFIXES,
                                  lambda encoder: Embedder(encoder, args.batch_size, args.quantize, args.precision))
    if read is None:
        return 2
    rows, good, embedder = read
    with progress("embedding", len(good), "text", enabled=not args.quiet and len(good) > 1) as advance:
        vectors = embedder.embed([r.text for r in good], on_batch=advance)
    write_atomically(args.out, lambda f: _write(f, args.out, rows, good, vectors))
    print(f"mmkit embed: {len(good)} embeddings of dim {embedder.dim} written to {args.out}"
          + (f" ({len(rows) - len(good)} bad rows skipped)" if len(rows) > len(good) else ""), file=sys.stderr)
    return 0


def _write(f: io.BufferedWriter, out: str, rows: list, good: list, vectors: "np.ndarray") -> None:  # noqa: F821
    import numpy as np

    if out.endswith(".npy"):
        full = np.full((len(rows), vectors.shape[1]), np.nan, dtype=np.float32)
        full[[i for i, r in enumerate(rows) if r.error is None]] = vectors
        np.save(f, full)
        return
    for r, v in zip(good, vectors):
        f.write((json.dumps({"line": r.line, "text": r.text, "embedding": [round(float(x), 7) for x in v]},
                            ensure_ascii=False) + "\n").encode("utf-8"))
