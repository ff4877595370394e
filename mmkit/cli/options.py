"""Options shared by the tools' parsers (`mmkit transcribe`, `translate`, `generate-text`, `embed`, `bench`).
Imports no torch: `mmkit bench label`'s parent process stays light."""
from __future__ import annotations

import argparse
from typing import Callable


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type for a count: an integer >= `minimum`, else argparse's usage error (exit 2)."""
    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return count


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    """--precision, fp32 by default (`mmkit.inference.precision.resolve_precision` reads it)."""
    from mmkit.inference.precision import PRECISIONS

    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="autocast precision: fp32 (exact, default); auto = bf16 where the hardware has it "
                        "natively (AVX512-BF16/AMX CPUs, GPUs), else fp32")
