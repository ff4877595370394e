"""Precision choice for inference tools (`mmkit label`, `mmkit transcribe`): fp32 is exact; bf16
where the CPU (AVX512-BF16/AMX) or GPU has it natively; fp16 on older GPUs. Applied as autocast
(torch.amp), so weights stay fp32 and every reduced-precision path can be checked against fp32.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_has_bf16() -> bool:
    """Native bf16 matmul on this CPU (AVX512-BF16 or AMX); without it bf16 is emulated, slowly."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device | str, quantize: str = "none") -> str:
    """"auto" -> bf16 where the hardware has it (CUDA with bf16, AVX512-BF16/AMX CPUs), fp16 on
    older GPUs, else fp32. Explicit choices are kept (fp16 on a CPU is refused). With
    `quantize="int8"`, "auto" is fp32 and bf16/fp16 are refused: PyTorch's dynamic int8 Linear
    layers take fp32 activations only (under bf16 autocast they fail with a dtype error)."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if quantize == "int8":
        if precision not in ("auto", "fp32"):
            raise ValueError(f"--precision {precision} with --quantize int8: int8 Linear layers run on fp32 "
                             "activations; use --precision fp32 (or auto)")
        return "fp32"
    if device.type == "cuda":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if precision == "auto" else precision
    if precision == "fp16":
        raise ValueError("fp16 autocast is for GPUs; on a CPU use bf16 or fp32")
    if precision == "auto":
        return "bf16" if cpu_has_bf16() else "fp32"
    if precision == "bf16" and not cpu_has_bf16():
        log.warning("this CPU has no native bf16 (AVX512-BF16/AMX): bf16 is emulated and far slower than fp32")
    return precision


def autocast_for(precision: str, device: torch.device | str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the autocast context for a resolved `precision` ("fp32": none at all)."""
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def check_device(device: str) -> torch.device:
    """`device` as a torch.device this machine has ("cpu", "cuda", "cuda:N", "mps"); a ValueError
    naming what is wrong otherwise (an unknown name, CUDA without a GPU, a GPU index past the last)."""
    try:
        found = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {device!r}: not a device; use cpu, cuda or cuda:N") from None
    if found.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if found.index is not None and found.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif found.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif found.type != "cpu":
        raise ValueError(f"--device {device}: mmkit runs on cpu, cuda or mps")
    return found


def check_multi_gpu(device: torch.device) -> None:
    """Refuse --multi-gpu (nn.DataParallel over every visible GPU, from cuda:0) on any other device."""
    if device.type != "cuda" or device.index not in (None, 0):
        raise ValueError("--multi-gpu needs --device cuda (it uses every visible GPU, from cuda:0)")
