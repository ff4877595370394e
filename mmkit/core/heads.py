"""Output heads shared by the token decoders (GPT, Whisper, Seq2Seq, T5, DalleBart)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Up to this many rows (the batch of one decoding step, beams included), a CPU BLAS computes
# x @ W.T faster as (W @ x.T).T: measured 1.2-3.7x for W of 30,522..58,101 x 128..768 at 4-32
# rows (the vocabulary projection dominates a decoding step), about even at 64, and F.linear
# wins beyond (0.4-0.9x at 256 rows).
_FEW_ROWS = 32


def tied_logits(x: Tensor, weight: Tensor) -> Tensor:
    """(..., dim) hidden states -> (..., vocab) logits against the (vocab, dim) token embedding,
    i.e. `F.linear(x, weight)`; the same numbers up to float summation order."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if x.device.type != "cpu" or not 0 < rows <= _FEW_ROWS:
        return F.linear(x, weight)
    flat = x.reshape(rows, x.shape[-1])
    return (weight @ flat.T).T.contiguous().view(*x.shape[:-1], weight.shape[0])


def output_logits(x: Tensor, embedding: nn.Embedding, head: nn.Module | None) -> Tensor:
    """The vocabulary projection of a token decoder: tied to `embedding` (a function of its weight:
    one parameter, one checkpoint key; safetensors refuses tensors sharing storage) while `head` is
    None, else `head(x)`: an untied output layer, or the int8 copy of the tied one that
    `mmkit.inference.quantize` installs for inference.

    Without gradients (decoding, validation) under a bf16/fp16 autocast, this projection runs in
    fp32: rounded to bf16's 8 bits, near-tied logits swap and greedy choices flip (Whisper tiny.en
    on the README's 40 espeak clips: WER 50.6% with bf16 logits, 48.1% with fp32 logits, the same
    as the all-fp32 path). It is one matrix product per step. With gradients, autocast decides.
    A decoding tool on the CPU may give `embedding` a `packed_projection` (`mmkit.inference.packed`): the same
    fp32 product on oneDNN's packed copy of the weight, used while that copy is current."""
    packed = getattr(embedding, "packed_projection", None) if head is None else None
    if packed is not None:
        logits = packed(x, embedding.weight)
        if logits is not None:
            return logits
    return projection_logits(x, embedding.weight, head)


def projection_logits(x: Tensor, weight: Tensor, layer: nn.Module | None = None) -> Tensor:
    """`x` projected on the (vocab, dim) `weight` (`tied_logits`), or through `layer` where one stands in for
    it (an untied head, its int8 copy); without gradients under a bf16/fp16 autocast, in fp32 (`output_logits`).
    Also for a decoder whose own output layer is an untied `nn.Linear` (DalleBart's `head`, by its weight)."""
    if not torch.is_grad_enabled() and torch.is_autocast_enabled(x.device.type) and weight.dtype == torch.float32:
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            return tied_logits(x, weight) if layer is None else layer(x)
    return tied_logits(x, weight) if layer is None else layer(x)
