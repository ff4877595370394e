"""The Lightning side of the `mmkit` command: LightningCLI with data-linked arguments, checked
recipe values and one-line errors (the prediction writer is `mmkit.cli.prediction_writer`). Kept
apart from `mmkit.cli` so that tool subcommands (`label`, `transcribe`, `demo`, `bench`) start
without importing Lightning.
"""
from __future__ import annotations

import argparse
import functools
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.plugins.precision import MixedPrecision, Precision
from pytorch_lightning.trainer.connectors.accelerator_connector import _PRECISION_INPUT
from pytorch_lightning.utilities import GradClipAlgorithmType
from pytorch_lightning.utilities.exceptions import MisconfigurationException

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


class Trainer(pl.Trainer):
    """Lightning's Trainer, with precision "auto" added (`training_precision`).

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
    if not detail:
        given = next((line.split(":", 1)[1].strip() for line in lines if line.strip().startswith("Given value:")), "")
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


class MMKitCLI(LightningCLI):
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        parser.error = functools.partial(_one_line_error, parser, parser.error)  # type: ignore[method-assign]
        return parser

    def _parse_ckpt_path(self) -> None:
        """Lightning re-parses the model section from `--ckpt_path`'s saved hyper-parameters; a checkpoint of
        another model or recipe then failed as "the following arguments are required: model". Say so."""
        self.parser.exit_on_error = False
        try:
            super()._parse_ckpt_path()
        except argparse.ArgumentError as e:
            path = self.config[self.config.subcommand].get("ckpt_path")
            raise ValueError(f"--ckpt_path {path}: saved by another model or recipe than this config's "
                             f"({summarise_parse_error(str(e))})") from None
        finally:
            self.parser.exit_on_error = True

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        # Values the data determines are linked, never repeated in the recipe.
        # A data module with no training classes (prediction only) links nothing: the model's
        # checkpoint then supplies its own head and class names.
        parser.link_arguments("data.class_names", "model.init_args.class_names",
                              compute_fn=lambda names: list(names) or None, apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.init_args.model.init_args.num_classes",
                              compute_fn=lambda n: n or None, apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        # Lightning's refusals of --trainer.accelerator/devices (an unknown name, CUDA on a machine
        # without it) are the user's mistake: one line, exit 2, not a traceback.
        try:
            return super().instantiate_trainer(**kwargs)
        except (ValueError, MisconfigurationException) as e:
            raise ValueError(f"trainer: {str(e).strip().splitlines()[0]}") from None

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        for section in ("model", "data"):
            check_hyperparameters(config.get(section), section)

    def before_predict(self) -> None:
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

    def before_fit(self) -> None:
        self._fixed_checkpoint_folder()

    def before_validate(self) -> None:
        self._fixed_checkpoint_folder()

    def before_test(self) -> None:
        self._fixed_checkpoint_folder()

    def _fixed_checkpoint_folder(self) -> None:
        """Checkpoints go to `<default_root_dir>/checkpoints` (unless a recipe names a folder), not
        to a new `lightning_logs/version_N/` per run: `--ckpt_path last` after a crash then finds
        the run's `last.ckpt`. Asking for "last" when there is none is an error, never a fresh start."""
        root = Path(self.trainer.default_root_dir)
        callbacks = [cb for cb in self.trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        for cb in callbacks:
            if cb.dirpath is None:
                cb.dirpath = str((root / "checkpoints").resolve())
        if self.config_init[self.subcommand].get("ckpt_path") != "last":
            return
        found = [Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}" for cb in callbacks]
        if not any(p.is_file() for p in found):
            where = ", ".join(str(p) for p in found) or "(no ModelCheckpoint callback with save_last)"
            raise FileNotFoundError(f"--ckpt_path last: no checkpoint to resume from at {where}; "
                                    "drop --ckpt_path to start a new run")


def run(argv: list[str], from_console: bool) -> None:
    """Run a LightningCLI subcommand (`argv[0]` in fit/validate/test/predict)."""
    # From the console LightningCLI reads sys.argv itself; passing it as `args` too makes it warn.
    MMKitCLI(pl.LightningModule, pl.LightningDataModule, trainer_class=Trainer, subclass_mode_model=True,
             subclass_mode_data=True,
             save_config_kwargs={"overwrite": True}, args=None if from_console else argv,
             # predict writes its own output; a config.yaml dropped into the working directory is noise
             save_config_callback=None if argv[0] == "predict" else SaveConfigCallback)
