"""Native checkpoints: a directory with `config.json` (constructor arguments + metadata) and
`model.safetensors`. Nothing on the load path unpickles: `.pt/.pth/.bin/.ckpt` files go
through `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1

T = TypeVar("T", bound="PretrainedMixin")


class WeightsError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the offending keys."""


def summarise_keys(keys: list[str], limit: int = 12) -> str:
    """The first `limit` keys, comma-separated, and how many more (for one-line error messages)."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read tensors from a safetensors file or a torch file, never unpickling arbitrary objects."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decoder failure becomes one clear message
        raise WeightsError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return dict(obj)


def load_state_dict_strict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """`model.load_state_dict(strict=True)` with one readable error naming `source`."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {summarise_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {summarise_keys(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {summarise_keys(mismatched)}")
    if problems:
        raise WeightsError(f"{source}: cannot load into {type(model).__name__}; " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


class PretrainedMixin:
    """`save_pretrained(dir)` / `from_pretrained(dir)` for models that keep their constructor
    arguments in `self.config` (a JSON-serialisable dict)."""

    config: dict[str, Any]
    architecture: str | None = None  # name written to config.json; default: the class name

    @classmethod
    def architecture_name(cls) -> str:
        return cls.architecture or cls.__name__

    def save_pretrained(self, directory: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
        directory = Path(directory).expanduser()
        directory.mkdir(parents=True, exist_ok=True)
        assert isinstance(self, nn.Module)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME))
        doc = {"format_version": FORMAT_VERSION, "architecture": self.architecture_name(),
               "config": self.config, "metadata": dict(metadata or {})}
        (directory / CONFIG_NAME).write_text(json.dumps(doc, indent=2) + "\n")
        return directory

    @classmethod
    def read_config(cls, directory: str | Path) -> dict[str, Any]:
        """The parsed config.json of a native checkpoint directory, checked for this class."""
        path = Path(directory).expanduser() / CONFIG_NAME
        if not path.is_file():
            raise WeightsError(f"{path.parent}: not an mmkit checkpoint directory (no {CONFIG_NAME})")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise WeightsError(f"{path}: invalid JSON ({e})") from None
        if doc.get("architecture") != cls.architecture_name():
            raise WeightsError(f"{path}: holds a {doc.get('architecture')!r} checkpoint, not {cls.architecture_name()}")
        return doc

    @classmethod
    def from_pretrained(cls: type[T], directory: str | Path, **overrides: Any) -> T:
        """Build from config.json (with `overrides` of constructor arguments) and load weights."""
        doc = cls.read_config(directory)
        model = cls(**{**doc["config"], **overrides})
        state = read_state_dict(Path(directory).expanduser() / WEIGHTS_NAME)
        state = model.adapt_state_dict(state, doc["config"])  # type: ignore[attr-defined]
        load_state_dict_strict(model, state, str(Path(directory) / WEIGHTS_NAME))  # type: ignore[arg-type]
        return model

    def adapt_state_dict(self, state: dict[str, Tensor], saved_config: dict[str, Any]) -> dict[str, Tensor]:
        """Hook for checkpoint-compatible overrides (e.g. a new image size); identity by default."""
        return state
