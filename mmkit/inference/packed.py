"""fp32 and bf16 inference on oneDNN's blocked weight layout (`PackedLinear`, `PackedProjection`): the same
arithmetic as `nn.Linear`, faster for the few rows of a decoding step.

At a decoding step each Linear layer multiplies a few rows by its whole weight, so the step is bound by how fast
the weights stream from memory. PyTorch's CPU `F.linear` (MKL's GEMM on a plain row-major weight) streams them at
~11 GB/s on the project's 2-core AMD EPYC, a quarter of what the CPU reads. oneDNN's inner-product kernel on a
copy of the weight reordered once into its blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, the op
inductor's freezing pass packs weights with; `_linear_pointwise` multiplies) streams them 1.3-2.6x faster: GPT-2
small's 48 block matrices 29 -> 18 ms at one row, 51 -> 23 ms at 16 rows, its 50,257 x 768 vocabulary projection
14 -> 6 ms; 1.3-1.5x at 64-512 rows, 1.1-1.3x with the CPU capped to AVX2. Over the ~1,500 rows of an encoder's
window the two are within ~15% either way, so calls of more than `MAX_ROWS` rows stay on `F.linear`, and so do
weights of fewer than `min_elements()` values, where oneDNN's fixed cost per call outweighs the faster read.

Under a bf16 autocast, which casts the fp32 weight to bf16 at every call (GPT-2 small's blocks: 65 ms a step), a
bf16 packed copy gives the same bf16 values in 15 ms, where oneDNN packs bf16 (the native-bf16 CPUs).

The layer stays an `nn.Linear` (parameters, state dict, copies, `.to`, gradients all as before): a packed copy
is made at the first call that uses it and remade when the weight changes (its storage or version counter: an
in-place edit, an optimizer step, `load_state_dict`); a call with gradients, off the CPU, in another dtype, under
another autocast or inside a compiled graph computes as `nn.Linear` does. The cost is the copy's memory, for the
layers that decode only (an encoder fed long windows never makes one). In fp32 the sums run in another order, so
results differ from `F.linear`'s by float rounding (~1e-6), as with another thread count. Installed by the tools
that decode (generate-text, translate, transcribe, the text-to-image generator) where their arithmetic is fp32 or
bf16 on the CPU (`quantize.prepare_arithmetic`).
"""
from __future__ import annotations

import functools
import logging
import os
from copy import deepcopy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

MAX_ROWS = 512  # packed at up to this many rows (1.2-1.5x at 256-512 on both kinds of CPU), F.linear beyond
# A oneDNN call costs ~35 us where F.linear's costs ~15, so the recipes' small layers stay plain (576 x 192 at one
# row, alone: 59-87 us packed against 24-28). From 512 x 512 up packing gains within a model: opus-mt's shape with
# every layer packed decoded at 1.80 / 1.94 / 2.54 / 1.68x transformers (greedy b1, b16, beam 4 b1, b16), with only
# those of 2**20 weights or more 1.60 / 1.80 / 2.11 / 1.61x (two runs each). MMKIT_PACKED_MIN_ELEMENTS sets another
# bound (the test suite's 0 packs its tiny models' layers too).
_DEFAULT_MIN_ELEMENTS = 1 << 18


def min_elements() -> int:
    """The fewest weight values a packed layer has (`MMKIT_PACKED_MIN_ELEMENTS`, else 2**18)."""
    value = os.environ.get("MMKIT_PACKED_MIN_ELEMENTS", "")
    return int(value) if value.isdigit() else _DEFAULT_MIN_ELEMENTS


