"""The Lightning side of the `mmkit` command: LightningCLI with data-linked arguments, checked
recipe values and one-line errors (the prediction writer is `mmkit.cli.prediction_writer`). Kept
apart from `mmkit.cli` so that tool subcommands (`label`, `transcribe`, `demo`, `bench`) start
without importing Lightning.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import os
import re
import shutil
import signal
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional, Sequence, Union

import pytorch_lightning as pl
from jsonargparse import Namespace
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.plugins.precision import MixedPrecision, Precision
from pytorch_lightning.trainer.connectors.accelerator_connector import _PRECISION_INPUT
from pytorch_lightning.utilities import GradClipAlgorithmType
from pytorch_lightning.utilities.exceptions import MisconfigurationException, SIGTERMException

from mmkit.cli.prediction_writer import LIGHTNING_PRECISION, PredictionWriter
from mmkit.inference.precision import resolve_precision

log = logging.getLogger("mmkit")

def training_precision(precision: Any, accelerator: Any) -> Any:
    """`--trainer.precision auto`: "bf16-mixed" where the accelerator has native bf16 (a GPU with it,
    an AVX512-BF16/AMX CPU), "16-mixed" on older GPUs, else "32-true"; any other value as given.
    Emulated bf16 is ~100x slower in matmuls, so a CPU without it trains in fp32."""
    if precision != "auto":
        return precision
    import torch

    name = (accelerator if isinstance(accelerator, str) else type(accelerator).__name__).lower()
    cuda = "cuda" in name or name == "gpu" or (name == "auto" and torch.cuda.is_available())
    return LIGHTNING_PRECISION[resolve_precision("auto", "cuda" if cuda else "cpu")]


class _UnscaledMixedPrecision(MixedPrecision):
    """bf16-mixed as Lightning runs it, with gradient clipping allowed for fused optimizers. Lightning
    refuses that combination for any AMP because a GradScaler's fused optimizer unscales inside its
    step; bf16 has no scaler, so the gradients clipped are the real ones, as in fp32. (mmkit's AdamW
    is fused on the CPU, and five recipes clip.)"""

    def clip_gradients(self, optimizer: Any, clip_val: int | float = 0.0,
                       gradient_clip_algorithm: GradClipAlgorithmType = GradClipAlgorithmType.NORM) -> None:
        Precision.clip_gradients(self, optimizer, clip_val, gradient_clip_algorithm)


class CheckpointFiles(TorchCheckpointIO):
    """Lightning's checkpoint IO, writing a local checkpoint straight into a temp file beside it, renamed over it
    when complete (`atomic_path`). Lightning's own serialises the whole checkpoint in memory, then writes it to a
    temp file in /tmp and moves that: across filesystems the move is a copy, so a full disk left a truncated
    `best-*.ckpt` or `last.ckpt` behind with a 30-line traceback, where this leaves the file as it was and says
    "cannot write PATH: No space left on device" (`mmkit.cli._user_error`). Remote paths (s3://...) are
    Lightning's."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        import torch

        from mmkit.errors import FULL, WriteFailed, in_context
        from mmkit.inference.text_rows import atomic_path

        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp, open(tmp, "wb") as f:
                try:
                    torch.save(checkpoint, f)  # to a file object: the writes are Python's, their OSError the cause
                except RuntimeError as e:  # torch's zip writer failing after the write did ("unexpected pos ...")
                    full = in_context(e.__context__, lambda x: isinstance(x, OSError) and x.errno in FULL)
                    if full is None:
                        raise
                    raise full from None
                f.flush()
                os.fsync(f.fileno())
        except WriteFailed:
            raise
        except OSError as e:  # a read-only or virtual folder, a folder at the path: one line naming the checkpoint
            raise WriteFailed.of(f"write {target}", e) from None


class Trainer(pl.Trainer):
    """Lightning's Trainer, with precision "auto" added (`training_precision`) and checkpoints written whole or
    not at all (`CheckpointFiles`, where the strategy has Lightning's default checkpoint IO: not a user's own,
    an asynchronous one or XLA's).

    The recipes say `precision: auto`, so they train in bf16-mixed where the hardware has it natively.

    Args:
        precision: Lightning's values, or "auto": bf16-mixed where the CPU (AVX512-BF16/AMX) or GPU
            has native bf16, 16-mixed on older GPUs, else 32-true.
    """

    def __init__(self, *args: Any, precision: Optional[Union[_PRECISION_INPUT, Literal["auto"]]] = None,
                 **kwargs: Any) -> None:
        resolved = training_precision(precision, kwargs.get("accelerator", "auto"))
        if precision == "auto":
            log.info("trainer: precision auto -> %s", resolved)
        super().__init__(*args, precision=resolved, **kwargs)
        if type(self.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default, not one of the user's
            self.strategy.checkpoint_io = CheckpointFiles()  # (a plugin would clash with a strategy's own)
        plugin = self.strategy.precision_plugin
        if type(plugin) is MixedPrecision and plugin.scaler is None:  # bf16-mixed (fp16 keeps its scaler)
            plugin.__class__ = _UnscaledMixedPrecision


# Range rules for the training and data hyper-parameters every recipe shares, by name (jsonargparse checks
# types only): a value outside its range fails late (a torch traceback mid-run) or trains silently wrong.
_RULES: list[tuple[re.Pattern, Callable[[float], bool], str]] = [
    (re.compile(r"(^|_)batch_size$"), lambda v: v >= 1, ">= 1"),
    (re.compile(r"^num_workers$"), lambda v: v >= 0, ">= 0"),
    (re.compile(r"^lr$"), lambda v: v > 0, "> 0"),
    (re.compile(r"^weight_decay$|_alpha$"), lambda v: v >= 0, ">= 0"),
    (re.compile(r"^(warmup_ratio|label_smoothing|val_split|null_caption_prob)$"), lambda v: 0 <= v < 1, "in [0, 1)"),
    (re.compile(r"^(ctc_weight|hflip)$"), lambda v: 0 <= v <= 1, "in [0, 1]"),
    (re.compile(r"^top_k$"), lambda v: v >= 1, ">= 1"),
]


def check_hyperparameters(config: Any, where: str) -> None:
    """Refuse a recipe value outside its range (`_RULES`), or a non-finite number, anywhere in a
    model/data section (nested init_args included): one line naming the option, before anything is built."""
    items = config.items() if isinstance(config, dict) else vars(config).items() if hasattr(config, "__dict__") \
        else ()
    for key, value in items:
        name = f"{where}.{key}"
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise ValueError(f"--{name} must be finite, got {value}")
            rule = next((r for r in _RULES if r[0].search(key)), None)
            if rule and not rule[1](value):
                raise ValueError(f"--{name} must be {rule[2]}, got {value}")
        elif isinstance(value, dict) or hasattr(value, "__dict__"):
            check_hyperparameters(value, name)


# Trainer options Lightning takes without a range check, by name: a value outside the range fails late (a
# ZeroDivisionError traceback while the optimizer's schedule is set up or at the first batch) or trains
# silently wrong (a negative clipping norm flips the gradients' sign).
_TRAINER_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "accumulate_grad_batches": (lambda v: v >= 1, ">= 1"),
    "check_val_every_n_epoch": (lambda v: v >= 1, ">= 1"),
    "val_check_interval": (lambda v: v > 0, "> 0"),
    "gradient_clip_val": (lambda v: v >= 0, ">= 0"),
    # Lightning takes these below their meaning without a word: -5 sanity steps run none, a negative
    # logging interval logs as its absolute value, a negative minimum is no minimum.
    "num_sanity_val_steps": (lambda v: v >= -1, ">= -1 (-1: every validation batch, 0: none)"),
    "log_every_n_steps": (lambda v: v >= 0, ">= 0 (0: no per-step logging)"),
    "min_epochs": (lambda v: v >= 0, ">= 0"),
    "min_steps": (lambda v: v >= 0, ">= 0"),
}


def check_trainer_options(config: Any) -> None:
    """Refuse a trainer option outside its range (`_TRAINER_RULES`): one line naming the option, before
    the trainer is built (Lightning refuses other combinations itself, in one line: `mmkit.cli._user_error`)."""
    values = config.as_dict() if hasattr(config, "as_dict") else config if isinstance(config, dict) else {}
    for key, (ok, rule) in _TRAINER_RULES.items():
        value = values.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value):
            raise ValueError(f"--trainer.{key} must be {rule}, got {value}")


