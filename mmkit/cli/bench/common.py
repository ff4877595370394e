"""Timing helpers shared by the in-process benchmarks (`bench embed`, `bench text`, `bench translate`):
implementations run in alternating order in the same process, so drift in machine load lands on
both sides, and the caller reports medians as ratios (see the package docstring).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import torch

from mmkit.cli.options import at_least, thread_count

T = TypeVar("T")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the body with `threads` intra-op threads (None: leave as is), restoring the previous count."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def interleaved(runs: Mapping[str, Callable[[], T]], rounds: int, warmup: int, no_grad: bool = True,
                sync: Callable[[], None] | None = None) -> tuple[dict[str, list[float]], dict[str, T]]:
    """Time each run `warmup + rounds` times, reversing the order every other round.

    Args:
        no_grad: run without gradients (as the tools run; no_grad, not inference_mode: inside inference
            mode autocast casts the weights again at every decoding step instead of once). False for
            training steps.
        sync: called before and after each run, e.g. `torch.cuda.synchronize`, so a GPU call is timed
            from an idle device to the end of its last kernel.

    Returns:
        seconds per run name (the `rounds` timed calls, warm-up excluded) and each run's last output.
    """
    names = list(runs)
    seconds: dict[str, list[float]] = {k: [] for k in names}
    outputs: dict[str, T] = {}
    sync = sync or (lambda: None)
    with torch.no_grad() if no_grad else contextlib.nullcontext():
        for r in range(warmup + rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                sync()
                start = time.perf_counter()
                outputs[name] = runs[name]()
                sync()
                if r >= warmup:
                    seconds[name].append(time.perf_counter() - start)
    return seconds, outputs


def add_run_options(p: argparse.ArgumentParser) -> None:
    """--rounds, --warmup, --threads and --json, the same in every in-process benchmark."""
    p.add_argument("--rounds", type=at_least(1), default=3)
    p.add_argument("--warmup", type=at_least(0), default=1)
    p.add_argument("--threads", type=thread_count())
    p.add_argument("--json", metavar="FILE", type=output_file, help="also write the full results as JSON")


def output_file(text: str) -> str:
    """An argparse type for a file a benchmark writes at its end (--json): a folder, a path under a file
    or an unwritable folder is a usage error at once, not a traceback after minutes of timings."""
    from mmkit.inference.text_rows import check_output_dir

    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: give a file name")
    try:
        check_output_dir(path.parent)  # a real probe: read-only mounts and /proc fail it too
    except OSError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_sizes_option(p: argparse.ArgumentParser, sizes: Mapping[str, tuple[int, int, int, int]]) -> None:
    """--sizes over a table of named random-weight shapes (dim, depth, num_heads, vocab_size)."""
    p.add_argument("--sizes", nargs="+", choices=list(sizes), default=list(sizes),
                   help="random-weight shapes to run, one report each: " + "; ".join(
                       f"{k}: dim {d}, depth {n}, vocab {v}" for k, (d, n, _, v) in sizes.items()))


def add_precision_option(p: argparse.ArgumentParser) -> None:
    """--precision: the mmkit precisions to time beside fp32 (`bench_precisions`)."""
    p.add_argument("--precision", nargs="+", choices=("auto", "fp32", "bf16"), default=["auto"],
                   help="mmkit --precision paths to time beside fp32 (always run); auto (default): bf16 too where "
                        "the CPU has it natively (AVX512-BF16/AMX)")


def bench_precisions(asked: Sequence[str], device: str = "cpu") -> list[str]:
    """The --precision list as mmkit paths on `device`: fp32 always, each asked value as the tools resolve it
    (`resolve_precision`: auto adds bf16 only where the CPU has it natively; on a GPU bf16, or fp16 on older ones)."""
    from mmkit.inference.precision import resolve_precision

    return list(dict.fromkeys(["fp32", *(resolve_precision(p, device) for p in asked)]))


def bench_quantize(asked: Sequence[str] | None, device: str) -> list[str]:
    """The --quantize list of a whole-process bench on `device`: `asked`, or none and int8 on the CPU and
    none elsewhere. A ValueError for int8 off the CPU: PyTorch's int8 kernels run on the CPU only."""
    on_cpu = device.split(":")[0] == "cpu"
    if "int8" in (asked or ()) and not on_cpu:
        raise ValueError(f"--quantize int8 runs on the CPU (PyTorch's int8 kernels), not on --device {device}")
    return list(asked or (["none", "int8"] if on_cpu else ["none"]))