@functools.cache
def packing_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this PyTorch build packs and multiplies oneDNN weights of `dtype` on this CPU (fp32: x86 builds with
    mkldnn; bf16: CPUs with AVX-512 or AVX-NE-CONVERT, which the native-bf16 ones have)."""
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(torch.ones(2, 2, dtype=dtype))
        y = torch.ops.mkldnn._linear_pointwise(torch.ones(1, 2, dtype=dtype), packed, None, "none", [], "")
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return bool(torch.equal(y.float(), torch.full((1, 2), 2.0)))


def _source(weight: Tensor) -> tuple[int, int]:
    """What identifies the weight's current values: its storage and version counter (-1 for an inference-mode
    tensor, which has none and cannot be changed in place outside inference mode)."""
    try:
        return weight.data_ptr(), weight._version
    except RuntimeError:
        return weight.data_ptr(), -1


class _PackedCopy:
    """The packed copies of one fp32 weight (one per dtype used), each made when first usable and remade when the
    weight has changed."""

    def __init__(self) -> None:
        self.copies: dict[torch.dtype, tuple[Tensor, tuple[int, int]]] = {}  # dtype -> (packed, the weight's source)

    def current(self, x: Tensor, weight: Tensor, dtype: torch.dtype = torch.float32) -> Tensor | None:
        """The weight packed in `dtype` for multiplying `x` (fp32 or `dtype`, on the CPU, 1..MAX_ROWS rows, no
        gradient wanted), else None."""
        if (x.dtype not in (torch.float32, dtype) or weight.dtype != torch.float32 or x.device.type != "cpu"
                or weight.device.type != "cpu" or not 0 < x.numel() <= MAX_ROWS * x.shape[-1]
                or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
            return None
        source, held = _source(weight), self.copies.get(dtype)
        if held is None or held[1] != source:
            held = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype).contiguous()), source
            self.copies[dtype] = held
        return held[0]

    def __getstate__(self) -> dict:  # an opaque oneDNN tensor has no storage to copy: a copy repacks when used
        return {"copies": {}}


def _multiply(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


class PackedLinear(nn.Linear):
    """An `nn.Linear` (the same parameters, shared with the layer it was made from) whose CPU inference at up to
    `MAX_ROWS` rows, in fp32 or under a bf16 autocast, runs on a packed copy of its weight (see the module's
    docstring)."""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)  # no fresh parameters: the layer's own
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.packed_copy = _PackedCopy()
        self.train(linear.training)

    def forward(self, x: Tensor) -> Tensor:
        dtype = None  # the arithmetic: fp32, or bf16 where a bf16 autocast computes this layer (as F.linear would)
        if x.device.type == "cpu" and not torch.compiler.is_compiling():  # a compiled graph: F.linear, traceable
            if not torch.is_autocast_enabled("cpu"):
                dtype = torch.float32
            elif torch.get_autocast_dtype("cpu") == torch.bfloat16 and packing_available(torch.bfloat16):
                dtype = torch.bfloat16
        packed = None if dtype is None else self.packed_copy.current(x, self.weight, dtype)
        bias = self.bias
        if packed is None or (bias is not None and (bias.dtype != torch.float32 or bias.device.type != "cpu")):
            return F.linear(x, self.weight, bias)
        return _multiply(x.to(dtype), packed, None if bias is None else bias.detach().to(dtype))


class PackedProjection(_PackedCopy):
    """The packed copy of a tied embedding's weight for the vocabulary projection: `core.heads.output_logits`
    reads it from the embedding's `packed_projection` attribute. Not a module: the embedding keeps its parameter,
    the model's state dict and `head is None` stay as they were. `None` where the copy does not apply (the caller
    computes as before); under autocast too, since that projection runs in fp32 without gradients there."""

    def __call__(self, x: Tensor, weight: Tensor) -> Tensor | None:
        if torch.compiler.is_compiling():
            return None
        if x.dtype != torch.float32:  # a bf16 autocast's hidden states: the projection runs in fp32
            x = x.float()
        packed = self.current(x, weight)
        return None if packed is None else _multiply(x, packed, None)


def tied_decoders(module: nn.Module) -> list[nn.Module]:
    """The token decoders in `module` whose vocabulary projection is tied to their `tok_embed` (`head is None`,
    `core.heads.output_logits`)."""
    return [m for m in module.modules() if "head" in vars(m) and m.head is None
            and isinstance(getattr(m, "tok_embed", None), nn.Embedding)]


def has_packed_layers(module: nn.Module) -> bool:
    return any(isinstance(m, PackedLinear) for m in module.modules())


def pack_linear(module: nn.Module) -> int:
    """Make, in place, every fp32 `nn.Linear` of `module` (exact type, as the int8 quantizer) of at least
    `min_elements()` weights a `PackedLinear` on the same parameters, and give every token decoder's tied vocabulary
    projection (`head is None`) of that size a `PackedProjection`. Nothing is done where this PyTorch build cannot
    pack. Returns how many layers were made packable, projections included; the copies are made when first used."""
    if not packing_available():
        return 0
    bound = min_elements()

    def packable(weight: Tensor) -> bool:
        return weight.dtype == torch.float32 and weight.numel() >= bound

    tied = [m.tok_embed for m in tied_decoders(module) if packable(m.tok_embed.weight)]
    for embed in tied:
        embed.packed_projection = PackedProjection()
    names = [name for name, m in module.named_modules() if type(m) is nn.Linear and packable(m.weight)]
    for name in names:
        parent, _, leaf = name.rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, leaf, PackedLinear(module.get_submodule(name)))
    log.debug("oneDNN-packed fp32 decoding for %d Linear layers and %d projections of %s", len(names), len(tied),
              type(module).__name__)
    return len(names) + len(tied)


def packed_copy(module: nn.Module) -> nn.Module:
    """A deep copy of `module` with `pack_linear` applied: mmkit's fp32/bf16 decoding as the tools run it, beside
    the original left as it was (the benches' int8 path quantizes another copy of that)."""
    copy = deepcopy(module)
    pack_linear(copy)
    return copy