def check_model_arguments(section: Any, where: str) -> None:
    """Each class a model section names (the task's `model`, CLIP's towers, ... : nested `class_path` and
    `init_args`) whose class checks its constructor arguments (`check_config`: mmkit's models, as for a
    checkpoint's config.json) checked before anything is built, with the arguments the recipe and the
    command line give it (the constructor's defaults, and the placeholders the data replaces at set-up,
    are left alone). A size out of range (`num_heads 0`, `depth -1`) fails in one line naming the option
    and the field instead of a traceback from the constructor or, worse, a model trained and exported
    that `from_pretrained` then refuses."""
    from mmkit.weights.native import config_errors

    value = section.as_dict() if hasattr(section, "as_dict") else section
    if isinstance(value, list):
        for sub in value:
            check_model_arguments(sub, where)
        return
    if not isinstance(value, dict):
        return
    if not _is_class_spec(value):
        for key, sub in value.items():
            check_model_arguments(sub, f"{where}.{key}")
        return
    init_args = value.get("init_args") or {}
    where = f"{where}.init_args"
    for key, sub in init_args.items():  # nested classes first: their message names their own option
        check_model_arguments(sub, f"{where}.{key}")
    cls = _import_class(value["class_path"])
    check = getattr(cls, "check_config", None)
    given = _given_arguments(cls, init_args) if callable(check) else None
    if given is not None:
        with config_errors(f"--{where}"):
            check(given, f"--{where}")


def _is_class_spec(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("class_path"), str) and \
        isinstance(value.get("init_args") or {}, dict)


def _import_class(class_path: str) -> type | None:
    """The class `class_path` names ("package.module.Name"), or None where it is not one that imports."""
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return found if isinstance(found, type) else None


