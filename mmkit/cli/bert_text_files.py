"""What the BERT tools that read a texts file share (`mmkit embed`, `mmkit classify-text`): the
TEXTS_FILE/--model/--out/--text-key/--batch-size/--device/--quiet options, and reading the rows
and the encoder with bad rows (empty, not UTF-8, nothing but unknown tokens) reported on stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")


def texts_file_parser(prog: str, doc: str, description: str, model_help: str,
                      out_help: str) -> argparse.ArgumentParser:
    """The options every texts-file BERT tool takes; the caller adds its own after these."""
    p = argparse.ArgumentParser(prog=prog, epilog=doc, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", metavar="TEXTS_FILE", help=".txt (one text per line), .jsonl or .csv file")
    p.add_argument("--model", required=True, metavar="DIR", help=model_help)
    p.add_argument("--out", required=True, metavar="FILE", help=out_help)
    p.add_argument("--text-key", default="text", help="field/column of .jsonl/.csv rows holding the text")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def read_texts_and_encoder(args: argparse.Namespace, prog: str, out_suffixes: Sequence[str],
                           build: Callable[[Any], T]) -> tuple[list, list, T] | None:
    """(all rows, good rows, `build(encoder)`), with each bad row reported on stderr; None after a
    usage or input error, reported as one line on stderr (the tool then returns 2)."""
    from mmkit.inference.encoder import load_encoder, mark_unknown_rows
    from mmkit.inference.text_rows import read_text_rows

    try:
        if Path(args.out).suffix not in out_suffixes:
            raise ValueError(f"--out must end in {' or '.join(out_suffixes)}: {args.out}")
        rows = read_text_rows(args.texts, args.text_key)
        tool = build(load_encoder(args.model, args.device))
    except (ValueError, OSError) as e:  # WeightsError is a ValueError
        print(f"{prog}: {e}", file=sys.stderr)
        return None
    rows = mark_unknown_rows(rows, tool.encoder.tokenizer)
    for r in rows:
        if r.error:
            print(f"{prog}: {args.texts} line {r.line}: {r.error}; skipped", file=sys.stderr)
    return rows, [r for r in rows if r.error is None], tool
