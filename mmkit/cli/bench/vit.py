"""ViT throughput: mmkit's `ViT` against timm's `VisionTransformer` with the same weights.

Both models run in one process, in interleaved rounds (the order alternates every round, so
thermal or load drift hits both alike); each figure is the median over rounds, and the result
is reported as the ratio mmkit / timm. Inference runs in eval mode under `torch.inference_mode()`;
a training step is forward + cross-entropy + backward + AdamW step in train mode. `--precision fp32
bf16` adds bf16 rows: both models under the same `torch.autocast("cpu", bfloat16)` (what
`--trainer.precision bf16-mixed` does in training); on a CPU without AVX512-BF16/AMX bf16 is
emulated (the table says so) and far slower than fp32, so keep those runs small there.

    mmkit bench vit --models vit_tiny_patch16_224 vit_small_patch16_224 --batch-size 32
    mmkit bench vit --models vit_tiny_patch16_224 --precision fp32 bf16 --steps 3
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
IMPLS = ("mmkit", "timm")


@dataclass
class _Impl:
    """One implementation under test with its own optimiser (weights start identical)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    autocast: Callable[[], ContextManager]

    def infer(self, x: Tensor) -> Tensor:
        with torch.inference_mode(), self.autocast():
            return self.model(x)

    def train_step(self, x: Tensor, y: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()


def _autocast(precision: str) -> Callable[[], ContextManager]:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _build(name: str, image_size: int, precision: str, timm_kwargs: Mapping[str, Any]) -> dict[str, _Impl]:
    import timm

    from mmkit.models import ViT

    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False, img_size=image_size, **timm_kwargs)
    ours = ViT.from_timm(ref)  # same weights, same configuration
    autocast = _autocast(precision)
    return {
        impl: _Impl(model, torch.optim.AdamW(model.parameters(), lr=1e-4), autocast)
        for impl, model in (("mmkit", ours), ("timm", ref))
    }


def _interleaved(impls: dict[str, _Impl], step: Callable[[_Impl], object], rounds: int,
                 warmup: int) -> dict[str, list[float]]:
    """Seconds per timed call of `step` for each implementation, alternating the order each round."""
    times: dict[str, list[float]] = {k: [] for k in impls}
    for r in range(warmup + rounds):
        order = IMPLS if r % 2 == 0 else IMPLS[::-1]
        for key in order:
            start = time.perf_counter()
            step(impls[key])
            elapsed = time.perf_counter() - start
            if r >= warmup:
                times[key].append(elapsed)
    return times


