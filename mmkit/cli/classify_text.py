"""`mmkit classify-text TEXTS_FILE --model DIR --out predictions.csv|.jsonl`: label texts with a
fine-tuned BERT classifier (an mmkit TextClassifier export or a transformers
BertForSequenceClassification directory), like `mmkit predict` for images: one row per input with
its line, text, label and score (and each class's score with --all-scores). TEXTS_FILE is
.txt, .jsonl or .csv; bad rows (empty, not UTF-8) are reported on stderr and left out. Scores are those of
transformers' text-classification pipeline: softmax probabilities; for a multi-label model
(problem_type multi_label_classification) or a one-logit one, each class's own sigmoid probability (they
need not sum to 1); for a regression model, its raw output (a line on stderr says so for those two).

Under torchrun (or any launcher setting torch.distributed's environment) the ranks share the work as in
`mmkit embed`: each reads every row and plans one process's length-sorted batches, runs every world_size-th
batch and hands its predictions to rank 0, which writes the output: byte for byte one process's.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from typing import Iterator, Sequence

from mmkit.cli.bert_text_files import RowCounts, open_texts_and_encoder, row_chunks, texts_file_parser, written
from mmkit.cli.options import add_precision_argument
from mmkit.cli.ranked import on_ranks
from mmkit.inference.quantize import QUANTIZATIONS
from mmkit.inference.ranks import BatchShares, Ranks, Share, merged

PROG = "mmkit classify-text"
OUT_SUFFIXES = (".csv", ".jsonl")


def _parser() -> argparse.ArgumentParser:
    p = texts_file_parser(PROG, __doc__, "label texts with a fine-tuned BERT classifier (CSV/JSONL in and out)",
                          "fine-tuned classifier directory", "predictions.csv or predictions.jsonl")
    p.add_argument("--all-scores", action="store_true",
                   help="also write every class's score (p_NAME: a probability, or a regression's value)")
    p.add_argument("--quantize", default="none", choices=QUANTIZATIONS,
                   help="int8: int8 weights for the encoder's Linear layers, the classification head kept fp32 "
                        "(CPU; faster, probabilities close to but not equal to fp32's)")
    add_precision_argument(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Returns 0 done (bad rows reported on stderr), 2 a usage or input error (one line on stderr), 1 the
    output could not be written (one line; nothing was), or every row was bad (the output is written, all rows
    reported)."""
    return on_ranks(PROG, _parser, argv, _main)


def _main(args: argparse.Namespace, ranks: Ranks) -> int:
    from mmkit.cli.progress import progress
    from mmkit.inference.text_classify import TextClassifierPredictor
    from mmkit.inference.text_rows import write_atomically

    opened = open_texts_and_encoder(args, PROG, OUT_SUFFIXES,
                                    lambda encoder: TextClassifierPredictor(encoder, args.batch_size, args.quantize,
                                                                            args.precision), ranks)
    if opened is None:
        return 2
    total, predictor = opened
    fields = ["line", "text", "label", "score"] + ([f"p_{k}" for k in predictor.names] if args.all_scores else [])
    counts = RowCounts()
    with progress("classifying", total, "text", enabled=ranks.first and not args.quiet and total > 1) as advance:
        shares = BatchShares(ranks)

        def parts() -> Iterator[tuple[list, Share]]:
            """Per chunk of rows: (its good rows, this rank's predictions of them); every rank reads every row,
            plans one process's batches and runs its share of them (`BatchShares`)."""
            for _, good, ids in row_chunks(args, PROG, predictor.encoder.tokenizer, counts, advance,
                                           report=ranks.first):
                ids, batches = predictor.plan([r.text for r in good], counts.add_truncated, ids)
                mine = shares.mine(batches)
                yield good, Share.of(len(good), mine, predictor.predict_batches(ids, mine, on_batch=advance))

        def records(rounds: Iterator[tuple[list, list[Share]]]) -> Iterator[dict]:
            for good, got in rounds:
                for r, p in zip(good, merged(got, [None] * len(good), advance)):
                    record = {"line": r.line, "text": r.text, "label": p.label, "score": round(p.score, 6)}
                    if args.all_scores:
                        record.update({f"p_{k}": round(v, 6) for k, v in p.probs.items()})
                    yield record

        code = ranks.to_first(parts(), lambda rounds: written(PROG, lambda: write_atomically(
            args.out, lambda f: _write(f, args.out, records(rounds), fields))))
    if code or not ranks.first:
        return code
    if _NOTES[predictor.scoring]:
        print(f"{PROG}: {_NOTES[predictor.scoring]}", file=sys.stderr)
    counts.report(PROG, predictor.encoder.model.max_len, f"predictions written to {args.out}")
    return counts.exit_code()


# What a line before the summary says of scores that are not softmax probabilities, by
# `TextClassifierPredictor.scoring`: one class's 0.86 beside another's 0.64 is not a broken softmax.
_NOTES = {"softmax": "",
          "sigmoid": "scores are each class's own sigmoid probability (a multi-label or one-logit model): "
                     "they need not sum to 1",
          "none": "scores are the regression model's predicted values, not probabilities"}


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
