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
from typing import Iterator, Sequence

from mmkit.cli.bert_text_files import RowCounts, open_texts_and_encoder, row_chunks, texts_file_parser

OUT_SUFFIXES = (".csv", ".jsonl")


def _parser() -> argparse.ArgumentParser:
    p = texts_file_parser("mmkit classify-text", __doc__,
                          "label texts with a fine-tuned BERT classifier (CSV/JSONL in and out)",
                          "fine-tuned classifier directory", "predictions.csv or predictions.jsonl")
    p.add_argument("--all-scores", action="store_true", help="also write every class's probability")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Returns 0 done (bad rows reported on stderr), 2 a usage or input error (one line on stderr), 1 the
    output could not be written (one line; nothing was)."""
    args = _parser().parse_args(argv)
    from mmkit.cli.progress import progress
    from mmkit.inference.text_classify import TextClassifierPredictor
    from mmkit.inference.text_rows import write_atomically

    opened = open_texts_and_encoder(args, "mmkit classify-text", OUT_SUFFIXES,
                                    lambda encoder: TextClassifierPredictor(encoder, args.batch_size))
    if opened is None:
        return 2
    total, predictor = opened
    fields = ["line", "text", "label", "score"] + ([f"p_{k}" for k in predictor.names] if args.all_scores else [])
    counts = RowCounts()
    with progress("classifying", total, "text", enabled=not args.quiet and total > 1) as advance:
        def records() -> Iterator[dict]:
            for _, good in row_chunks(args, "mmkit classify-text", predictor.encoder.tokenizer, counts, advance):
                predictions = predictor.predict([r.text for r in good], on_batch=advance,
                                                on_truncated=counts.add_truncated)
                for r, p in zip(good, predictions):
                    record = {"line": r.line, "text": r.text, "label": p.label, "score": round(p.score, 6)}
                    if args.all_scores:
                        record.update({f"p_{k}": round(v, 6) for k, v in p.probs.items()})
                    yield record

        try:
            write_atomically(args.out, lambda f: _write(f, args.out, records(), fields))
        except OSError as e:  # writing failed (a full disk, a folder made at --out meanwhile): nothing written
            print(f"mmkit classify-text: {e}", file=sys.stderr)
            return 1
    counts.report("mmkit classify-text", predictor.encoder.model.max_len, f"predictions written to {args.out}")
    return 0


def _write(f: io.BufferedWriter, out: str, records: Iterator[dict], fields: list[str]) -> None:
    """The records as JSON lines or CSV (spreadsheet-safe cells), streamed into `f`."""
    from mmkit.inference.writers import csv_safe

    text = io.TextIOWrapper(f, encoding="utf-8", newline="")
    if out.endswith(".jsonl"):
        text.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: csv_safe(v) for k, v in r.items()} for r in records)
    text.flush()
    text.detach()  # `f` stays open: its owner closes it
