"""How a model's block stacks execute, without changing what they compute.

Activation (gradient) checkpointing: a stack keeps only each block's input during the forward pass and recomputes
the block in the backward pass (Chen et al., 2016), trading ~one more forward for activation memory that no longer
grows with depth (timm's `set_grad_checkpointing`, Hugging Face's `gradient_checkpointing_enable`). Compilation:
`torch.compile` on the stacks, where nearly all the work is, from whichever model method calls them. A stack opts in
to both with a `grad_checkpointing` attribute and a `compile_stack(**options)` method."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def run_block(enabled: bool, block: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`block(*args, **kwargs)`, checkpointed when `enabled` and gradients are being recorded (inference and
    cached decoding never are). Non-reentrant checkpointing: keyword arguments, inputs without gradients and
    torch.compile work, and the RNG state is restored for the recomputation, so dropout draws the same mask."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False, **kwargs)
    return block(*args, **kwargs)


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> int:
    """Switch checkpointing on (or off) in every module of `model` that supports it; the number of such modules.

    Raises:
        ValueError: `model` has none (it would train exactly as before, with the memory it took before).
    """
    found = [m for m in model.modules() if hasattr(type(m), "grad_checkpointing")]
    if not found:
        raise ValueError(f"{type(model).__name__} has no block stack that supports gradient checkpointing")
    for m in found:
        m.grad_checkpointing = bool(enable)
    return len(found)


def compile_stacks(model: nn.Module, **options: Any) -> int:
    """`torch.compile(**options)` every block stack of `model` in place (`compile_stack`); the number compiled.
    With activation checkpointing, use a backend that runs autograd through AOTAutograd (inductor, the default,
    or aot_eager): Dynamo's "eager" debug backend redraws dropout's masks in the recomputation (PyTorch 2.14).

    Raises:
        ValueError: `model` has none.
    """
    found = [m for m in model.modules() if hasattr(m, "compile_stack")]
    if not found:
        raise ValueError(f"{type(model).__name__} has no block stack to compile")
    for m in found:
        m.compile_stack(**options)
    return len(found)
