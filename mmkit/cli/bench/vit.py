"""ViT throughput: mmkit's `ViT` against timm's `VisionTransformer` with the same weights.

Both models run in one process, in interleaved rounds (the order alternates every round, so
thermal or load drift hits both alike); each figure is the median over rounds, and the result
is reported as the ratio mmkit / timm. Inference runs in eval mode under `torch.inference_mode()`;
a training step is forward + cross-entropy + backward + AdamW step in train mode. `--precision fp32
bf16` adds bf16 rows: both models under the same `torch.autocast("cpu", bfloat16)` (what
`--trainer.precision bf16-mixed` does in training); on a CPU without AVX512-BF16/AMX bf16 is
emulated (the table says so) and far slower than fp32, so keep those runs small there.
`--device cuda` runs both on a GPU (timings synchronised) under CUDA autocast. `--compile` runs both through
`torch.compile` (in place, whole model; the warmup rounds compile, so they are not timed);
`--grad-checkpointing` switches activation checkpointing on in both (`set_grad_checkpointing`, timm's name
and mmkit's). Each row gives the activation memory of a training step: the bytes autograd keeps for the
backward pass of one forward (saved tensors other than the weights, each storage once). Each row also
reports the model FLOPs utilisation (bench/flops.py): FLOPs per image counted by PyTorch times
images/s over the device's datasheet peak (known GPUs, or `--peak-tflops`).

    mmkit bench vit --models vit_tiny_patch16_224 vit_small_patch16_224 --batch-size 32
    mmkit bench vit --models vit_tiny_patch16_224 --precision fp32 bf16 --steps 3
    mmkit bench vit --models vit_base_patch16_224 --batch-size 128 --precision bf16 --device cuda
    mmkit bench vit --models vit_tiny_patch16_224 --compile
    mmkit bench vit --models vit_small_patch16_224 --grad-checkpointing
"""
from __future__ import annotations

import logging
import math
import statistics
import sys
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmkit.cli.bench.common import interleaved, output_file, write_json
from mmkit.cli.options import Parser, at_least, finite, thread_count

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


def _autocast(precision: str, device: torch.device = torch.device("cpu")) -> Callable[[], ContextManager]:
    from mmkit.inference.precision import autocast_for

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return autocast_for(precision, device)


def _build(name: str, image_size: int, precision: str, timm_kwargs: Mapping[str, Any],
           device: torch.device) -> dict[str, _Impl]:
    import timm

    from mmkit.models import ViT

    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False, img_size=image_size, **timm_kwargs)
    ours = ViT.from_timm(ref)  # same weights, same configuration
    ref, ours = ref.to(device), ours.to(device)
    autocast = _autocast(precision, device)
    return {
        impl: _Impl(model, torch.optim.AdamW(model.parameters(), lr=1e-4), autocast)
        for impl, model in (("mmkit", ours), ("timm", ref))
    }


