"""A tool's `main` on the ranks of a launcher (torchrun, SLURM; one process without one): the ranks read
from the environment, the tool run within their group, argparse's usage and errors printed once."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from mmkit.inference.ranks import Ranks


def on_ranks(prog: str, parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None,
             run: Callable[[argparse.Namespace, Ranks], int]) -> int:
    """`run(args, ranks)`'s exit code, the ranks those of the environment (one process without a launcher's;
    a half-set environment is one line and 2) within their group, the arguments parsed on every rank with
    argparse's usage and errors printed once."""
    try:
        ranks = Ranks.from_env()
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    with ranks.group():
        with ranks.quiet():
            args = parser().parse_args(argv)
        return run(args, ranks)