def _spread(seconds: Sequence[float]) -> float:
    """Interquartile range over the median: how noisy the rounds were (0 with < 2 rounds)."""
    if len(seconds) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(seconds, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(seconds)


def _bench_one(name: str, batch_size: int, image_size: int, steps: int, warmup: int, precision: str,
               timm_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    impls = _build(name, image_size, precision, timm_kwargs)
    ours = impls["mmkit"].model
    num_classes = ours.config["num_classes"]
    if num_classes <= 0:
        raise ValueError("the training benchmark needs a classifier head (num_classes > 0)")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, ours.config["in_chans"], image_size, image_size, generator=g)
    y = torch.randint(0, num_classes, (batch_size,), generator=g)

    for impl in impls.values():
        impl.model.eval()
    # Sanity: the two models compute the same function, so the timings compare like with like.
    diff = (impls["mmkit"].infer(x[:2]).float() - impls["timm"].infer(x[:2]).float()).abs().max().item()
    infer = _interleaved(impls, lambda i: i.infer(x), steps, warmup)

    for impl in impls.values():
        impl.model.train()
    train = _interleaved(impls, lambda i: i.train_step(x, y), steps, warmup)

    from mmkit.inference.precision import cpu_has_bf16

    row: dict[str, Any] = dict(
        model=name, batch_size=batch_size, image_size=image_size, precision=precision,
        native=precision == "fp32" or cpu_has_bf16(),
        threads=torch.get_num_threads(), steps=steps, warmup=warmup,
        params=sum(p.numel() for p in ours.parameters()), max_abs_diff=diff,
    )
    for mode, secs in (("infer", infer), ("train", train)):
        for impl in IMPLS:
            row[f"{mode}_{impl}_ips"] = batch_size / statistics.median(secs[impl])
        row[f"{mode}_ratio"] = row[f"{mode}_mmkit_ips"] / row[f"{mode}_timm_ips"]
        row[f"{mode}_spread"] = max(_spread(secs[impl]) for impl in IMPLS)
        row[f"{mode}_seconds"] = secs  # raw per-round timings, for a closer look
    return row


def run_vit_bench(
    models: Sequence[str] = ("vit_tiny_patch16_224", "vit_small_patch16_224"),
    batch_size: int = 32,
    image_size: int = 224,
    steps: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    precision: str = "fp32",
    timm_kwargs: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Time mmkit's ViT against timm's on CPU, one row per model.

    Args:
        models: timm model names of the plain ViT family.
        batch_size, image_size: input of shape (batch_size, 3, image_size, image_size).
        steps: timed rounds per mode (each round times both implementations once).
        warmup: untimed rounds before them.
        threads: torch intra-op threads for the run (None = leave as is).
        precision: "fp32", or "bf16" (CPU autocast applied identically to both).
        timm_kwargs: extra `timm.create_model` arguments (e.g. `depth=1` for a smoke run).

    Returns:
        Per model: images/s as `{infer,train}_{mmkit,timm}_ips`, `{infer,train}_ratio`
        (mmkit / timm, > 1 means mmkit is faster), `{infer,train}_spread` (interquartile range
        over median of the per-round times, the worse of the two: a ratio closer to 1 than this
        is noise), the raw `{infer,train}_seconds`, `max_abs_diff` of the two models' logits,
        and the settings used.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    _autocast(precision)  # validate before building anything
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        rows = []
        for name in models:
            log.info("benchmarking %s (batch %d, %dpx, %s)", name, batch_size, image_size, precision)
            rows.append(_bench_one(name, batch_size, image_size, steps, warmup, precision, dict(timm_kwargs or {})))
        return rows
    finally:
        torch.set_num_threads(previous)


def format_rows(rows: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Header + one line per model, as strings (shared by the rich and the plain output)."""
    header = ["model", "precision", "mode", "mmkit img/s", "timm img/s", "mmkit/timm", "spread", "max |diff|"]
    lines = [header]
    for row in rows:
        precision = row["precision"] + ("" if row.get("native", True) else " (emulated)")
        for mode, label in (("infer", "inference"), ("train", "train step")):
            lines.append([
                row["model"], precision, label, f"{row[f'{mode}_mmkit_ips']:.1f}", f"{row[f'{mode}_timm_ips']:.1f}",
                f"{row[f'{mode}_ratio']:.3f}", f"{row[f'{mode}_spread']:.0%}", f"{row['max_abs_diff']:.1e}",
            ])
    return lines


def _render(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = format_rows(rows)
    first = rows[0] if rows else {}
    title = (f"ViT throughput, batch {first.get('batch_size')}, {first.get('image_size')}px, "
             f"{first.get('threads')} threads, median of {first.get('steps')} rounds")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text fallback
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        body = "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines)
        return f"{title}\n{body}\n"
    table = Table(title=title)
    for i, col in enumerate(lines[0]):
        table.add_column(col, justify="left" if i < 3 else "right")
    for line in lines[1:]:
        table.add_row(*line)
    console = Console(record=True, width=120)
    with console.capture() as capture:
        console.print(table)
    return capture.get()


def main(argv: Sequence[str] | None = None) -> int:
    """`mmkit bench vit`: run the benchmark, print a table, optionally write JSON."""
    parser = argparse.ArgumentParser(prog="mmkit bench vit", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_tiny_patch16_224", "vit_small_patch16_224"],
                        help="timm model names (space or comma separated)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=10, help="timed rounds per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds per mode")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"],
                        help="one set of rows per value, both models under the same autocast (bf16: emulated, slow, "
                             "on CPUs without AVX512-BF16/AMX)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    args = parser.parse_args(argv)
    models = [m for arg in args.models for m in arg.split(",") if m]
    rows = [row for precision in dict.fromkeys(args.precision)
            for row in run_vit_bench(models, batch_size=args.batch_size, image_size=args.image_size, steps=args.steps,
                                     warmup=args.warmup, threads=args.threads, precision=precision)]
    sys.stdout.write(_render(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
            f.write("\n")
    tolerance = {"fp32": 1e-3, "bf16": 1e-1}  # bf16 autocast: both round, differently ordered
    bad = [r["model"] for r in rows if not math.isfinite(r["max_abs_diff"]) or r["max_abs_diff"] > tolerance[r["precision"]]]
    if bad:
        log.warning("mmkit and timm disagree on %s: the timings may not compare the same computation", bad)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main())
