"""int8 inference for every `nn.Linear` of a module (`Int8Linear`): int8 weights with one scale per output
channel, and int8 activations with one scale per row (per token), chosen at run time (dynamic quantization:
Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
2018; per-token activation scales as in Yao et al., "ZeroQuant", 2022). One function for any nn.Module, used
by `mmkit transcribe`, `label`, `predict`, `embed`, `translate` and `generate-text`; int8 paths are measured
against fp32, never assumed.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatchcase
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from mmkit.inference.packed import PackedLinear, pack_linear, tied_decoders
from mmkit.inference.precision import autocast_for, cpu_has_bf16, resolve_precision
from mmkit.weights.native import skip_init

log = logging.getLogger(__name__)

QUANTIZATIONS = ("none", "int8")


def int8_available() -> bool:
    """A quantized engine that runs int8 linear layers on this CPU (x86/fbgemm or onednn; qnnpack on ARM)."""
    return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm", "onednn", "qnnpack"))


def quantize_linear_int8(module: nn.Module, keep_fp32: Sequence[str] = ()) -> nn.Module:
    """`module` (in eval mode, on the CPU) with every `nn.Linear` replaced by an `Int8Linear`, in place,
    the tied vocabulary projection of a token decoder included (`untie_head`): in a decoding step that
    projection is most of the work, and fbgemm's int8 kernel runs it 3-10x faster than fp32 BLAS at 1-64
    rows (58,101 x 512: 9.1 -> 0.8 ms at one row, 45 -> 13 ms at 64).
    Embeddings, convolutions and norms stay fp32, and so do the Linear layers whose qualified names
    match a `keep_fp32` pattern (fnmatch, e.g. "encoder.blocks.*.mlp.fc2"): each row of activations gets
    one 7-bit scale, which rows with a few large values (a GELU's output) lose most.

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
    # dynamic quantization (nn.MultiheadAttention's NonDynamicallyQuantizableLinear) stay as they are;
    # fp32 layers packed for decoding (`packed.PackedLinear`: fp32 chosen first) are made int8 too
    names = [name for name, m in module.named_modules()
             if (type(m) is nn.Linear or isinstance(m, PackedLinear))
             and not any(fnmatchcase(name, p) for p in keep_fp32)]
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


# The activations' quantization grid. Int8Linear divides every row by its largest |value|, so each row lies in
# [-1, 1], and quantizes the whole call with one fixed scale and zero point: 1/63 and 63, 7 bits (0..126, as
# fbgemm's `reduce_range`, which keeps AVX2's 16-bit pair sums from saturating), a grid that holds 0 exactly and
# -1 and 1 to float rounding (the zeros of a ReLU/GELU and a row's largest value lose nothing). fbgemm takes a
# given scale in `linear_with_input_q_dq_qweight_dq_output_fp32`. Where a quantized engine lacks that op, the
# dynamic kernel (`linear_dynamic`, which picks its scale from the input's min and max) gets the same grid from
# one appended anchor row holding -1 and 64/63: the same values (tested), one copy and ~3 us per call more.
_SCALE, _ZERO_POINT = 1 / 63, 63
_ANCHOR_HIGH = 64 / 63


class Int8Linear(nn.Module):
    """An `nn.Linear` for inference with int8 weights and int8 activations, on PyTorch's fbgemm int8 GEMM
    (the one `quantize_dynamic`'s layers run), given a fixed activation grid.

    - Weights: symmetric int8, one scale per output channel (max |w| / 127.5), as `quantize_dynamic` with
      `per_channel_dynamic_qconfig`.
    - Activations: one scale per row (each token of each sequence), not one per call. A row's output
      therefore depends on that row alone: the same whichever other rows (images, windows, sequences,
      beams) share the batch, so batched results equal one-at-a-time ones, as in fp32. With one scale per
      call, 18 of 40 transcripts of Whisper tiny.en changed between batch 8 and batch 1. Per-row scales
      are also more accurate: a row of small values no longer shares the scale of the batch's largest.
    - The bias is added in fp32 after the int8 product.

    Costs three passes per call beside the kernel (row maxima, scaling in, rescaling out). Against one scale
    per call, in interleaved runs: Whisper tiny.en's encoder over 8 x 500 positions 3-9% slower, a call at a
    decoding step's few rows ~8 us more, greedy decoding of GPT-2 small and of the fortunes recipe's GPT at
    batch 1 6-7% slower, GPT-2 small at batch 16 10%.
    """

    inference_only = True  # its weights are not parameters: `save_pretrained` refuses a model holding one

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if self.in_features < 2:
            raise ValueError("Int8Linear needs at least 2 input features")
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127.5).clamp_min(torch.finfo(torch.float32).eps).double()
        zero = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors announce their move to torchao
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(weight, scale, zero, 0, torch.qint8)
        self._packed = torch.ops.quantized.linear_prepack(qweight, None)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone(),
                             persistent=False)
        self.fixed_grid = _has_fixed_grid_kernel(self._packed, self.in_features)
        anchor = torch.zeros(1, self.in_features)  # the fallback's grid-fixing row (see _SCALE)
        anchor[0, 0], anchor[0, 1] = -1.0, _ANCHOR_HIGH
        self.register_buffer("anchor", anchor, persistent=False)
        self.train(linear.training)

    def weight(self) -> Tensor:
        """The int8 weight (a per-channel quantized tensor), as `quantize_dynamic`'s layers give it."""
        return torch.ops.quantized.linear_unpack(self._packed)[0]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x: Tensor) -> Tensor:
        """fp32 arithmetic; the result in `x`'s dtype (a model cast to bf16 or fp16 keeps its dtype: an fp32
        result met a bf16 LayerNorm with "mixed dtype")."""
        lead, dtype = x.shape[:-1], x.dtype
        x = x.reshape(-1, self.in_features).float()
        n, tiny = len(x), torch.finfo(torch.float32).tiny  # tiny: an all-zero row stays zero
        if n <= 64:  # a decoding step's few rows: the fewest calls
            peak = x.abs().amax(dim=-1, keepdim=True)
        else:  # the same values, without an |x| copy of a large block
            peak = torch.maximum(x.amax(dim=-1, keepdim=True), x.amin(dim=-1, keepdim=True).neg_())
        scaled = x / peak.clamp_min_(tiny)
        if self.fixed_grid:
            y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(scaled, _SCALE, _ZERO_POINT,
                                                                                  self._packed)
        else:
            y = torch.ops.quantized.linear_dynamic(torch.cat((scaled, self.anchor)), self._packed, True)[:n]
        if self.bias is None:
            y = y.mul_(peak)
        else:
            y = torch.addcmul(self.bias, y, peak, out=y)
        return y.reshape(*lead, self.out_features).to(dtype)