def _interleaved(impls: dict[str, _Impl], step: Callable[[_Impl], object], rounds: int,
                 warmup: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per timed call of `step` for each implementation, alternating the order each round
    (`common.interleaved`; on a GPU, from an idle device to the end of the call's last kernel)."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    seconds, _ = interleaved({k: (lambda k=k: step(impls[k])) for k in IMPLS}, rounds, warmup, no_grad=False,
                             sync=sync)
    return seconds


def _activation_bytes(impl: _Impl, x: Tensor) -> int:
    """Bytes autograd keeps for the backward pass of one training forward of `impl` on `x`: the saved tensors
    that are not parameters, each storage counted once (a view saves no new memory)."""
    weights = {p.untyped_storage().data_ptr() for p in impl.model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), impl.autocast():
        impl.model(x)
    return sum(kept.values())


def _spread(seconds: Sequence[float]) -> float:
    """Interquartile range over the median: how noisy the rounds were (0 with < 2 rounds)."""
    if len(seconds) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(seconds, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(seconds)


def _bench_one(name: str, batch_size: int, image_size: int, steps: int, warmup: int, precision: str,
               timm_kwargs: Mapping[str, Any], device: torch.device, peak: float | None,
               compile_backend: str | None = None, grad_checkpointing: bool = False) -> dict[str, Any]:
    from mmkit.cli.bench.flops import mfu, peak_tflops, per_sample_flops

    impls = _build(name, image_size, precision, timm_kwargs, device)
    ours = impls["mmkit"].model
    num_classes = ours.config["num_classes"]
    if num_classes <= 0:
        raise ValueError("the training benchmark needs a classifier head (num_classes > 0)")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, ours.config["in_chans"], image_size, image_size, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    # The model's FLOPs, counted on timm's standard ViT: mmkit's last block computes only the tokens
    # pooling reads, so its own count is lower for the same output; one count keeps the MFUs comparable.
    flops = dict(zip(("infer", "train"), per_sample_flops(impls["timm"].model, x, y)))
    peak = peak or peak_tflops(device, precision)
    for impl in impls.values():
        impl.model.set_grad_checkpointing(grad_checkpointing)
        impl.model.train()
    activations = {k: _activation_bytes(impl, x) for k, impl in impls.items()}
    if compile_backend is not None:  # after the count: FlopCounterMode sees the plain modules
        torch._dynamo.reset()
        for impl in impls.values():
            impl.model.compile(backend=compile_backend)  # in place: the optimisers keep the same parameters

    for impl in impls.values():
        impl.model.eval()
    # Sanity: the two models compute the same function, so the timings compare like with like. At the timed
    # batch: a first call at another (x[:2]) made torch.compile recompile at the real one with the batch
    # dimension marked dynamic, and the compiled figures timed dynamic-shape graphs.
    diff = (impls["mmkit"].infer(x).float() - impls["timm"].infer(x).float()).abs().max().item()
    infer = _interleaved(impls, lambda i: i.infer(x), steps, warmup, device)

    for impl in impls.values():
        impl.model.train()
    train = _interleaved(impls, lambda i: i.train_step(x, y), steps, warmup, device)

    from mmkit.inference.precision import cpu_has_bf16

    cuda = device.type == "cuda"
    row: dict[str, Any] = dict(
        model=name, batch_size=batch_size, image_size=image_size, precision=precision,
        native=precision == "fp32" or (torch.cuda.is_bf16_supported() if cuda else cpu_has_bf16()),
        device=torch.cuda.get_device_name(device) if cuda else "cpu",
        threads=torch.get_num_threads(), steps=steps, warmup=warmup,
        params=sum(p.numel() for p in ours.parameters()), max_abs_diff=diff, peak_tflops=peak,
        compiled=compile_backend, grad_checkpointing=grad_checkpointing,
        **{f"train_{impl}_activation_mb": activations[impl] / 2**20 for impl in IMPLS},
    )
    for mode, secs in (("infer", infer), ("train", train)):
        row[f"{mode}_flops_per_image"] = flops[mode]
        for impl in IMPLS:
            row[f"{mode}_{impl}_ips"] = batch_size / statistics.median(secs[impl])
            row[f"{mode}_{impl}_mfu"] = mfu(flops[mode], row[f"{mode}_{impl}_ips"], peak)
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
    device: str = "cpu",
    peak_tflops: float | None = None,
    compile_backend: str | None = None,
    grad_checkpointing: bool = False,
) -> list[dict[str, Any]]:
    """Time mmkit's ViT against timm's on the CPU or a GPU, one row per model.

    Args:
        models: timm model names of the plain ViT family.
        batch_size, image_size: input of shape (batch_size, 3, image_size, image_size).
        steps: timed rounds per mode (each round times both implementations once).
        warmup: untimed rounds before them.
        threads: torch intra-op threads for the run (None = leave as is).
        precision: "fp32", or "bf16" (CPU autocast applied identically to both).
        timm_kwargs: extra `timm.create_model` arguments (e.g. `depth=1` for a smoke run).
        device: "cpu", "cuda" or "cuda:N" (checked before anything is built).
        peak_tflops: the device's dense peak for `precision`, for the MFU (None: the datasheet
            figure of a known GPU, else no MFU).
        compile_backend: run both models through `torch.compile` with this backend ("inductor";
            "aot_eager" traces without generating code), compiled in the warmup rounds (at least one).
        grad_checkpointing: activation checkpointing in both models' training steps.

    Returns:
        Per model: images/s as `{infer,train}_{mmkit,timm}_ips`, `{infer,train}_ratio`
        (mmkit / timm, > 1 means mmkit is faster), `{infer,train}_spread` (interquartile range
        over median of the per-round times, the worse of the two: a ratio closer to 1 than this
        is noise), the raw `{infer,train}_seconds`, `max_abs_diff` of the two models' logits,
        `{infer,train}_flops_per_image` and `{infer,train}_{mmkit,timm}_mfu` (None without a
        peak), `train_{mmkit,timm}_activation_mb` (what a training forward keeps for the backward
        pass), and the settings used.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    if compile_backend is not None and warmup < 1:
        raise ValueError("--compile needs --warmup >= 1: the first call of each mode compiles, and is not timed")
    _autocast(precision)  # validate before building anything
    import timm

    unknown = [name for name in models if not timm.is_model(name)]
    if unknown:
        raise ValueError(f"not timm model names: {', '.join(unknown)} (timm.list_models('vit_*') lists the ViTs)")
    others = [name for name in models if not timm.models.is_model_in_modules(name, ["vision_transformer"])]
    if others:
        raise ValueError(f"not plain timm ViTs: {', '.join(others)} (timm.list_models('vit_*') lists them)")
    from mmkit.inference.precision import check_device

    where = check_device(device)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        rows = []
        for name in models:
            log.info("benchmarking %s (batch %d, %dpx, %s)", name, batch_size, image_size, precision)
            rows.append(_bench_one(name, batch_size, image_size, steps, warmup, precision, dict(timm_kwargs or {}),
                                   where, peak_tflops, compile_backend, grad_checkpointing))
        return rows
    finally:
        torch.set_num_threads(previous)


def format_rows(rows: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Header + one line per model, as strings (shared by the rich and the plain output)."""
    header = ["model", "precision", "mode", "mmkit img/s", "timm img/s", "mmkit/timm", "spread", "max |diff|",
              "MFU mmkit", "MFU timm", "act. MB mmkit / timm"]
    lines = [header]
    for row in rows:
        precision = (row["precision"] + ("" if row.get("native", True) else " (emulated)")
                     + (f", compiled ({row['compiled']})" if row.get("compiled") else "")
                     + (", grad ckpt" if row.get("grad_checkpointing") else ""))
        for mode, label in (("infer", "inference"), ("train", "train step")):
            lines.append([
                row["model"], precision, label, f"{row[f'{mode}_mmkit_ips']:.1f}", f"{row[f'{mode}_timm_ips']:.1f}",
                f"{row[f'{mode}_ratio']:.3f}", f"{row[f'{mode}_spread']:.0%}", f"{row['max_abs_diff']:.1e}",
                *(_percent(row.get(f"{mode}_{impl}_mfu")) for impl in IMPLS),
                " / ".join(f"{row[f'train_{impl}_activation_mb']:.1f}" for impl in IMPLS) if mode == "train" else "",
            ])
    return lines


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share:.1%}"


