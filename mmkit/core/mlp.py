"""Feed-forward layers: the two-layer MLP of "Attention Is All You Need" / ViT, and SwiGLU
(Shazeer, 2020). Parameter names follow timm (`fc1`, `fc2`; `fc1_g`, `fc1_x` for SwiGLU).
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import Tensor, nn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP checkpoints were trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


# Activations by name, for model constructors whose arguments must stay JSON (config.json):
# the names timm and open_clip configs use.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_tanh": partial(nn.GELU, approximate="tanh"),
    "quick_gelu": QuickGELU,
    "silu": nn.SiLU,
    "relu": nn.ReLU,
}


def activation(name: str) -> Callable[[], nn.Module]:
    """The activation layer class (factory) called `name` in `ACTIVATIONS`."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}") from None


def _drop_pair(drop: float | tuple[float, float]) -> tuple[float, float]:
    """timm's `drop` argument: one rate for both dropouts, or (after the activation, after fc2)."""
    return (drop, drop) if isinstance(drop, (int, float)) else (drop[0], drop[1])


class Mlp(nn.Module):
    """fc1 -> activation -> dropout -> fc2 -> dropout. `drop` is both rates, or a pair (after the activation,
    after fc2) as in timm's Mlp: GPT-2's and BERT's feed-forward drop after fc2 only, (0.0, p)."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        act_layer: type[nn.Module] = nn.GELU,
        bias: bool = True,
        drop: float | tuple[float, float] = 0.0,
    ) -> None:
        super().__init__()
        hidden_drop, out_drop = _drop_pair(drop)
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(hidden_drop)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.drop2 = nn.Dropout(out_drop)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.fc1(x))
        if not self.training:  # Dropout is the identity in eval: no module calls in a decoding step
            return self.fc2(x)
        return self.drop2(self.fc2(self.drop1(x)))


class SwiGLU(nn.Module):
    """fc2(silu(fc1_g x) * fc1_x x). `act_layer` is accepted so blocks can swap MLPs freely."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        act_layer: type[nn.Module] = nn.SiLU,
        bias: bool = True,
        drop: float | tuple[float, float] = 0.0,
    ) -> None:
        super().__init__()
        hidden_drop, out_drop = _drop_pair(drop)
        self.fc1_g = nn.Linear(dim, hidden_dim, bias=bias)
        self.fc1_x = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(hidden_drop)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.drop2 = nn.Dropout(out_drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1_g(x)) * self.fc1_x(x))))