def _given_arguments(cls: Any, init_args: dict[str, Any]) -> dict[str, Any] | None:
    """The arguments of `init_args` (jsonargparse fills in every default) that differ from `cls`'s
    constructor defaults; an argument that is itself a class (CLIP's towers) as its own given arguments,
    where it is the very class the constructor names. None where such a class is another one (a subclass
    with other arguments): its own check then is the only one."""
    import inspect
    import typing

    try:
        params = inspect.signature(cls.__init__).parameters
        hints = typing.get_type_hints(cls.__init__)
    except (TypeError, ValueError, NameError):
        return None
    given: dict[str, Any] = {}
    for key, arg in init_args.items():
        param = params.get(key)
        if _is_class_spec(arg):
            nested = _import_class(arg["class_path"])
            if nested is None or nested is not hints.get(key):
                return None
            nested_given = _given_arguments(nested, arg.get("init_args") or {})
            if nested_given is None:
                return None
            given[key] = nested_given
        elif param is None or param.default is inspect.Parameter.empty or not _equal(arg, param.default):
            given[key] = arg
    return given


def _equal(value: Any, default: Any) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return len(value) == len(default) and all(_equal(v, d) for v, d in zip(value, default))
    if type(value) is bool or type(default) is bool:
        return type(value) is type(default) and value == default
    try:
        return bool(value == default)
    except Exception:  # noqa: BLE001 - an argument of a type without a plain ==: given
        return False


def summarise_parse_error(message: str) -> str:
    """jsonargparse's refusal of an option (a dozen lines: the Union subtypes tried, each one's complaint)
    as one line: the option as typed on the command line and its innermost complaint, or the value given."""
    lines = [line for line in message.splitlines() if line.strip()]
    if message.strip() == "Unexpected config:":  # what jsonargparse says of an empty --config file
        return "a --config file holds no settings"
    if len(lines) <= 1:
        return message.strip()
    keys = re.findall(r'Parser key "([^"]+)"', message)
    option = keys[0] + "".join(f".init_args.{k}" for k in keys[1:]) if keys else ""
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("- ")), None)
    detail = ""
    if start is not None:
        depth = len(lines[start]) - len(lines[start].lstrip())
        nested = []
        for line in lines[start + 1:]:
            if len(line) - len(line.lstrip()) <= depth:
                break
            nested.append(line.strip())
        detail = nested[-1] if nested else ""
    given = next((line.split(":", 1)[1].strip() for line in lines if line.strip().startswith("Given value:")), "")
    if "- Expected a <class 'list'>" in message and given and option:  # one value for a list (`files a.txt`)
        detail = f"a list is expected, not {given!r}: give --{option} '[{given}]'"
    if not detail:
        detail = f"invalid value {given!r}" if given else lines[1].strip()
    detail = re.sub(r"<class '(\w+)'>", r"\1", detail)
    return f"--{option}: {detail}" if option else detail


def _one_line_error(parser: Any, original: Callable[..., Any], message: str, ex: Exception | None = None) -> Any:
    """`parser.error` printing `summarise_parse_error(message)` in one line (exit 2) instead of the whole
    usage (~50 lines) and the message; where the parser raises rather than exits, jsonargparse's own."""
    if not parser.exit_on_error:
        return original(message, ex)
    words = parser.prog.replace(" [options]", "").split()  # "mmkit fit"; sys.argv[0] may be another name
    command = " ".join(["mmkit", *words[1:]])
    sys.stderr.write(f"{command}: error: {summarise_parse_error(message)} ({command} --help for the options)\n")
    parser.exit(2)


class Interrupted(KeyboardInterrupt):
    """A LightningCLI run stopped by Ctrl-C or SIGTERM, after Lightning's own handling of it (the callbacks'
    `on_exception`: the prediction writer removes its temp file and shards): `left` says what the run leaves;
    `quiet` on every process but the first, so that the run says so once."""

    def __init__(self, left: str, quiet: bool = False) -> None:
        super().__init__(left)
        self.left, self.quiet = left, quiet


