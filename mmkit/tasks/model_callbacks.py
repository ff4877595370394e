"""Callbacks that change how a task's model runs, not what it computes, switched on from any recipe's command line:

    mmkit fit --config configs/vit_digits.yaml --trainer.callbacks+=mmkit.tasks.GradCheckpointing
    mmkit fit --config configs/vit_digits.yaml --trainer.callbacks+=mmkit.tasks.CompileModel

`GradCheckpointing` trades compute for activation memory (`mmkit.core.execution`); `CompileModel` runs the
model's forward through `torch.compile`. Both act on the task's `model` once the task has set it up (a task may
rebuild it for the data's vocabulary in `setup`), and both leave its parameter names as they were, so checkpoints,
`--ckpt_path` resumes and exports read the same with or without them.
"""
from __future__ import annotations

import logging
from typing import Literal
from weakref import WeakSet

import pytorch_lightning as pl
from torch import nn

from mmkit.core.execution import compile_stacks, set_grad_checkpointing

log = logging.getLogger(__name__)
BACKENDS = ("inductor", "aot_eager", "cudagraphs")  # those that run autograd through AOTAutograd


def task_model(pl_module: pl.LightningModule) -> nn.Module:
    """The plain model a task wraps (its `model` attribute, as every mmkit task has)."""
    model = getattr(pl_module, "model", None)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{type(pl_module).__name__} has no `model` module for this callback to act on")
    return model


class GradCheckpointing(pl.Callback):
    """Activation checkpointing in every block stack of the task's model during fit: the forward pass keeps each
    block's input only and the backward pass recomputes the block, so activation memory no longer grows with
    depth, for about one more forward pass of compute. Gradients are those of the plain model (dropout's masks
    are redrawn from the same RNG state). Evaluation, prediction and decoding are unaffected."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = task_model(pl_module)
        n = set_grad_checkpointing(model)
        log.info("gradient checkpointing on in %d block stack%s of %s", n, "" if n == 1 else "s",
                 type(model).__name__)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        set_grad_checkpointing(task_model(pl_module), False)  # the trained model is handed on as it came


class CompileModel(pl.Callback):
    """`torch.compile` on the block stacks of the task's model, in place (the parameter names stay), before the
    first fit, validate, test or predict step: every model method that runs them (forward, encode, classify)
    runs compiled. The first steps take longer while the graphs compile (tens of seconds on a CPU, where inductor
    needs a C++ compiler); then fused kernels run, which pays most on a GPU. Decoding with a KV cache (the
    evaluation of Whisper and translation) stays eager: the cache changes shape at every step.

    Args:
        mode: torch.compile's mode: "default", "reduce-overhead" (CUDA graphs), "max-autotune", or
            "max-autotune-no-cudagraphs".
        backend: "inductor" (code generation), "aot_eager" (forward and backward traced, no code generated: a
            quick check that the model compiles) or "cudagraphs". Dynamo's "eager" debug backend is left out: with
            GradCheckpointing it redraws dropout's masks in the backward pass, so the gradients are wrong.
        fullgraph: fail on a graph break instead of running that part eagerly (mmkit's models compile whole).
        dynamic: compile for varying shapes from the start (None: after the first shape change).
    """

    def __init__(self, mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
                 = "default", backend: Literal["inductor", "aot_eager", "cudagraphs"] = "inductor",
                 fullgraph: bool = False, dynamic: bool | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.options = dict(mode=None if mode == "default" else mode, backend=backend, fullgraph=fullgraph,
                            dynamic=dynamic)
        if backend != "inductor":
            self.options.pop("mode")  # only inductor takes a mode
        self._compiled: WeakSet[nn.Module] = WeakSet()

    def _compile(self, pl_module: pl.LightningModule) -> None:
        model = task_model(pl_module)
        if model in self._compiled:
            return
        n = compile_stacks(model, **self.options)
        self._compiled.add(model)
        log.info("torch.compile on %d block stack%s of %s (%s)", n, "" if n == 1 else "s", type(model).__name__,
                 ", ".join(f"{k}={v}" for k, v in self.options.items() if v is not None))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._compile(pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._compile(pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._compile(pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._compile(pl_module)
