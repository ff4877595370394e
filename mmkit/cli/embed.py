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
from pathlib import Path
from typing import Sequence

OUT_SUFFIXES = (".npy", ".jsonl")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmkit embed", epilog=__doc__,
                                description="sentence embeddings (masked mean pooling + L2 norm) with a BERT encoder",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", metavar="TEXTS_FILE", help=".txt (one text per line), .jsonl or .csv file")
    p.add_argument("--model", required=True, metavar="DIR", help="mmkit BERT export or transformers BERT directory")
    p.add_argument("--out", required=True, metavar="FILE", help="vectors.npy (N x dim float32) or vectors.jsonl")
    p.add_argument("--text-key", default="text", help="field/column of .jsonl/.csv rows holding the text")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Returns 0 done (bad rows reported on stderr), 2 a usage or input error (one line on stderr)."""
    args = _parser().parse_args(argv)
    from mmkit.cli.progress import progress
    from mmkit.inference.embed import Embedder
    from mmkit.inference.encoder import load_encoder, mark_unknown_rows
    from mmkit.inference.text_rows import read_text_rows, write_atomically

    try:
        if Path(args.out).suffix not in OUT_SUFFIXES:
            raise ValueError(f"--out must end in {' or '.join(OUT_SUFFIXES)}: {args.out}")
        rows = read_text_rows(args.texts, args.text_key)
        embedder = Embedder(load_encoder(args.model, args.device), args.batch_size)
    except (ValueError, OSError) as e:  # WeightsError is a ValueError
        print(f"mmkit embed: {e}", file=sys.stderr)
        return 2
    rows = mark_unknown_rows(rows, embedder.encoder.tokenizer)
    good = [r for r in rows if r.error is None]
    for r in rows:
        if r.error:
            print(f"mmkit embed: {args.texts} line {r.line}: {r.error}; skipped", file=sys.stderr)
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