def _has_fixed_grid_kernel(packed: torch.ScriptObject, in_features: int) -> bool:
    """Whether this engine's packed weights take a given activation scale (fbgemm/x86 do)."""
    try:
        torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
            torch.zeros(1, in_features), _SCALE, _ZERO_POINT, packed)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def has_int8_layers(module: nn.Module) -> bool:
    """Whether `quantize_linear_int8` made any of `module`'s layers int8 (such a model is not saved)."""
    return any(isinstance(m, Int8Linear) for m in module.modules())


def check_exportable(module: nn.Module, error: type[Exception] = ValueError) -> None:
    """An `error` of one line for a model with int8 layers, which the exporters refuse: int8 is applied at load, so
    the fp32 model is the one to export."""
    if has_int8_layers(module):
        raise error("an int8 model is not exported: export the fp32 model (int8 is applied at load)")


def int8_linear(linear: nn.Linear) -> nn.Module:
    """The `Int8Linear` copy of one `nn.Linear` (in_features >= 2; narrower layers stay as they are)."""
    return Int8Linear(linear) if linear.in_features >= 2 else linear


def untie_head(module: nn.Module) -> int:
    """Give every token decoder in `module` whose output projection is tied to its embedding
    (`head is None`, `core.heads.output_logits`) an inference-time `nn.Linear` head holding a copy
    of the embedding's weight, so the quantizer can make it int8; the embedding keeps its fp32 rows.
    Returns how many heads were untied."""
    tied = tied_decoders(module)
    for m in tied:
        embed = m.tok_embed
        with skip_init():  # no random fill of a (vocab, dim) weight replaced at once (0.14 s, Whisper's)
            head = nn.Linear(embed.embedding_dim, embed.num_embeddings, bias=False)
        head.weight = nn.Parameter(embed.weight.detach().clone(), requires_grad=False)
        m.head = head
    return len(tied)


def apply_quantization(module: nn.Module, quantize: str, keep_fp32: Sequence[str] = ()) -> nn.Module:
    """`quantize` = "none" (the module as is) or "int8" (`quantize_linear_int8`, `keep_fp32` name
    patterns left fp32)."""
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"--quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    return quantize_linear_int8(module, keep_fp32) if quantize == "int8" else module


def describe(precision: str, quantize: str, device: torch.device | str = "cpu", keep_fp32: Sequence[str] = ()) -> str:
    """One line for the log: which arithmetic this run uses (`precision` already resolved)."""
    weights = "int8 Linear weights and per-row activations" if quantize == "int8" else "fp32 weights"
    if quantize == "int8" and keep_fp32:
        weights += f" except {', '.join(keep_fp32)}"
    compute = {"fp32": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[precision]
    if precision == "bf16" and torch.device(device).type == "cpu":
        compute += " (native)" if cpu_has_bf16() else " (emulated: slow)"
    return f"{weights}, {compute}"


def prepare_arithmetic(model: nn.Module, precision: str, quantize: str, what: str, keep_fp32: Sequence[str] = (),
                       pack: bool = False) -> tuple[str, Callable[[], contextlib.AbstractContextManager]]:
    """What an inference tool does with its `--precision` and `--quantize`: resolve the precision on
    the model's device (`resolve_precision`: a ValueError, e.g. bf16 with int8, before anything
    changes), make `model`'s Linear layers int8 in place if asked, log the arithmetic once (`what`
    names the tool; the exact default stays quiet) and return the resolved precision and the
    factory of its autocast context. A tool that decodes passes `pack=True`: where the arithmetic is fp32
    or bf16 on the CPU, its decoding steps then run on oneDNN's packed weights (`packed.pack_linear`: the
    same arithmetic, 1.3-2.6x faster Linear layers at a step's few rows in fp32)."""
    device = next(model.parameters()).device
    resolved = resolve_precision(precision, device, quantize)
    apply_quantization(model, quantize, keep_fp32)
    if pack and quantize == "none" and device.type == "cpu" and resolved in ("fp32", "bf16"):
        pack_linear(model)
    if (precision, quantize) != ("fp32", "none"):
        log.info("%s: %s", what, describe(resolved, quantize, device, keep_fp32))
    return resolved, autocast_for(resolved, device)
