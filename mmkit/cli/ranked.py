"""A tool's `main` on the ranks of a launcher (torchrun, SLURM; one process without one): the ranks read
from the environment, the tool run within their group, argparse's usage and errors printed once, and an
interruption (Ctrl-C, or SIGTERM: `Ranks.group` raises both as KeyboardInterrupt) one line and exit code 130."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from mmkit.errors import in_context, print_error
from mmkit.inference.ranks import Ranks

INTERRUPTED = 130  # the shell's code for a process that SIGINT ended (128 + 2)
T = TypeVar("T")


def nothing_written(args: argparse.Namespace | None, ranks: Ranks) -> str:
    """What an interrupted tool that writes its output whole or not at all (a temp file renamed at the end,
    removed when the run stops) has left: nothing, naming the output when it has one (`--out`, `--output`)."""
    out = getattr(args, "out", None) or getattr(args, "output", None)
    return f"nothing was written to {out}" if out else "nothing was written"


def agreed(ranks: Ranks, setup: Callable[[], T]) -> T:
    """`setup()`, whose ValueError or OSError (a user's mistake, met alike by every rank but a device or a model of
    its own; `WeightsError` is a ValueError) stops every rank of a launcher alike: the first rank's problem is
    raised on all as a ValueError (one process: as it is)."""
    if not ranks.multi:
        return setup()
    try:
        result, problem = setup(), None
    except (ValueError, OSError) as e:
        result, problem = None, str(e)
    problem = ranks.first_problem(problem)
    if problem is not None:
        raise ValueError(problem)
    return result  # type: ignore[return-value]


def set_up_on_ranks(prog: str, ranks: Ranks, setup: Callable[[], T]) -> T | None:
    """`setup()`'s result on every rank, or None on every rank where it failed on any (`agreed`): the problem
    printed once, by the first rank, as the tool's one error line."""
    try:
        return agreed(ranks, setup)
    except (ValueError, OSError) as e:
        if ranks.first:
            print_error(prog, e)
        return None


def check_export_option(args: argparse.Namespace, error: type[Exception] = ValueError) -> None:
    """An `--export OUT` (where given) that can be written, before the model loads: a new or empty folder
    (`model_dir.check_export_dir`, a folder holding files is an `error`), and the fp32 model (int8 is applied at
    load, never saved). A ValueError or OSError of one line otherwise."""
    from mmkit.inference.model_dir import check_export_dir

    if args.export:
        if args.quantize != "none":
            raise ValueError(f"--export saves the fp32 model: drop --quantize {args.quantize} (it is applied at load)")
        check_export_dir(args.export, error)


def exported(prog: str, ranks: Ranks, save: Callable[[], Path]) -> bool:
    """`save()` (an export, whose folder each rank checked before its model loaded) on the first rank once every
    rank's set-up agreed, its folder said in one line; False, the problem printed once, where it failed."""
    def run() -> bool:
        if ranks.first:
            logging.getLogger("mmkit").info("saved an mmkit export in %s", save())
        return True

    return set_up_on_ranks(prog, ranks, run) is not None


def on_ranks(prog: str, parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None,
             run: Callable[[argparse.Namespace, Ranks], int],
             left: Callable[[argparse.Namespace | None, Ranks], str] = nothing_written) -> int:
    """`run(args, ranks)`'s exit code, the ranks those of the environment (one process without a launcher's;
    a half-set environment is one line and 2) within their group, the arguments parsed on every rank with
    argparse's usage and errors printed once.

    Interrupted (Ctrl-C, or SIGTERM from `timeout`, a scheduler or the launcher), 130 and one line on the first
    rank, "<prog>: interrupted; " and `left(args, ranks)` (args None while they were parsed): what the run leaves,
    since its temp files were removed as the interruption unwound. A tool that reports its own interruption
    (transcribe, label) returns 130 itself; one coming after `run` returned does not print a second line."""
    try:
        ranks = Ranks.from_env()
    except ValueError as e:
        print_error(prog, e)
        return 2
    args, code = None, None
    try:
        with ranks.group():
            with ranks.quiet():
                args = parser().parse_args(argv)
            code = run(args, ranks)
        return code
    except BaseException as e:  # noqa: BLE001 - an interruption, or an error of its unwinding; the rest re-raised
        if not _while_interrupted(e):
            raise
    if code is not None:  # the tool had finished (and said so) when the interruption came
        return code
    if ranks.first:
        print(f"{prog}: interrupted; {left(args, ranks)}", file=sys.stderr)
    return INTERRUPTED


def _while_interrupted(e: BaseException) -> bool:
    """Whether `e` is a KeyboardInterrupt or was raised while one unwound the run: under a launcher, the last
    exchange with ranks the signal already ended ("Connection closed by peer"): the interruption, not an error."""
    return in_context(e, lambda x: isinstance(x, KeyboardInterrupt)) is not None
