"""Options shared by the inference tools' parsers (`mmkit transcribe`, `translate`, `generate-text`, `embed`)."""
from __future__ import annotations

import argparse

from mmkit.inference.precision import PRECISIONS


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    """--precision, fp32 by default (`mmkit.inference.precision.resolve_precision` reads it)."""
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="autocast precision: fp32 (exact, default); auto = bf16 where the hardware has it "
                        "natively (AVX512-BF16/AMX CPUs, GPUs), else fp32")
