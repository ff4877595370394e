"""Native checkpoints: a directory with `config.json` (constructor arguments + metadata) and
`model.safetensors`. Nothing on the load path unpickles: `.pt/.pth/.bin/.ckpt` files go
through `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import struct
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mmkit.core.execution import set_grad_checkpointing
from mmkit.errors import FULL, WriteFailed

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1

T = TypeVar("T", bound="PretrainedMixin")


_INIT_FILLS = ("normal_", "trunc_normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
               "xavier_normal_", "zeros_", "ones_", "constant_")


@contextlib.contextmanager
def config_errors(where: str) -> Iterator[None]:
    """A constructor's own refusal of its arguments (a ValueError: a choice outside the known ones, arguments
    that do not fit together) re-raised as a one-line WeightsError naming `where`, the config they came from."""
    try:
        yield
    except WeightsError:
        raise
    except ValueError as e:
        raise WeightsError(f"{where}: {e}") from None


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """torch.nn.init's fills as no-ops while building a model that a strict load then overwrites
    entirely (transformers' `no_init_weights`): random init costs seconds for ViT-B (0.5 s for
    Whisper tiny), and on the meta device their first call imports torch._dynamo for the
    decompositions (~1.3 s), so `check_weights` builds on meta with this on. Only for models whose
    every parameter and persistent buffer is in the loaded state and whose non-persistent buffers
    are not copies of initialised weights."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FILLS}
    try:
        for name in _INIT_FILLS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fill in saved.items():
            setattr(nn.init, name, fill)


class WeightsError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the offending keys."""


def summarise_keys(keys: list[str], limit: int = 12) -> str:
    """The first `limit` keys, comma-separated, and how many more (for one-line error messages)."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


class Converted(NamedTuple):
    """What an importer returns: the mmkit constructor config, the state dict in mmkit's names,
    the source name for messages, and the source's train/eval mode. The model classes build
    from it (`PretrainedMixin.from_converted`); importers never import `mmkit.models`."""

    config: dict[str, Any]
    state: dict[str, Tensor]
    source: str
    training: bool