# The reduced-precision mmkit paths a benchmark may time beside fp32, with the option that selects each.
REDUCED_PATHS = (("int8", "--quantize int8"), ("bf16", "--precision bf16"))


def reduced_path_lines(result: Mapping[str, Any], rates: str, unit: str, label: Callable[[str, str], str],
                       agreement: Callable[[Any], str]) -> list[str]:
    """Two report lines per reduced path in `result` (keys "<kind>_ratio", "<kind>_agreement"): the
    path's `label(kind, option)` and its rate from `result[rates]` in `unit`, then its ratio to
    transformers' fp32 and `agreement(result["<kind>_agreement"])`."""
    lines = []
    for kind, option in REDUCED_PATHS:
        if f"{kind}_ratio" in result:
            lines += [f"  {label(kind, option)} {result[rates][f'mmkit {kind}']:8.1f} {unit}",
                      f"  mmkit {kind} / transformers fp32  {result[f'{kind}_ratio']:8.2f}x   {kind} vs fp32: "
                      + agreement(result[f"{kind}_agreement"])]
    return lines


CT2_COMPUTE_TYPES = ("int8", "int8_float32", "float32")  # CTranslate2's CPU compute types, for its columns


def add_ct2_option(p: argparse.ArgumentParser) -> None:
    """--ctranslate2 TYPE ...: CTranslate2 columns on the same weights, one a compute type."""
    p.add_argument("--ctranslate2", nargs="+", default=[], choices=CT2_COMPUTE_TYPES, metavar="TYPE",
                   help="CTranslate2 columns, one a compute type (int8, int8_float32, float32; needs ctranslate2): "
                        "the same weights, converted as mmkit convert --to ctranslate2 does")


def check_ct2_compute_types(compute_types: Sequence[str]) -> None:
    """A ValueError of one line for an unknown CTranslate2 compute type, or CTranslate2 columns asked for without
    ctranslate2 installed."""
    import importlib.util

    unknown = sorted(set(compute_types) - set(CT2_COMPUTE_TYPES))
    if unknown:
        raise ValueError(f"CTranslate2 compute type {unknown[0]!r} is none of {', '.join(CT2_COMPUTE_TYPES)}")
    if compute_types and importlib.util.find_spec("ctranslate2") is None:
        raise ValueError("--ctranslate2 needs ctranslate2, which is not installed (pip install ctranslate2)")


def placeholder_pieces(vocab_size: int, specials: Mapping[int, str]) -> list[str]:
    """A vocabulary of `vocab_size` pieces for converting a random model to CTranslate2, which works on pieces:
    `specials` (id -> piece) where given, else "t<id>"; `placeholder_id` reads one back."""
    return [specials.get(i, f"t{i}") for i in range(vocab_size)]


def placeholder_id(piece: str, specials: Mapping[int, str]) -> int:
    """The id of a piece of `placeholder_pieces`."""
    return next(i for i, p in specials.items() if p == piece) if piece in specials.values() else int(piece[1:])


def fastest_against_ct2(rates: Mapping[str, float]) -> str:
    """"1.12x (mmkit int8 vs ctranslate2 int8)": mmkit's fastest path against CTranslate2's fastest, from the
    tokens/s of paths named "mmkit..." and "ctranslate2 ..."."""
    best, peer = (max((k for k in rates if k.startswith(prefix)), key=rates.__getitem__)
                  for prefix in ("mmkit", "ctranslate2"))
    return f"{rates[best] / rates[peer]:.2f}x ({best} vs {peer})"


def write_json(path: str | None, results: Any) -> None:
    """Write `results` to `path` as indented JSON (nothing when `path` is None), atomically: an earlier
    file is replaced only by a complete one."""
    from mmkit.inference.text_rows import atomic_path

    if path:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