class _Signals(pl.Callback):
    """Ctrl-C (and, where the loop never looks for SIGTERM, SIGTERM) raised as KeyboardInterrupt once, in this
    process only. A DataLoader worker forked from it inherits the handler and ignores them (a Ctrl-C reaches the
    whole process group, `timeout` signals its own): left running, the workers are shut down by this process as
    Lightning tears the run down, where a worker killed mid-batch made this process's read of the batch fail
    with a ConnectionResetError traceback instead. Signals after the first are ignored: the run is stopping,
    and a second KeyboardInterrupt would cut the cleanup short (Lightning ignores a second Ctrl-C too).

    Not raised while a worker is being forked: the libraries' at-fork hooks must run whole (one cut short left
    filelock's fork state broken, and tracebacks in both processes), and Python drops exceptions raised in
    them; nor while the prediction writer makes its temp file, which would be left behind before the writer
    holds it. Those, and one raised where Python drops it (a `__del__`), are raised at the next batch instead,
    as the trainer's callback."""

    def __init__(self) -> None:
        self.pid, self.received = os.getpid(), None

    def __call__(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid or self.received is not None:
            return
        self.received = signum
        if not _held_back(frame):
            raise KeyboardInterrupt(f"signal {signum}")

    def _raise_if_received(self, *args: Any) -> None:
        if self.received is not None:  # the first KeyboardInterrupt was dropped: the run went on
            raise KeyboardInterrupt(f"signal {self.received}")

    on_train_batch_start = on_validation_batch_start = on_test_batch_start = on_predict_batch_start = \
        _raise_if_received

    def _dropped(self, hook: Callable[[Any], None], unraisable: Any) -> None:
        """`sys.unraisablehook` less the report of a dropped KeyboardInterrupt of ours (raised again later)."""
        if not (self.received is not None and isinstance(unraisable.exc_value, KeyboardInterrupt)):
            hook(unraisable)

    @contextlib.contextmanager
    def during(self, signums: list[int]) -> Iterator["_Signals"]:
        """`signums` handled so in the block (in the main thread: elsewhere they stay as they are), with
        `sys.excepthook` less the workers' `_quiet_fd_sharing` and `sys.unraisablehook` less `_dropped`."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.signal(signum, self) for signum in signums}
        hooks = sys.excepthook, sys.unraisablehook
        sys.excepthook = functools.partial(_quiet_fd_sharing, hooks[0])  # forked workers inherit it
        sys.unraisablehook = functools.partial(self._dropped, hooks[1])
        try:
            yield self
        finally:
            sys.excepthook, sys.unraisablehook = hooks
            for signum, handler in previous.items():  # None: set outside Python, cannot be put back
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)


_HELD_BACK = {("multiprocessing", "popen_fork.py"): None,  # forking a process, at-fork hooks included
              ("inference", "writers.py"): "__init__",  # making `PredictionFile`'s temp file
              ("cli", "prediction_writer.py"): "_open"}  # until the writer holds it, to remove it


def _held_back(frame: Any) -> bool:
    """Whether `frame` runs where an interruption waits for the next batch (`_Signals`)."""
    while frame is not None:
        code = frame.f_code
        where = Path(code.co_filename).parts[-2:]
        if where in _HELD_BACK and _HELD_BACK[where] in (None, code.co_name):
            return True
        frame = frame.f_back
    return False


def _quiet_fd_sharing(hook: Callable[..., None], kind: type, error: BaseException, tb: Any) -> None:
    """`sys.excepthook` less one traceback: a DataLoader worker hands this process each batch's tensors through
    a thread of `multiprocessing.resource_sharer`, which prints a ConnectionResetError or BrokenPipeError
    (through sys.excepthook) when this process stopped reading midway, as an interruption does (the one thing
    that ends that exchange early)."""
    frame = tb
    while frame is not None and isinstance(error, ConnectionError):
        if Path(frame.tb_frame.f_code.co_filename).parts[-2:] == ("multiprocessing", "resource_sharer.py"):
            return
        frame = frame.tb_next
    hook(kind, error, tb)


class _ReplacedByOwnLine(logging.Filter):
    """Lightning's "Detected KeyboardInterrupt, attempting graceful shutdown ..." (also said of a SIGTERM):
    `mmkit.cli.main` says the run was interrupted, and what it leaves, in its own line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Detected KeyboardInterrupt" not in str(record.msg)


_RANK_ZERO_LOGGERS = ("lightning_fabric.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero")


class MMKitCLI(LightningCLI):
    def __init__(self, *args: Any, signals: _Signals | None = None, argv: Sequence[str] = (), **kwargs: Any) -> None:
        self.signals = signals  # before LightningCLI runs the subcommand, in its __init__
        self.argv = list(argv)  # the command line as given (`_parse_ckpt_path`)
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        parser.error = functools.partial(_one_line_error, parser, parser.error)  # type: ignore[method-assign]
        return parser

    def _parse_ckpt_path(self) -> None:
        """Lightning re-parses the model section from `--ckpt_path FILE`'s saved hyper-parameters, which then
        override the recipe's (the sizes it was trained with) and also the command line's: resumed into another
        folder with `--model.init_args.export_dir new`, a run exported over the first run's export; a new
        `--model.init_args.lr` was dropped. Model options given on the command line keep their values, each
        that differs from the checkpoint's logged (Lightning's own issue #20801; its fix, pull request 21455, is
        open). A checkpoint of another model or recipe failed as "the following arguments are required: model":
        say so. Lightning read the whole checkpoint for them (every tensor, before the restore reads it again):
        the hyper-parameters are read through a memory map here (`_apply_checkpoint_hparams`)."""
        subcommand = self.config.get("subcommand")
        section = self.config[subcommand] if subcommand else None
        given = section.get("model") if section is not None else None
        given = given.clone() if hasattr(given, "clone") else given
        # "last" is read as the file it names (then Lightning's own choice of it): a run resumed with `--ckpt_path
        # last` has the options it was trained with (an lr given then), as one resumed from the file has
        last = _checkpoint_file(section) if section is not None and section.get("ckpt_path") == "last" else None
        self.parser.exit_on_error = False
        try:
            if last is not None:
                section["ckpt_path"] = str(last)
            self._apply_checkpoint_hparams()
        except argparse.ArgumentError as e:
            path = self.config[self.config.subcommand].get("ckpt_path")
            raise ValueError(f"--ckpt_path {path}: saved by another model or recipe than this config's "
                             f"({summarise_parse_error(str(e))})") from None
        finally:
            self.parser.exit_on_error = True
            if last is not None:
                self.config[subcommand]["ckpt_path"] = "last"
        if given is not None:
            _keep_given_model_options(given, self.config[subcommand]["model"], self.argv)

    def _apply_checkpoint_hparams(self) -> None:
        """LightningCLI's own `_parse_ckpt_path` (pytorch-lightning 2.6), its checkpoint memory-mapped: the
        saved hyper-parameters parsed as the model section over the config."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        hparams = dict(_read_checkpoint(Path(ckpt_path)).get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        # Values the data determines are linked, never repeated in the recipe. A data module with no class
        # folders (predict's inputs only) links those the checkpoint to be read records (`--ckpt_path`): the
        # model was built with num_classes None (a TypeError) and predicted with no names.
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate",
                              compute_fn=lambda names: list(names) or self._recorded("class_names") or None)
        parser.link_arguments("data.num_classes", "model.init_args.model.init_args.num_classes",
                              compute_fn=lambda n: n or self._recorded("num_classes") or None, apply_on="instantiate")

    def _recorded(self, name: str) -> Any:
        """What the checkpoint a validate/test/predict run reads (`--ckpt_path FILE`, or the newest last one of
        the recipe's folder for "last" and "best") records as `name`: the task's hyper-parameter (class_names)
        or the model's config field (num_classes); None where there is none to read (Lightning's load then says
        what is wrong with the file)."""
        if not hasattr(self, "_checkpoint_record"):
            self._checkpoint_record = _checkpoint_record(self.config)
        return self._checkpoint_record.get(name)

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        # Lightning's refusals of --trainer.accelerator/devices (an unknown name, CUDA on a machine
        # without it) are the user's mistake: one line, exit 2, not a traceback.
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (ValueError, MisconfigurationException) as e:
            raise ValueError(f"trainer: {str(e).strip().splitlines()[0]}") from None
        if self.signals is not None:
            trainer.callbacks.append(self.signals)  # a dropped interruption raised again at the next batch
        # the first process's logger folder, if this run makes it (Trainer.log_dir is a collective: the logger's)
        log_dir = getattr(trainer.logger, "log_dir", None) if trainer.global_rank == 0 else None
        self._new_log_dir = Path(log_dir) if log_dir and not Path(log_dir).exists() else None
        return trainer

    def _set_seed(self) -> None:
        # The config's checks run first, before Lightning seeds and logs "Seed set to 0": a refused value is
        # then the only line on stderr (private, as `_parse_ckpt_path`: LightningCLI has no public hook between
        # parsing and seeding; the version is pinned in constraints.txt)
        config = self.config[self.subcommand] if self.subcommand else self.config
        for section in ("model", "data"):
            check_hyperparameters(config.get(section), section)
        check_model_arguments(config.get("model"), "model")
        check_trainer_options(config.get("trainer"))
        super()._set_seed()

    def before_instantiate_classes(self) -> None:
        if self.subcommand:
            _follow_root(self.config[self.subcommand], self.argv)

    def before_predict(self) -> None:
        self._fixed_checkpoint_folder()
        # Lightning would keep every batch's predictions in memory to return them: the writer has written them.
        if self.config_init[self.subcommand].get("return_predictions") is None:
            self.config_init[self.subcommand]["return_predictions"] = False
        trainer = self.trainer
        environment = getattr(trainer.strategy, "cluster_environment", None)
        launches = environment is not None and not environment.creates_processes_externally
        if trainer.world_size > 1 and trainer.is_global_zero and launches:
            # Before the other processes exist, so that a mistake is one line, not one per process
            # (torchrun/SLURM start them all: `PredictionWriter.setup` checks on every process then).
            for writer in trainer.callbacks:
                if isinstance(writer, PredictionWriter):
                    writer.check_before_launch(trainer, self.datamodule)

    def _run_subcommand(self, subcommand: str) -> None:
        """The subcommand, its interruption raised as `Interrupted` once Lightning has handled it: Lightning ends
        a run that Ctrl-C stopped with sys.exit(1) and one that SIGTERM stopped (fit, validate, test: at the end of
        a batch) with SIGTERMException, an exit code 0; and an error of the run while a signal was received (a
        worker gone, a broken pipe) is that interruption too, not a traceback."""
        # the step a resume starts from, read before the run can rewrite its checkpoint (`_remove_empty_log_dir`)
        path = _checkpoint_file(self.config[subcommand]) if subcommand == "fit" else None
        self._start_step = _checkpoint_step(path) if path is not None else 0
        try:
            super()._run_subcommand(subcommand)
            if subcommand == "fit" and 0 < self._start_step == self.trainer.global_step:
                # A resume of a run that had finished (its max_epochs/max_steps reached): nothing trained, and
                # the version folder made for it holds only the config.
                self._remove_empty_log_dir()
                if self.trainer.global_rank == 0:
                    log.warning("nothing left to train: the checkpoint's run had finished at step %d (raise "
                                "--trainer.max_epochs or --trainer.max_steps to train on)", self._start_step)
        except BaseException as e:  # noqa: BLE001 - only an interruption is replaced; anything else re-raised
            received = self.signals is not None and self.signals.received is not None
            if not (received or isinstance(e, (KeyboardInterrupt, SIGTERMException))
                    or isinstance(e, SystemExit) and self.trainer.interrupted):
                self._remove_empty_log_dir()
                raise
            raise Interrupted(self._left(subcommand), quiet=self.trainer.global_rank != 0) from None

    def _remove_empty_log_dir(self) -> None:
        """The logger's folder this run created, where the run failed before it logged anything (a refusal once
        the trainer is set up: an export_dir that is a file, a missing --ckpt_path file, a manifest with no
        usable clip; in a resumed run also one after the checkpoint restored the step, such as optimizer states
        that do not fit or a refusal in the sanity check): it holds the config (SaveConfigCallback), maybe
        hparams.yaml and a metrics.csv header, and each retry left one more lightning_logs/version_N. A run that
        trained a step is kept: a TensorBoard folder's event file cannot be told apart by its files, and holds no
        metric before the first step of the run (the step it starts from: a resume's is the checkpoint's)."""
        folder = getattr(self, "_new_log_dir", None)
        start = getattr(self, "_start_step", 0)
        if folder is None or self.trainer.global_rank != 0 or self.trainer.global_step > start or not folder.is_dir():
            return
        files = list(folder.iterdir())
        if all(f.is_file() and (f.name in ("config.yaml", "hparams.yaml", "metrics.csv")
                                or f.name.startswith("events.out.tfevents.")) for f in files) and all(
                f.name != "metrics.csv" or len(f.read_bytes().splitlines()) <= 1 for f in files):
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):  # lightning_logs/ itself, when this run made it and left it empty
                folder.parent.rmdir()

    def _left(self, subcommand: str) -> str:
        """What an interrupted run leaves: predict nothing (its writer removed the temp file); fit the checkpoints
        saved before (Lightning's: none is saved on the interruption unless a callback does so)."""
        if subcommand == "predict":
            outputs = [cb.output for cb in self.trainer.callbacks if isinstance(cb, PredictionWriter)]
            return f"nothing was written to {outputs[0]}" if outputs else "nothing was written"
        if subcommand != "fit":
            return "no metrics were reported"
        callbacks = [cb for cb in self.trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        last = next((cb.last_model_path for cb in callbacks if cb.last_model_path), "")
        best = next((cb.best_model_path for cb in callbacks if cb.best_model_path), "")
        if last:
            return f"the last checkpoint saved is {last} (--ckpt_path last resumes from it)"
        return f"the best checkpoint saved is {best}" if best else "no checkpoint was saved"

    def before_fit(self) -> None:
        self._fixed_checkpoint_folder()

    def before_validate(self) -> None:
        self._fixed_checkpoint_folder()

    def before_test(self) -> None:
        self._fixed_checkpoint_folder()

    def _fixed_checkpoint_folder(self) -> None:
        """Checkpoints go to `<default_root_dir>/checkpoints` (unless a recipe names a folder), not
        to a new `lightning_logs/version_N/` per run: `--ckpt_path last` after a crash then finds
        the run's `last.ckpt`, in every subcommand (predict's too: Lightning found no "last" there and predicted
        with the recipe's random weights). Asking for "last" when there is none is an error, never a fresh start
        or random weights; "best" in a new process is the one the newest last checkpoint records (Lightning knows
        the best only in the process that trained); validate and test without a checkpoint say what they score."""
        root = Path(self.trainer.default_root_dir)
        callbacks = [cb for cb in self.trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        for cb in callbacks:
            if cb.dirpath is None:
                cb.dirpath = str((root / "checkpoints").resolve())
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        fix = ("drop --ckpt_path to start a new run" if self.subcommand == "fit" else
               "train first (mmkit fit with this recipe and --trainer.default_root_dir) or give a checkpoint file")
        if ckpt_path == "last":
            if not any(_newest_last(cb) for cb in callbacks):
                where = ", ".join(str(Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}")
                                  for cb in callbacks) or "(no ModelCheckpoint callback with save_last)"
                what = "checkpoint to resume from" if self.subcommand == "fit" else "checkpoint"
                raise FileNotFoundError(f"--ckpt_path last: no {what} at {where}; {fix}")
        elif ckpt_path == "best" and self.subcommand != "fit" and callbacks and not callbacks[0].best_model_path:
            best = _recorded_best(callbacks[0])  # the callback Lightning reads "best" from
            if best is None:
                raise FileNotFoundError(f"--ckpt_path best: no best checkpoint recorded in {callbacks[0].dirpath} "
                                        f"(by the last checkpoint of a run with a monitored metric); {fix}")
            callbacks[0].best_model_path = best
        elif ckpt_path is None and self.subcommand in ("validate", "test"):
            log.warning("%s: no --ckpt_path, so the model as the recipe builds it is scored (random weights unless "
                        "it loads trained ones); --ckpt_path last, best or a file scores a trained one",
                        self.subcommand)


def _given_keys(argv: Sequence[str], config: Any = None) -> set[str]:
    """The options `argv` gives, as config keys ("model.init_args.export_dir"), resolved against `config` (the parsed
    subcommand section; None: model and data taken as classes): jsonargparse's short form of a class's argument
    ("--model.export_dir", "--model.model.dim") counted as its long form, and an option given a mapping (`--model
    '{"init_args": {"lr": 0.1}}'`, `--model.init_args '{...}'`, `--trainer '{...}'`, `--model FILE.yaml`) as each
    value the mapping gives. The --config files are not the command line's: they are the recipe, which a checkpoint's
    record of the run it resumes overrides."""
    keys: set[str] = set()
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        option, equals, value = arg[2:].partition("=")
        option = option.rstrip("+")
        if not equals:
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
        mapping = _mapping_value(option, value)
        if mapping is not None:
            keys.update(_leaf_keys(option.split("."), mapping, config))
        elif "." in option:
            keys.add(_resolved(option.split("."), config)[0])
    return keys


# The sections whose value may be a config file (`--model model.yaml`), as jsonargparse reads it.
_FILE_SECTIONS = ("model", "data", "trainer", "prediction_writer", "optimizer", "lr_scheduler")


def _mapping_value(option: str, value: str) -> dict[str, Any] | None:
    """The mapping an option's value gives: inline YAML/JSON, or a config file given to a whole section."""
    import yaml

    text = value.strip()
    try:
        if text.startswith("{"):
            loaded = yaml.safe_load(text)
        elif option in _FILE_SECTIONS and text.endswith((".yaml", ".yml", ".json")) and Path(text).is_file():
            loaded = yaml.safe_load(Path(text).read_text(encoding="utf-8"))
        else:
            return None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _leaf_keys(parts: list[str], value: Any, config: Any) -> set[str]:
    """The config keys of the values a mapping given to option `parts` sets (a dict-typed option's mapping is one
    value: the option's own)."""
    key, node = _resolved(parts, config)
    if not isinstance(value, dict) or not value or (config is not None and node is not None
                                                      and not isinstance(node, Namespace)):
        return {key}
    return set().union(*(_leaf_keys([*parts, str(k)], v, config) for k, v in value.items()))


def _resolved(parts: Sequence[str], config: Any) -> tuple[str, Any]:
    """Option `parts` as its config key, with "init_args" after each class it names an argument of (a class:
    what `config` holds there has a class_path; without a config, the model and data sections), and the value
    `config` holds there (None where unknown)."""
    key: list[str] = []
    node = config
    for part in parts:
        is_class = isinstance(_child(node, "class_path"), str) if config is not None else \
            key in (["model"], ["data"])
        if is_class and part not in ("class_path", "init_args", "dict_kwargs"):
            key.append("init_args")
            node = _child(node, "init_args")
        key.append(part)
        node = _child(node, part)
    return ".".join(key), node


def _child(node: Any, name: str) -> Any:
    if isinstance(node, (Namespace, dict)):
        return node.get(name)
    return None


def _follow_root(section: Any, argv: Sequence[str]) -> None:
    """A recipe's outputs in its own folder (`trainer.default_root_dir`: the export_dir, GPT's tokenizer folder,
    predict's output) follow a --trainer.default_root_dir given on the command line, unless given themselves:
    a run on one's own data into its own folder wrote its export over the recipe's (which the predict recipe then
    served) and trained its GPT with the recipe's tokenizer."""
    given = _given_keys(argv, section)
    root = section.get("trainer", {}).get("default_root_dir") if "trainer.default_root_dir" in given else None
    recipe_root = _recipe_root(section.get("config") or [])
    if not root or not recipe_root or Path(root) == Path(recipe_root):
        return
    for name in ("model.init_args", "data.init_args", "prediction_writer"):
        values = section.get(name)
        for key in (list(vars(values)) if values is not None and hasattr(values, "__dict__") else []):
            value = values.get(key)
            if f"{name}.{key}" in given or not isinstance(value, str) or not _under(value, recipe_root):
                continue
            moved = str(Path(root) / Path(value).relative_to(recipe_root))
            log.info("--%s.%s: %s (the recipe's %s, in --trainer.default_root_dir)", name, key, moved, value)
            values[key] = moved


def _recipe_root(configs: Sequence[Any]) -> str | None:
    """The default_root_dir the --config files set (the last that sets one), else None."""
    import yaml

    root = None
    for config in configs:
        try:
            doc = yaml.safe_load(Path(str(config)).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        trainer = doc.get("trainer") if isinstance(doc, dict) else None
        if isinstance(trainer, dict) and isinstance(trainer.get("default_root_dir"), str):
            root = trainer["default_root_dir"]
    return root


def _under(path: str, folder: str) -> bool:
    return Path(path) != Path(folder) and Path(path).is_relative_to(folder)


def _keep_given_model_options(given: Any, merged: Any, argv: Sequence[str]) -> None:
    """Put back into `merged` (the model section after the checkpoint's hyper-parameters) each model option that
    `argv` gives (`--model.KEY VALUE`, `--model.KEY=VALUE`, or within a mapping: `_given_keys`) and the checkpoint
    changed."""
    keys = _given_keys(argv, Namespace(model=given))
    for key in sorted(k[len("model."):] for k in keys if k.startswith("model.")):
        try:
            mine, theirs = given[key], merged.get(key)
        except (KeyError, TypeError):
            continue
        if isinstance(mine, Namespace):  # a group (`--model.init_args '{}'`): its given values are keys of their own
            continue
        if mine != theirs:
            log.info("--model.%s: %r as given (the checkpoint's: %r)", key, mine, theirs)
            merged[key] = mine


def _newest_last(cb: ModelCheckpoint) -> Path | None:
    """The newest last checkpoint in `cb`'s folder (last.ckpt, or last-vN.ckpt that a second run into the same
    folder writes), as Lightning resolves "last": by modification time."""
    return _newest_last_in(Path(cb.dirpath), cb.CHECKPOINT_NAME_LAST, cb.FILE_EXTENSION)


def _newest_last_in(folder: Path, name: str = ModelCheckpoint.CHECKPOINT_NAME_LAST,
                    suffix: str = ModelCheckpoint.FILE_EXTENSION) -> Path | None:
    pattern = re.compile(rf"{re.escape(name)}(-v\d+)?{re.escape(suffix)}")
    found = [p for p in folder.glob(f"{name}*") if pattern.fullmatch(p.name)]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def _checkpoint_record(config: Any) -> dict[str, Any]:
    """`MMKitCLI._recorded`'s source: the checkpoint's task hyper-parameters and model config, merged; {} for
    fit, without --ckpt_path, or where the file cannot be found or read."""
    from mmkit.tasks.model_task import MODEL_KEY

    subcommand = config.get("subcommand")
    path = _checkpoint_file(config.get(subcommand)) if subcommand and subcommand != "fit" else None
    if path is None:
        return {}
    try:
        state = _read_checkpoint(path)
        model = (state.get(MODEL_KEY) or {}).get("config") or {}
        return {**model, **(state.get("hyper_parameters") or {})}
    except Exception:  # noqa: BLE001 - unreadable or foreign: Lightning's load of it says so
        return {}


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's record, read with weights_only and (the zip format) a memory map: its tensors are not read
    until used, so reading its hyper-parameters costs no memory for the weights."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))


def _checkpoint_step(path: Path) -> int:
    """The training step a checkpoint records (Lightning's `global_step`), 0 where it cannot be read."""
    try:
        return int(_read_checkpoint(path).get("global_step") or 0)
    except Exception:  # noqa: BLE001 - unreadable or foreign: Lightning's load of it says so
        return 0


def _checkpoint_file(section: Any) -> Path | None:
    """The file a subcommand's --ckpt_path names: a file as it is; "last" and "best" the newest last checkpoint
    of the recipe's folders (as `_fixed_checkpoint_folder` sets them: its callbacks' dirpath, else
    <default_root_dir>/checkpoints), the run whose "best" it records; None where there is none."""
    ckpt = section.get("ckpt_path") if section is not None else None
    if not ckpt:
        return None
    path: Path | None = Path(ckpt).expanduser()
    if ckpt in ("last", "best") and not path.is_file():
        trainer = section.get("trainer") or {}
        folders = [Path(str(cb.init_args.dirpath)) for cb in (trainer.get("callbacks") or [])
                   if str(getattr(cb, "class_path", "")).endswith("ModelCheckpoint")
                   and getattr(getattr(cb, "init_args", None), "dirpath", None)]
        root = Path(trainer.get("default_root_dir") or os.getcwd()).expanduser()
        found = [last for last in map(_newest_last_in, folders or [root / "checkpoints"]) if last is not None]
        path = max(found, key=lambda p: p.stat().st_mtime, default=None)
    return path if path is not None and path.is_file() else None


def _recorded_best(cb: ModelCheckpoint) -> str | None:
    """The best checkpoint the newest last checkpoint in `cb`'s folder records for a callback like `cb` (found in
    that folder if the run's folder was moved), else None: "best" of the run "last" means. Read with weights_only
    and a memory map: no code, no weights read."""
    last = _newest_last(cb)
    if last is None:
        return None
    try:
        state = _read_checkpoint(last).get("callbacks", {})
        recorded = state.get(cb.state_key, {}).get("best_model_path") or ""
    except Exception:  # noqa: BLE001 - missing, unreadable or foreign: no best known
        return None
    for candidate in (Path(recorded), Path(cb.dirpath) / Path(recorded).name) if recorded else ():
        if candidate.is_file():
            return str(candidate)
    return None


def run(argv: list[str], from_console: bool) -> None:
    """Run a LightningCLI subcommand (`argv[0]` in fit/validate/test/predict). Stopped by Ctrl-C, or by SIGTERM,
    it raises KeyboardInterrupt (`Interrupted` once the trainer ran: what the run leaves) for `mmkit.cli.main`
    to say so in one line. Lightning acts on SIGTERM in its fit and evaluation loops (it stops at the end of a
    batch) but never in predict's, which ran to the end: there SIGTERM is raised as Ctrl-C is."""
    signals = _Signals()
    stopping = [signal.SIGINT] + ([signal.SIGTERM] if argv[0] == "predict" else [])
    replaced = _ReplacedByOwnLine()
    for name in _RANK_ZERO_LOGGERS:
        logging.getLogger(name).addFilter(replaced)
    try:
        with signals.during(stopping):
            # From the console LightningCLI reads sys.argv itself; passing it as `args` too makes it warn.
            MMKitCLI(pl.LightningModule, pl.LightningDataModule, trainer_class=Trainer, subclass_mode_model=True,
                     subclass_mode_data=True, signals=signals, argv=argv,
                     save_config_kwargs={"overwrite": True}, args=None if from_console else argv,
                     # predict writes its own output; a config.yaml dropped into the working directory is noise
                     save_config_callback=None if argv[0] == "predict" else SaveConfigCallback)
    finally:
        for name in _RANK_ZERO_LOGGERS:
            logging.getLogger(name).removeFilter(replaced)