def _first_line(e: Exception) -> str:
    """The informative sentence of a loader error (weights_only's message is a page long)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [""]
    line = next((x for x in lines if "Unsupported" in x), lines[0])
    return f"{type(e).__name__}: {line.split('. ')[0].replace('WeightsUnpickler error: ', '')}"


def _permission_denied(path: Path) -> WeightsError:
    return WeightsError(f"{path}: permission denied (the file cannot be opened for reading)")


def check_openable(path: Path) -> None:
    """Raise a WeightsError of one line naming `path` when the file cannot be opened for reading ("permission
    denied" for a file without read permission): the safetensors reader calls every failure to open a file
    "No such file or directory", a file that is there but unreadable included."""
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise _permission_denied(path) from None
    except OSError as e:
        raise WeightsError(f"{path}: the file cannot be opened ({e.strerror or e})") from None


def check_file(path: Path) -> None:
    """Refuse a checkpoint `path` that is not there, or is a directory (these readers take the weights file
    itself; a directory given instead is named as one, not reported missing)."""
    if path.is_dir():
        raise WeightsError(f"{path}: a directory; expected a checkpoint file (the weights file itself)")
    if not path.is_file():
        raise WeightsError(f"checkpoint file not found: {path}")


_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")


def torch_load_weights_only(path: str | Path) -> Any:
    """`torch.load(path, weights_only=True)`: tensors and plain containers, never code. A file
    whose pickle names a Python object is refused in one line that says how to convert a trusted one."""
    path = Path(path).expanduser()
    check_file(path)
    check_openable(path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decoder failure becomes one clear message
        named = _GLOBAL.search(str(e))
        if named is None:
            raise WeightsError(f"{path}: not a checkpoint torch.load(weights_only=True) can read "
                               f"({_first_line(e)})") from None
        safe = path.with_suffix(".safetensors")
        raise WeightsError(
            f"{path}: holds pickled Python code ({named[1]}) that mmkit will not run; if you trust the file, "
            "convert it once to safetensors: python -c \"import torch, safetensors.torch as st; "
            f"st.save_file(torch.load('{path}', weights_only=False), '{safe}')\" (for a whole pickled "
            "model, save its .state_dict())") from None


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read tensors from a safetensors file or a torch file, never unpickling arbitrary objects."""
    path = Path(path).expanduser()
    check_file(path)
    if path.suffix == ".safetensors":
        check_openable(path)
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - any decoder failure becomes one clear message
            raise WeightsError(f"{path}: not a readable checkpoint ({_first_line(e)})") from None
    obj = torch_load_weights_only(path)
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return dict(obj)


def check_finite(state: Mapping[str, Tensor], source: str | Path) -> None:
    """Refuse NaN or infinite weights (one line naming `source` and the tensors) at every load: a
    model built from them answers every input with NaN scores, vectors or probabilities, which tools
    would otherwise turn into labels, bare NaN in JSON, or garbage text and black images."""
    bad = [k for k, v in state.items() if v.is_floating_point() and v.numel() and not all(  # min/max carry NaN
        bool(m.isfinite()) for m in torch.aminmax(v))]  # a reduction, ~5x faster than isfinite().all()
    if bad:
        raise WeightsError(f"{source}: non-finite weights (NaN or infinity) in {summarise_keys(bad, 4)}")


def load_state_dict_strict(model: nn.Module, state: Mapping[str, Tensor], source: str, assign: bool = False) -> None:
    """`model.load_state_dict(strict=True)` with one readable error naming `source`. With `assign`, the
    model takes the checkpoint's tensors as its own instead of copying them (ViT-B: ~0.3 s and 600 MB of
    copying less at load), converted first where the dtype or layout differs from the model's; for a
    `state` whose tensors nothing else holds (a fresh read)."""
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
    check_finite(state, source)
    if assign:
        state = {k: v if v.dtype == own[k].dtype and v.device == own[k].device and v.is_contiguous()
                 else v.to(device=own[k].device, dtype=own[k].dtype).contiguous() for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=assign)


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors file's JSON header, without reading any tensor data."""
    path = Path(path).expanduser()
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > min(path.stat().st_size - 8, 100 << 20):
                raise ValueError(f"header length {size} exceeds the file")
            header = json.loads(f.read(size))
        return {k: tuple(int(n) for n in v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except FileNotFoundError:
        raise WeightsError(f"checkpoint file not found: {path}") from None
    except PermissionError:
        raise _permission_denied(path) from None
    except Exception as e:  # noqa: BLE001 - a corrupt header is one message, not a traceback
        raise WeightsError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None


def _int_fields(config: Mapping[str, Any], prefix: str = "") -> dict[str, int]:
    out: dict[str, int] = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(_int_fields(v, f"{prefix}{k}."))
        elif type(v) is int:
            out[f"{prefix}{k}"] = v
    return out


def check_layer_counts(config: Mapping[str, Any], tensors: int, where: str) -> None:
    """Refuse a config that asks for more layers or blocks than its weights hold tensors (each has at
    least one) before a build spends minutes, or all the memory, making them: one line naming the field."""
    for k, v in _int_fields(config).items():
        if any(word in k.rsplit(".", 1)[-1] for word in ("depth", "layers", "blocks")) and v > tensors:
            raise WeightsError(f"{where}: field {k}={v} asks for more layers than the weights hold tensors ({tensors})")


def check_shapes(model: nn.Module, found: Mapping[str, tuple[int, ...]], config: Mapping[str, Any], where: str,
                 weights: str) -> None:
    """Compare the (meta-device) model's tensor shapes with the weights' (`found`: from the safetensors
    header or an importer's state), so a config that disagrees with its weights fails before a single
    tensor is allocated; the message names the config fields whose values make up the disagreeing
    dimensions."""
    for key, tensor in model.state_dict().items():
        want = tuple(tensor.shape)
        if key in found and want != found[key]:
            dims = {w for w, f in zip(want, found[key]) if w != f} if len(want) == len(found[key]) else set(want)
            fields = [f"{k}={v}" for k, v in _int_fields(config).items() if v in dims]
            blame = f"field {' or '.join(fields)} disagrees with the weights: " if fields else ""
            raise WeightsError(f"{where}: {blame}{key} is {found[key]} in {weights} but {want} by the config")


def _check_class_names(names: Any, num_classes: Any, path: Path) -> None:
    """metadata.class_names, where present: distinct non-empty strings, one per output of the head."""
    if names is None:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise WeightsError(f"{path}: metadata.class_names must be a list of non-empty strings, got {names!r:.80}")
    if len(set(names)) != len(names):
        raise WeightsError(f"{path}: metadata.class_names repeats {sorted({n for n in names if names.count(n) > 1})}")
    if type(num_classes) is int and num_classes and len(names) != num_classes:
        raise WeightsError(f"{path}: metadata.class_names has {len(names)} names for a {num_classes}-class head")


def plain_file_mode() -> int:
    """The permissions a plainly created file gets: 0666 less the process's umask, for a file made another way
    (an owner-only 0600 temp file renamed into place) that others should read as any other. The umask can only
    be read by setting it: it is put back at once."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _plain_permissions(path: Path) -> None:
    """Give `path` the permissions a plainly created file gets (`plain_file_mode`), as config.json beside
    it has: safetensors' `save_file` writes an owner-only (0600) temp file and renames it, so an export's
    weights would be unreadable to the other users who can read its config (a shared model folder)."""
    os.chmod(path, plain_file_mode())


def _saved(save: Callable[[], object], path: Path) -> None:
    """`save()`, whose failure on a full disk or quota is a `WriteFailed` naming `path` (safetensors says
    "Error while serializing: I/O error: No space left on device (os error 28)" as a SafetensorError, which
    `mmkit fit` showed as a traceback after the run)."""
    try:
        save()
    except Exception as e:  # noqa: BLE001 - a full disk is named; anything else re-raised as it is
        code = full_disk_errno(e)
        if code is None:
            raise
        raise WriteFailed.of(f"write {path}", os.strerror(code), "; the file there is as it was") from None


def full_disk_errno(e: BaseException) -> int | None:
    """The errno of a write that failed for room (`errors.FULL`: a full disk, a quota), whether an OSError or
    safetensors' SafetensorError ("I/O error: No space left on device (os error 28)"); None for anything else."""
    code = e.errno if isinstance(e, OSError) else next(
        (int(m) for m in re.findall(r"\(os error (\d+)\)", str(e))), None)
    return code if code in FULL else None


def save_weights(path: Path, state: Mapping[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """`state` as a safetensors file at `path` (safetensors writes a temp file and renames it), readable as any
    plainly made file (`_plain_permissions`); a full disk is a `WriteFailed` naming `path`. `metadata`: the file's
    header metadata (transformers reads {"format": "pt"})."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    _saved(lambda: save_file(tensors, str(path), metadata=metadata), path)
    _plain_permissions(path)


def write_json(path: Path, doc: Any) -> None:
    """`doc` as indented UTF-8 JSON at `path` (a staged export's config files: `model_dir.export_folder` makes the
    folder whole or not at all)."""
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_model_files(directory: str | Path, doc: Mapping[str, Any], state: Mapping[str, Tensor],
                      config_name: str = CONFIG_NAME, weights_name: str = WEIGHTS_NAME) -> Path:
    """`state` as model.safetensors and `doc` as config.json in `directory` (made if absent): the layout mmkit's,
    transformers' and timm's folders share (open_clip's: other names). Each file whole or not at all: the config is
    serialised first (a value JSON cannot hold fails before anything changes), safetensors writes a temp file and
    renames it, and so does the config here; a full disk is a `WriteFailed` naming the file."""
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2) + "\n"
    save_weights(directory / weights_name, state)
    tmp = directory / f".{config_name}.{os.getpid()}.tmp"
    try:
        _saved(lambda: tmp.write_text(text, encoding="utf-8"), directory / config_name)
        os.replace(tmp, directory / config_name)
    finally:
        tmp.unlink(missing_ok=True)
    return directory


class PretrainedMixin:
    """`save_pretrained(dir)` / `from_pretrained(dir)` for models that keep their constructor
    arguments in `self.config` (a JSON-serialisable dict)."""

    config: dict[str, Any]
    architecture: str | None = None  # name written to config.json; default: the class name
    # every parameter and persistent buffer comes from the checkpoint, and no non-persistent buffer copies
    # an initialised weight: from_pretrained and from_converted skip the random init (`skip_init`)
    init_free_load: bool = False
    # the eval preprocessing the weights were trained with, in checkpoint metadata keys (image_size, mean, std,
    # interpolation, crop_pct, resize_mode), as an importer found it (timm's pretrained_cfg, open_clip's
    # preprocess_cfg); None = the family's defaults. `save_pretrained` writes it unless its metadata sets a key.
    preprocess: dict[str, Any] | None = None

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing in every block stack of the model (timm's method name): block inputs only are
        kept for the backward pass, which recomputes the blocks (`mmkit.core.execution`)."""
        assert isinstance(self, nn.Module)
        set_grad_checkpointing(self, enable)

    @classmethod
    def architecture_name(cls) -> str:
        return cls.architecture or cls.__name__

    def save_pretrained(self, directory: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write config.json and model.safetensors to `directory`. `metadata` (class names, eval transform, ...)
        is stored beside the config, over the model's `preprocess`: an imported model's export keeps the
        preprocessing its weights need when `metadata` names only the classes."""
        assert isinstance(self, nn.Module)
        if any(getattr(m, "inference_only", False) for m in self.modules()):
            # int8 layers keep their weights outside the state dict: the export would lack them, and would
            # replace a good one in `directory` with a checkpoint that cannot be loaded
            raise ValueError(f"{type(self).__name__} holds int8 layers (made with quantize='int8', for inference "
                             "only): save the fp32 model they were made from")
        doc = {"format_version": FORMAT_VERSION, "architecture": self.architecture_name(),
               "config": self.config, "metadata": {**(self.preprocess or {}), **(metadata or {})}}
        return write_model_files(directory, doc, self.state_dict())

    @classmethod
    def read_config(cls, directory: str | Path) -> dict[str, Any]:
        """The parsed config.json of a native checkpoint directory, checked for this class."""
        directory = Path(directory).expanduser()
        if directory.is_file():
            raise WeightsError(f"{directory}: a file; {cls.__name__}.from_pretrained expects the checkpoint directory "
                               f"(the folder holding {CONFIG_NAME} and {WEIGHTS_NAME})")
        path = directory / CONFIG_NAME
        if not path.is_file():
            raise WeightsError(f"{directory}: not an mmkit checkpoint directory (no {CONFIG_NAME})")
        from mmkit.weights.config_check import check_format_version, read_json_object

        doc = read_json_object(path)

        check_format_version(doc, str(path))
        if "architecture" not in doc:
            what = "not an mmkit checkpoint (no 'architecture' field)"
            if "model_type" in doc:
                from mmkit.weights.hf import HF_IMPORTERS

                importer = HF_IMPORTERS.get(doc["model_type"]) if isinstance(doc["model_type"], str) else None
                what += f" but a Hugging Face transformers one (model_type={doc['model_type']!r})"
                what += f": import it with {importer}.from_hf" if importer else ""
            raise WeightsError(f"{path}: {what}")
        if doc.get("architecture") != cls.architecture_name():
            raise WeightsError(f"{path}: holds a {doc.get('architecture')!r} checkpoint, not {cls.architecture_name()}")
        if not isinstance(doc.get("metadata", {}), dict):
            raise WeightsError(f"{path}: field 'metadata' must be an object")
        cls.check_config(doc.get("config"), f"{path}: config")
        _check_class_names(doc.get("metadata", {}).get("class_names"), doc["config"].get("num_classes"), path)
        return doc

    @classmethod
    def check_config(cls, config: Any, where: str) -> None:
        """Refuse constructor arguments of the wrong type or range (one line naming the field)."""
        from mmkit.weights.config_check import check_arguments

        check_arguments(cls.__init__, config, where)

    @classmethod
    def build(cls: type[T], config: dict[str, Any]) -> T:
        """The model of constructor config `config` (`self.config`'s shape); nested configs override."""
        return cls(**config)

    @classmethod
    def check_weights(cls, directory: str | Path, config: dict[str, Any]) -> Path:
        """The weights file of `directory`, its header shapes checked against a meta-device build.
        The build skips torch.nn.init's fills: on the meta device their first call imports torch's
        compiler stack for the decompositions (~1.3 s of every load), and a shape check needs no values."""
        directory = Path(directory).expanduser()
        cls.check_against(config, safetensors_shapes(directory / WEIGHTS_NAME), str(directory / CONFIG_NAME),
                          WEIGHTS_NAME)
        return directory / WEIGHTS_NAME

    @classmethod
    def check_against(cls, config: dict[str, Any], found: Mapping[str, tuple[int, ...]], where: str,
                      weights: str) -> None:
        """`config` checked against the weights' tensor shapes `found` on a meta-device build, before a
        real build allocates anything (`check_layer_counts`, then `check_shapes`)."""
        check_layer_counts(config, len(found), where)
        with torch.device("meta"), skip_init(), config_errors(where):
            model = cls.build(config)
        check_shapes(model, found, config, where, weights)  # type: ignore[arg-type]

    @classmethod
    def _build_to_load(cls: type[T], config: dict[str, Any], empty_init: bool) -> T:
        """`build(config)` for a strict load to overwrite, without the random init if `empty_init`."""
        with skip_init() if empty_init else contextlib.nullcontext():
            return cls.build(config)

    @classmethod
    def from_converted(cls: type[T], converted: Converted, empty_init: bool | None = None, assign: bool = False) -> T:
        """Build from an importer's `Converted` and load its state strictly (errors name the
        missing / unexpected keys); the source's train/eval mode is kept. `empty_init` skips the
        random init (`skip_init`; default: the class's `init_free_load`): only for models whose every
        tensor is in the state dict. The state is copied unless `assign`: an importer may hand over the
        tensors of a live source model, which must not end up sharing storage with this one; `assign` is
        for a state freshly read from a file (`load_state_dict_strict`). The config is checked as a native
        one is (`check_config`), a backstop for importers that check their source's fields less."""
        cls.check_config(converted.config, f"{converted.source}: imported config")
        cls.check_against(converted.config, {k: tuple(v.shape) for k, v in converted.state.items()}, converted.source,
                          "the weights")
        model = cls._build_to_load(converted.config, cls.init_free_load if empty_init is None else empty_init)
        load_state_dict_strict(model, converted.state, converted.source, assign=assign)  # type: ignore[arg-type]
        return model.train(converted.training)  # type: ignore[attr-defined]

    @classmethod
    def with_overrides(cls, saved: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        """The saved config with `from_pretrained`'s overrides applied."""
        return {**saved, **overrides}

    @classmethod
    def from_pretrained(cls: type[T], directory: str | Path, **overrides: Any) -> T:
        """Build from config.json (with `overrides` of constructor arguments) and load weights, in eval mode
        (as transformers' and timm's loaders: the saved dropout and drop-path rates act only once `train()` is
        called). The config is validated and checked against the weights' header before anything is built.
        Classes with `init_free_load` are built without their random init (`skip_init`)."""
        doc = cls.read_config(directory)  # config.json's one read: the config, then its metadata (`load_metadata`)
        saved = doc["config"]
        path = cls.check_weights(directory, saved)
        config = cls.with_overrides(saved, overrides)
        where = f"{directory}: config with overrides"
        if overrides:
            cls.check_config(config, where)
        with config_errors(where):  # without overrides, `check_weights` built this config already (on meta)
            model = cls._build_to_load(config, cls.init_free_load)
        state = model.adapt_state_dict(read_state_dict(path), saved)  # type: ignore[attr-defined]
        load_state_dict_strict(model, state, str(path))  # type: ignore[arg-type]
        model.load_metadata(doc.get("metadata", {}), overrides)  # type: ignore[attr-defined]
        return model.eval()  # type: ignore[attr-defined]

    def load_metadata(self, metadata: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
        """Hook: keep what this model needs of its checkpoint's metadata (ViT and CLIP: their eval preprocessing,
        as `preprocess`), given by `from_pretrained` from its one read of config.json, with the constructor
        `overrides` it was built with (a new image size changes the preprocessing's). Keeps nothing by default."""

    def adapt_state_dict(self, state: dict[str, Tensor], saved_config: dict[str, Any]) -> dict[str, Tensor]:
        """Hook for checkpoint-compatible overrides (e.g. a new image size); identity by default."""
        return state
