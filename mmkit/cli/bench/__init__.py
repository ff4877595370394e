"""Benchmark scripts: mmkit models against their reference implementations, timed in the same
process and reported as ratios (never asserted on). `mmkit bench vit` runs `mmkit.cli.bench.vit`.
"""
from __future__ import annotations

import importlib
import sys

# Benchmark name -> module with a `main(argv) -> int`.
BENCHMARKS = {"vit": "mmkit.cli.bench.vit", "transcribe": "mmkit.cli.bench.transcribe",
              "label": "mmkit.cli.bench.label",
              "text": "mmkit.cli.bench.text",
              "translate": "mmkit.cli.bench.translate",
              "generate": "mmkit.cli.bench.generate",
              "embed": "mmkit.cli.bench.embed"}


def main(argv: list[str]) -> int:
    """`mmkit bench NAME [options]`; `mmkit bench --help` lists the names (exit 0)."""
    usage = f"usage: mmkit bench {{{','.join(BENCHMARKS)}}} [options]   (mmkit bench NAME --help)"
    if argv and argv[0] in ("-h", "--help"):
        print(f"{usage}\n\n{__doc__.strip()}")
        return 0
    if not argv or argv[0] not in BENCHMARKS:
        print(usage, file=sys.stderr)
        problem = f"unknown benchmark {argv[0]!r}" if argv else "name a benchmark"
        print(f"mmkit bench: error: {problem} (choose from {', '.join(BENCHMARKS)})", file=sys.stderr)
        return 2
    return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:]) or 0
