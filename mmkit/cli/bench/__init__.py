"""Benchmark scripts: mmkit models against their reference implementations, timed in the same
process and reported as ratios (never asserted on). `mmkit bench vit` runs `mmkit.cli.bench.vit`.
"""
from __future__ import annotations

import importlib
import sys

from mmkit.errors import out_of_memory, print_error

# Benchmark name -> module with a `main(argv) -> int`.
BENCHMARKS = {"vit": "mmkit.cli.bench.vit", "transcribe": "mmkit.cli.bench.transcribe",
              "label": "mmkit.cli.bench.label",
              "text": "mmkit.cli.bench.text",
              "translate": "mmkit.cli.bench.translate",
              "generate": "mmkit.cli.bench.generate",
              "embed": "mmkit.cli.bench.embed"}


class StepFailed(RuntimeError):
    """A process a benchmark runs (`mmkit transcribe`, a reference's script) failed: its exit code and the last
    line of its stderr (its own one-line reason), shown as the benchmark's error."""

    def __init__(self, cmd: list[str], code: int, stderr: str) -> None:
        last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "no message")
        super().__init__(f"{' '.join(cmd[:4])} ... failed ({code}): {last.strip()}")
        self.code = code


def main(argv: list[str]) -> int:
    """`mmkit bench NAME [options]`; `mmkit bench --help` lists the names (exit 0). A step that failed is one
    line (exit 2 where the step said the input was wrong, else 1); Ctrl-C or SIGTERM one line and 130."""
    usage = f"usage: mmkit bench {{{','.join(BENCHMARKS)}}} [options]   (mmkit bench NAME --help)"
    if argv and argv[0] in ("-h", "--help"):
        print(f"{usage}\n\n{__doc__.strip()}")
        return 0
    if not argv or argv[0] not in BENCHMARKS:
        print(usage, file=sys.stderr)
        problem = f"unknown benchmark {argv[0]!r}" if argv else "name a benchmark"
        print_error("mmkit bench", f"{problem} (choose from {', '.join(BENCHMARKS)})")
        return 2
    from mmkit.inference.ranks import sigterm_interrupts

    try:
        with sigterm_interrupts():
            return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:]) or 0
    except StepFailed as e:
        print_error(f"mmkit bench {argv[0]}", e)
        return 2 if e.code == 2 else 1
    except (MemoryError, RuntimeError) as e:  # sizes past the machine (--codebook-size 1e10): one line
        line = out_of_memory(e)
        if line is None:
            raise
        print_error(f"mmkit bench {argv[0]}", f"{line}; choose smaller sizes")
        return 1
    except KeyboardInterrupt:  # a --json is written whole or not at all (write_json)
        print(f"mmkit bench {argv[0]}: interrupted", file=sys.stderr)
        return 130
