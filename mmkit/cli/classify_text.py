"""`mmkit classify-text TEXTS_FILE --model DIR --out predictions.csv|.jsonl`: label texts with a
fine-tuned BERT classifier (an mmkit TextClassifier export or a transformers
BertForSequenceClassification directory), like `mmkit predict` for images: one row per input with
its line, text, label and score (and each class's probability with --all-scores). TEXTS_FILE is
.txt, .jsonl or .csv; bad rows (empty, not UTF-8) are reported on stderr and left out.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Sequence

OUT_SUFFIXES = (".csv", ".jsonl")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmkit classify-text", epilog=__doc__,
                                description="label texts with a fine-tuned BERT classifier (CSV/JSONL in and out)",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", metavar="TEXTS_FILE", help=".txt (one text per line), .jsonl or .csv file")
    p.add_argument("--model", required=True, metavar="DIR", help="fine-tuned classifier directory")
    p.add_argument("--out", required=True, metavar="FILE", help="predictions.csv or predictions.jsonl")
    p.add_argument("--text-key", default="text", help="field/column of .jsonl/.csv rows holding the text")
    p.add_argument("--all-scores", action="store_true", help="also write every class's probability")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Returns 0 done (bad rows reported on stderr), 2 a usage or input error (one line on stderr)."""
    args = _parser().parse_args(argv)
    from mmkit.cli.progress import progress
    from mmkit.inference.encoder import load_encoder, mark_unknown_rows
    from mmkit.inference.text_classify import TextClassifierPredictor
    from mmkit.inference.text_rows import read_text_rows, write_atomically

    try:
        if Path(args.out).suffix not in OUT_SUFFIXES:
            raise ValueError(f"--out must end in {' or '.join(OUT_SUFFIXES)}: {args.out}")
        rows = read_text_rows(args.texts, args.text_key)
        predictor = TextClassifierPredictor(load_encoder(args.model, args.device), args.batch_size)
    except (ValueError, OSError) as e:
        print(f"mmkit classify-text: {e}", file=sys.stderr)
        return 2
    rows = mark_unknown_rows(rows, predictor.encoder.tokenizer)
    for r in rows:
        if r.error:
            print(f"mmkit classify-text: {args.texts} line {r.line}: {r.error}; skipped", file=sys.stderr)
    good = [r for r in rows if r.error is None]
    with progress("classifying", len(good), "text", enabled=not args.quiet and len(good) > 1) as advance:
        predictions = predictor.predict([r.text for r in good], on_batch=advance)
    records = []
    for r, p in zip(good, predictions):
        record = {"line": r.line, "text": r.text, "label": p.label, "score": round(p.score, 6)}
        if args.all_scores:
            record.update({f"p_{k}": round(v, 6) for k, v in p.probs.items()})
        records.append(record)
    write_atomically(args.out, lambda f: _write(f, args.out, records, ["line", "text", "label", "score"]
                                                + ([f"p_{k}" for k in predictor.names] if args.all_scores else [])))
    print(f"mmkit classify-text: {len(records)} predictions written to {args.out}"
          + (f" ({len(rows) - len(good)} bad rows skipped)" if len(rows) > len(good) else ""), file=sys.stderr)
    return 0


def _write(f: io.BufferedWriter, out: str, records: list[dict], fields: list[str]) -> None:
    from mmkit.inference.writers import csv_safe

    text = io.StringIO(newline="")
    if out.endswith(".jsonl"):
        text.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: csv_safe(v) for k, v in r.items()} for r in records)
    f.write(text.getvalue().encode("utf-8"))