def _peaks(rows: Sequence[Mapping[str, Any]]) -> str:
    """The title's note of the peak each precision's MFU divides by (a GPU's differ: bf16 tensor cores, fp32 not)."""
    peaks = {r["precision"]: r["peak_tflops"] for r in rows if r.get("peak_tflops")}
    if not peaks:
        return ""
    return "; MFU against the dense peak: " + ", ".join(f"{p} {t:g}" for p, t in peaks.items()) + " TFLOP/s"


def _render(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = format_rows(rows)
    first = rows[0] if rows else {}
    where = first.get("device", "cpu")
    title = (f"ViT throughput on {where}, batch {first.get('batch_size')}, {first.get('image_size')}px, "
             + (f"{first.get('threads')} threads, " if where == "cpu" else "")
             + f"median of {first.get('steps')} rounds"
             + _peaks(rows))
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
    console = Console(record=True, width=200)
    with console.capture() as capture:
        console.print(table)
    return capture.get()


def main(argv: Sequence[str] | None = None) -> int:
    """`mmkit bench vit`: run the benchmark, print a table, optionally write JSON."""
    parser = Parser(prog="mmkit bench vit", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vit_tiny_patch16_224", "vit_small_patch16_224"],
                        help="timm model names (space or comma separated)")
    parser.add_argument("--batch-size", type=at_least(1), default=32)
    parser.add_argument("--image-size", type=at_least(1), default=224)
    parser.add_argument("--steps", type=at_least(1), default=10, help="timed rounds per mode")
    parser.add_argument("--warmup", type=at_least(0), default=3, help="untimed rounds per mode")
    parser.add_argument("--threads", type=thread_count(), default=None,
                        help="torch intra-op threads (default: torch's)")
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=["fp32"],
                        help="one set of rows per value, both models under the same autocast (bf16: emulated, slow, "
                             "on CPUs without AVX512-BF16/AMX)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--peak-tflops", type=finite(1e-3), metavar="T",  # > 0: the MFU divides by it
                        help="the device's dense peak TFLOP/s at the precision run, for the MFU columns (default: "
                             "the datasheet figure of a known GPU; none on a CPU)")
    parser.add_argument("--compile", nargs="?", const="inductor", choices=("inductor", "aot_eager"), default=None,
                        metavar="BACKEND", help="both models through torch.compile (inductor unless a backend is "
                        "named: inductor or aot_eager); the warmup rounds compile")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="activation checkpointing in both models' training steps")
    parser.add_argument("--json", metavar="PATH", type=output_file, help="also write the rows as JSON to PATH")
    args = parser.parse_args(argv)
    models = [m for arg in args.models for m in arg.split(",") if m.strip()]
    if not models:  # `--models ,`: an empty table and exit 0
        parser.error("--models: no model name given")
    try:
        rows = [row for precision in dict.fromkeys(args.precision)
                for row in run_vit_bench(models, batch_size=args.batch_size, image_size=args.image_size,
                                         steps=args.steps, warmup=args.warmup, threads=args.threads,
                                         precision=precision, device=args.device, peak_tflops=args.peak_tflops,
                                         compile_backend=args.compile, grad_checkpointing=args.grad_checkpointing)]
    except ValueError as e:
        print(f"mmkit bench vit: error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(_render(rows))
    write_json(args.json, rows)
    tolerance = {"fp32": 1e-3, "bf16": 1e-1}  # bf16 autocast: both round, differently ordered
    bad = [r["model"] for r in rows
           if not math.isfinite(r["max_abs_diff"]) or r["max_abs_diff"] > tolerance[r["precision"]]]
    if bad:
        log.warning("mmkit and timm disagree on %s: the timings may not compare the same computation", bad)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main())
