"""What the BERT tools that read a texts file share (`mmkit embed`, `mmkit classify-text`): the
TEXTS_FILE/--model/--out/--text-key/--batch-size/--device/--quiet options, and reading the encoder
and the rows, a chunk at a time, with bad rows (empty, not UTF-8, nothing but unknown tokens) reported
on stderr. Also what every batch text tool that the ranks of a launcher share (those two, `mmkit translate`)
does around its run: `on_ranks` and `written`.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from mmkit.cli.options import Parser, at_least
from mmkit.errors import print_error
from mmkit.inference.ranks import InputsDiverged, RankFailed, Ranks

T = TypeVar("T")


def written(prog: str, write: Callable[[], Any], atomic: bool = True) -> int:
    """The exit code of `write()`, which makes a tool's output from the ranks' results: 0, or its failure
    in one line on stderr: 2 a bad input met while reading (here or on another rank: `RankFailed` carries the
    kind) or the input changed while the ranks read it, 1 another rank crashed (its traceback is on its own
    stderr) or the output could not be written. `atomic`: the output is written whole or not at all (not so
    on stdout), as the line then says."""
    nothing = "; nothing written" if atomic else ""
    try:
        write()
    except InputsDiverged as e:
        print_error(prog, e)
        return 2
    except ValueError as e:  # a bad input met mid-run (a file changed under the reader): a user's problem
        print_error(prog, f"{e}{nothing}")
        return 2
    except RankFailed as e:
        print_error(prog, f"{e}{nothing}")
        return 1
    except OSError as e:  # writing failed (a full disk, a folder made at the output meanwhile)
        print_error(prog, e)
        return 1
    return 0


def texts_file_parser(prog: str, doc: str, description: str, model_help: str, out_help: str,
                      input_name: str = "TEXTS_FILE", input_help: str = ".txt (one text per line), .jsonl or .csv file",
                      model_name: str = "DIR") -> argparse.ArgumentParser:
    """The options every texts-file BERT tool takes; the caller adds its own after these."""
    p = Parser(prog=prog, epilog=doc, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", metavar=input_name, help=input_help)
    p.add_argument("--model", required=True, metavar=model_name, help=model_help)
    p.add_argument("--out", required=True, metavar="FILE", help=out_help)
    p.add_argument("--text-key", default="text", help="field/column of .jsonl/.csv rows holding the text")
    p.add_argument("--batch-size", type=at_least(1), default=64, help="texts per forward pass (64)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:N, mps; under torchrun, cuda is "
                   "each rank's own GPU: cuda:LOCAL_RANK)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def open_texts_and_encoder(args: argparse.Namespace, prog: str, out_suffixes: Sequence[str],
                           build: Callable[[Any], T], ranks: Ranks = Ranks()) -> tuple[int, T] | None:
    """(the texts file's row count, `build(encoder)`); None after a usage or input error, reported as
    one line on stderr (the tool then returns 2). Before the model loads it meets an output that is the
    texts file itself (`check_not_input`), a device this machine lacks, an output that cannot be written
    (`check_output`) and, counting the file's rows a line at a time, a bad file (missing, not a regular
    file, wrong suffix, no --text-key column or field). Ranks of one launcher (`ranks`) all stop if one
    meets a problem, printed once, by the first; each loads the model on its own device (`Ranks.device`)."""
    from mmkit.inference.encoder import load_encoder
    from mmkit.inference.text_rows import count_text_rows

    from mmkit.cli.ranked import set_up_on_ranks

    def set_up() -> tuple[int, T]:
        device = checked_output(args, out_suffixes, ranks)
        total = count_text_rows(args.texts, args.text_key)
        return total, build(load_encoder(args.model, device))

    return set_up_on_ranks(prog, ranks, set_up)


def checked_output(args: argparse.Namespace, out_suffixes: Sequence[str], ranks: Ranks) -> str:
    """This rank's device (`Ranks.device`) once `--out` and `--device` are checked, before a model loads: an
    output of another suffix, the input itself (`check_not_input`) or one that cannot be written
    (`check_output`), a device this machine lacks, are a ValueError or OSError of one line."""
    from mmkit.inference.precision import check_device
    from mmkit.inference.text_rows import check_not_input, check_output

    if Path(args.out).suffix not in out_suffixes:
        raise ValueError(f"--out must end in {' or '.join(out_suffixes)}: {args.out}")
    check_not_input(args.out, args.texts)
    device = ranks.device(args.device)
    check_device(device)
    check_output(args.out)
    return device


@dataclass
class RowCounts:
    """What a texts-file tool did with the file's rows, for its closing lines (`report`)."""

    good: int = 0
    bad: int = 0
    truncated: int = 0  # good rows cut to the model's context

    def add_truncated(self, n: int) -> None:
        self.truncated += n

    def exit_code(self) -> int:
        """1 when every row was bad (the output holds nothing usable: a binary or mis-chosen file), as
        `mmkit transcribe` when no file was transcribed; else 0 (an empty file is nothing to do)."""
        return 1 if self.bad and not self.good else 0

    def report(self, prog: str, limit: int, written: str) -> None:
        """One line for all the truncated texts, however many chunks they came in, then the summary:
        "{prog}: {good} {written}" and the bad rows skipped."""
        if self.truncated:
            print(f"{prog}: {self.truncated} text(s) longer than the model's {limit} tokens were truncated (their "
                  "beginning was used)", file=sys.stderr)
        print(f"{prog}: {self.good} {written}" + (f" ({self.bad} bad rows skipped)" if self.bad else ""),
              file=sys.stderr)


def row_chunks(args: argparse.Namespace, prog: str, tokenizer: Any, counts: RowCounts,
               advance: Callable[[int], None], report: bool = True) -> Iterator[tuple[list, list, list]]:
    """The texts file's rows, `ROWS_PER_CHUNK` at a time, each chunk with its good rows and their token ids
    (the tool's `plan` reuses them: each text is tokenized once; None without a `tokenizer`, which a CLIP's
    text tower reads with its own); each bad row (empty, not UTF-8, with a `tokenizer` nothing but unknown
    tokens) is reported on stderr as it is met, counted in
    `counts` and passed to `advance` (the good ones advance as the tool finishes them). Memory holds one
    chunk, whatever the file's size. `report` False: bad rows are counted, not printed (ranks other than the
    first: every rank reads every row)."""
    from mmkit.inference.encoder import mark_unknown_rows
    from mmkit.inference.text_rows import chunks, iter_text_rows

    for rows in chunks(iter_text_rows(args.texts, args.text_key), chars=lambda r: len(r.text or "")):
        ids = None
        if tokenizer is not None:
            rows, ids = mark_unknown_rows(rows, tokenizer)
        for r in rows:
            if r.error and report:
                print(f"{prog}: {args.texts} line {r.line}: {r.error}; skipped", file=sys.stderr)
        good = [r for r in rows if r.error is None]
        counts.good += len(good)
        counts.bad += len(rows) - len(good)
        advance(len(rows) - len(good))
        yield rows, good, ids
