"""Read the parameters of a TorchScript archive (`torch.jit.save`; OpenAI's CLIP `.pt` files) as
data: the archive's pickle is read by an unpickler that admits tensors and inert stand-ins only,
so neither Python pickle code nor TorchScript runs (torch.jit.load would execute the archive).
"""
from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from mmkit.weights.native import WeightsError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Stands in for every TorchScript class of an archive: keeps its attributes, runs nothing."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(flat: Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> Tensor:
    return flat.as_strided(size, stride, offset)


class _ArchiveUnpickler(pickle.Unpickler):
    """Reads a TorchScript `data.pkl`: tensors and inert stand-ins only. Any other global (the
    way a pickle runs code) is refused, so a hostile archive fails instead of executing."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, source: str) -> None:
        super().__init__(io.BytesIO(archive.read(f"{prefix}data.pkl")))
        self.archive, self.prefix, self.source = archive, prefix, source
        self.storages: dict[str, Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return _ScriptObject
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise WeightsError(f"{self.source}: TorchScript archive needs {module}.{name}, which mmkit will not "
                           "load; convert it with torch.jit.load(path).state_dict() in a trusted environment")

    def persistent_load(self, pid: Any) -> Tensor:
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or storage_type not in _STORAGE_DTYPES:
            raise WeightsError(f"{self.source}: unsupported TorchScript storage {pid!r}")
        if key not in self.storages:
            dtype = _STORAGE_DTYPES[storage_type]
            raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            if flat.numel() != numel:
                raise WeightsError(f"{self.source}: storage {key} holds {flat.numel()} values, expected {numel}")
            self.storages[key] = flat
        return self.storages[key]


def _script_tensors(obj: _ScriptObject, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    # A scripted module's state is the dict of its attributes: parameters, buffers, submodules.
    state = {} if obj.state is None else obj.state
    if not isinstance(state, dict):
        raise WeightsError(f"TorchScript object at {prefix or '<root>'!r} has custom state; not a plain module")
    for name, value in state.items():
        if isinstance(value, Tensor):
            yield prefix + name, value
        elif isinstance(value, _ScriptObject):
            yield from _script_tensors(value, f"{prefix}{name}.")


def _torchscript_prefix(path: Path) -> str | None:
    """The archive folder ("name/") when `path` is a TorchScript zip, else None."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            parts = name.split("/")
            if len(parts) == 2 and parts[1] == "constants.pkl":  # torch's own TorchScript test
                return parts[0] + "/"
    return None


def is_torchscript_archive(path: str | Path) -> bool:
    """Whether `path` is a TorchScript zip archive (what `torch.jit.save` writes)."""
    return _torchscript_prefix(Path(path).expanduser()) is not None


def read_torchscript_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Parameters and buffers of a TorchScript archive (OpenAI's CLIP .pt files), read as data:
    neither Python pickle code nor the archive's TorchScript runs."""
    path = Path(path).expanduser()
    prefix = _torchscript_prefix(path)
    if prefix is None:
        raise WeightsError(f"{path}: not a TorchScript archive")
    with zipfile.ZipFile(path) as z:
        try:
            root = _ArchiveUnpickler(z, prefix, str(path)).load()
        except (pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError, RuntimeError) as e:
            if isinstance(e, WeightsError):
                raise
            raise WeightsError(f"{path}: unreadable TorchScript archive ({type(e).__name__}: {e})") from None
    if not isinstance(root, _ScriptObject):
        raise WeightsError(f"{path}: TorchScript archive does not hold a module")
    return dict(_script_tensors(root))
