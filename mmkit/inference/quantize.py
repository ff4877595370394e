"""int8 weights for inference: PyTorch dynamic quantization (`torch.ao.quantization.quantize_dynamic`,
Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", 2018): every `nn.Linear` keeps int8 weights (per output channel) and quantizes its
activations per batch at run time. One function for any nn.Module, used by `mmkit transcribe`,
`mmkit label` and `mmkit predict`; int8 paths are measured against fp32, never assumed.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatchcase
from typing import Callable, Sequence

import torch
from torch import nn

from mmkit.inference.precision import autocast_for, cpu_has_bf16, resolve_precision
from mmkit.weights.native import skip_init

log = logging.getLogger(__name__)

QUANTIZATIONS = ("none", "int8")


def int8_available() -> bool:
    """A quantized engine that runs int8 linear layers on this CPU (x86/fbgemm or onednn; qnnpack on ARM)."""
    return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm", "onednn", "qnnpack"))


def quantize_linear_int8(module: nn.Module, keep_fp32: Sequence[str] = ()) -> nn.Module:
    """`module` (in eval mode, on the CPU) with every `nn.Linear` replaced by a dynamically quantized
    int8 Linear, in place, the tied vocabulary projection of a token decoder included (`untie_head`):
    in a decoding step that projection is most of the work, and fbgemm's int8 kernel runs it 3-10x
    faster than fp32 BLAS at 1-64 rows (58,101 x 512: 9.1 -> 0.8 ms at one row, 45 -> 13 ms at 64).
    Embeddings, convolutions and norms stay fp32, and so do the Linear layers whose qualified names
    match a `keep_fp32` pattern (fnmatch, e.g. "encoder.blocks.*.mlp.fc2"): the activations get one
    scale per call (per tensor, 7 bits on x86), which inputs with outliers (a GELU's output) lose.

    Raises:
        ValueError: the module is not on the CPU (PyTorch's int8 kernels are CPU kernels), or this
            build has no quantized engine.
    """
    devices = {p.device.type for p in module.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"--quantize int8 runs on the CPU; the model is on {', '.join(sorted(devices))}")
    if not int8_available():
        raise ValueError("--quantize int8: this PyTorch build has no quantized engine for this CPU")
    untie_head(module)
    module.eval()
    # exact type, as quantize_dynamic's own {nn.Linear: ...} matching: subclasses that refuse
    # dynamic quantization (nn.MultiheadAttention's NonDynamicallyQuantizableLinear) stay as they are
    names = [name for name, m in module.named_modules()
             if type(m) is nn.Linear and not any(fnmatchcase(name, p) for p in keep_fp32)]
    # Layers are independent and their ops release the GIL: quantize them on torch's threads (ViT-B/32's
    # 98 Linear layers: quantize_dynamic took 1.75 s idle, before the first image; this 0.66 s)
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        with ThreadPoolExecutor(max(1, min(8, torch.get_num_threads()))) as pool:
            quantized = list(pool.map(lambda name: int8_linear(module.get_submodule(name)), names))
    for name, q in zip(names, quantized):
        parent, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, leaf, q)
    log.debug("int8 weights for %d Linear layers of %s", len(names), type(module).__name__)
    return module


def int8_linear(linear: nn.Linear) -> nn.Module:
    """The dynamically quantized int8 copy of one `nn.Linear`, the same module (bit for bit) that
    `torch.ao.quantization.quantize_dynamic` makes with `per_channel_dynamic_qconfig`: int8 weights with one
    symmetric scale per output channel (max |w| / 127.5, zero point 0) and fp32 bias. Built directly, which
    is ~30% cheaper: no observer module, and no full-size zero weight packed by the constructor first."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    weight = linear.weight.detach().float()
    scale = (weight.abs().amax(dim=1) / 127.5).clamp_min(torch.finfo(torch.float32).eps).double()
    zero = torch.zeros(weight.shape[0], dtype=torch.long)
    qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
    # constructed 1 x 1 (its constructor packs an all-zero weight of the given shape), then given the real one
    q = DynamicInt8Linear(1, 1, bias_=linear.bias is not None, dtype=torch.qint8)
    q.in_features, q.out_features = linear.in_features, linear.out_features
    q.set_weight_bias(qweight, None if linear.bias is None else linear.bias.detach().float())
    return q.train(linear.training)


def untie_head(module: nn.Module) -> int:
    """Give every token decoder in `module` whose output projection is tied to its embedding
    (`head is None`, `core.heads.output_logits`) an inference-time `nn.Linear` head holding a copy
    of the embedding's weight, so the quantizer can make it int8; the embedding keeps its fp32 rows.
    Returns how many heads were untied."""
    untied = 0
    for m in list(module.modules()):
        embed = getattr(m, "tok_embed", None)
        if "head" in vars(m) and m.head is None and isinstance(embed, nn.Embedding):
            with skip_init():  # no random fill of a (vocab, dim) weight replaced at once (0.14 s, Whisper's)
                head = nn.Linear(embed.embedding_dim, embed.num_embeddings, bias=False)
            head.weight = nn.Parameter(embed.weight.detach().clone(), requires_grad=False)
            m.head, untied = head, untied + 1
    return untied


def apply_quantization(module: nn.Module, quantize: str, keep_fp32: Sequence[str] = ()) -> nn.Module:
    """`quantize` = "none" (the module as is) or "int8" (`quantize_linear_int8`, `keep_fp32` name
    patterns left fp32)."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"--quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    return quantize_linear_int8(module, keep_fp32) if quantize == "int8" else module


def describe(precision: str, quantize: str, device: torch.device | str = "cpu", keep_fp32: Sequence[str] = ()) -> str:
    """One line for the log: which arithmetic this run uses (`precision` already resolved)."""
    weights = "int8 Linear weights (dynamic activations)" if quantize == "int8" else "fp32 weights"
    if quantize == "int8" and keep_fp32:
        weights += f" except {', '.join(keep_fp32)}"
    compute = {"fp32": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[precision]
    if precision == "bf16" and torch.device(device).type == "cpu":
        compute += " (native)" if cpu_has_bf16() else " (emulated: slow)"
    return f"{weights}, {compute}"


def prepare_arithmetic(model: nn.Module, precision: str, quantize: str, what: str,
                       keep_fp32: Sequence[str] = ()) -> tuple[str, Callable[[], contextlib.AbstractContextManager]]:
    """What an inference tool does with its `--precision` and `--quantize`: resolve the precision on
    the model's device (`resolve_precision`: a ValueError, e.g. bf16 with int8, before anything
    changes), make `model`'s Linear layers int8 in place if asked, log the arithmetic once (`what`
    names the tool; the exact default stays quiet) and return the resolved precision and the
    factory of its autocast context."""
    device = next(model.parameters()).device
    resolved = resolve_precision(precision, device, quantize)
    apply_quantization(model, quantize, keep_fp32)
    if (precision, quantize) != ("fp32", "none"):
        log.info("%s: %s", what, describe(resolved, quantize, device, keep_fp32))
    return resolved, autocast_for(resolved, device)
