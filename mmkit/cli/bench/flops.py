"""Model FLOPs utilisation (MFU) for the benchmarks: the FLOPs a model's forward (and backward)
pass performs, counted by PyTorch's own `FlopCounterMode` (matrix products and convolutions, the
work that bounds a transformer), against the device's dense peak for the precision in use.

MFU = FLOPs per image × images/s ÷ peak FLOP/s. The peaks are the vendors' dense (no sparsity)
datasheet figures; a GPU outside the table, or a CPU, gets an MFU only where `--peak-tflops` gives
its peak, since a guessed peak would print a made-up utilisation.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

# Dense TFLOP/s by GPU name fragment (first match wins): (bf16/fp16 tensor cores, fp32 without TF32).
GPU_PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989.4, 66.9),  # SXM; same SMs and clocks as the H100 SXM
    ("H100 PCIe", 756.0, 51.2),
    ("H100", 989.4, 66.9),
    ("A100", 312.0, 19.5),
    ("L40S", 362.1, 91.6),
    ("L4", 121.0, 30.3),
    ("A10G", 70.0, 31.2),
    ("A10", 125.0, 31.2),
)


def peak_tflops(device: torch.device, precision: str) -> float | None:
    """The datasheet dense peak of `device` for `precision` ("fp32" or "bf16"), None where unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, reduced, fp32 in GPU_PEAK_TFLOPS:
        if fragment in name:
            return fp32 if precision == "fp32" else reduced
    return None


def count_flops(run: Callable[[], object]) -> int:
    """Total FLOPs of the matrix products and convolutions `run()` performs (a multiply-add is 2)."""
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return counter.get_total_flops()


def per_sample_flops(model: nn.Module, sample: Tensor, target: Tensor) -> tuple[int, int]:
    """(inference, training) FLOPs for one sample: the forward pass, and forward + backward of the
    cross-entropy loss against `target` (the backward does about twice the forward's work)."""
    x = sample[:1]
    with torch.no_grad():
        forward = count_flops(lambda: model(x))
    y = target[:1]

    def step() -> None:
        torch.nn.functional.cross_entropy(model(x), y).backward()

    train = count_flops(step)
    model.zero_grad(set_to_none=True)
    return forward, train


def mfu(flops_per_sample: int, samples_per_s: float, peak: float | None) -> float | None:
    """The share of `peak` TFLOP/s the measured throughput uses (None without a peak)."""
    return None if not peak else flops_per_sample * samples_per_s / (peak * 1e12)
