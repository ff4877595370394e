"""`mmkit predict`'s output: `PredictionWriter`, the Lightning callback that writes one row per input
(in input order, unreadable files included) to CSV/JSON/JSONL, on one process or several (each streams
its share to a shard that process 0 merges: `mmkit.inference.prediction_shards`).
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.plugins.precision import MixedPrecision

from mmkit.inference.classifier import Prediction
from mmkit.inference.precision import PRECISIONS, resolve_precision
from mmkit.inference.prediction_shards import (InputRows, ShardWriter, inputs_digest, merged_predictions,
                                               read_shard, shard_path)
from mmkit.inference.quantize import QUANTIZATIONS, apply_quantization, describe
from mmkit.inference.writers import OUTPUT_SUFFIXES, OutputConflict, PredictionFile

log = logging.getLogger("mmkit")

# Lightning's names for the arithmetic `resolve_precision` picks
LIGHTNING_PRECISION = {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true"}


class PredictionWriter(BasePredictionWriter):
    """Write `mmkit predict` results to CSV/JSON/JSONL, one row per input in input order, including
    the files that could not be read (with the reason) so nothing is dropped silently. The output
    location is checked before predicting (an unwritable one fails at once, in one line); rows are
    streamed to a temporary file as batches finish and renamed over the output at the end. In CSV,
    cells a spreadsheet would run as formulas get a leading "'" (`mmkit.inference.writers.csv_safe`).

    On several processes (`--trainer.devices N`, torchrun, SLURM) each predicts its share of the inputs
    and streams its rows to a shard beside the output; process 0 merges them into the same file one
    process writes (`mmkit.inference.prediction_shards`). The output folder must be one all nodes share.

    Args:
        output: predictions.csv, .json or .jsonl.
        precision: the arithmetic of the prediction run, as `mmkit label --precision`: "fp32" (exact,
            the default: `--trainer.precision` decides), "auto" (bf16 where the hardware has it
            natively, else fp32), "bf16" or "fp16" (autocast through Lightning's mixed precision).
        quantize: "none", or "int8": int8 weights for the model's Linear layers (CPU only; the
            patch embedding stays an fp32 convolution; `mmkit.inference.quantize`).
    """

    def __init__(self, output: str = "predictions.csv", precision: str = "fp32", quantize: str = "none") -> None:
        super().__init__(write_interval="batch")
        if Path(output).suffix not in OUTPUT_SUFFIXES:  # fail before predicting, not after
            raise ValueError(f"prediction_writer.output {output}: use one of {', '.join(OUTPUT_SUFFIXES)}")
        if precision not in PRECISIONS or quantize not in QUANTIZATIONS:
            raise ValueError(f"prediction_writer: precision must be one of {', '.join(PRECISIONS)} and quantize one "
                             f"of {', '.join(QUANTIZATIONS)}; got {precision!r} and {quantize!r}")
        self.output, self.precision, self.quantize = output, precision, quantize
        self._file: PredictionFile | None = None
        self._inputs: list[tuple[str, str | None]] = []
        self._rows = InputRows([])  # one process: the rows of `_inputs` in order as batches end
        self._shard: ShardWriter | None = None  # this process's rows, on several processes
        self._shards: list[Path] = []  # the other processes' shards (process 0 merges and removes them)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "predict":
            self._arithmetic(trainer, pl_module)
            if trainer.world_size > 1:
                self._start_shard(trainer)
            else:
                self._open(trainer)
            if trainer.is_global_zero:
                _warn_on_other_preprocessing(trainer.datamodule, pl_module)

    def check_before_launch(self, trainer: pl.Trainer, datamodule: Any) -> None:
        """The checks `setup` makes, on the process that starts the others, before it does: a mistake is
        then one line from one process. Scans the inputs (the data module keeps the scan)."""
        self._checked_arithmetic(trainer)
        PredictionFile(self.output).abort()  # raises (one line) when the location is unwritable
        if hasattr(datamodule, "predict_inputs"):
            datamodule.setup("predict")
            problem = _too_few_inputs(len(datamodule.predict_files), trainer.world_size)
            if problem:
                raise ValueError(problem)

    def _checked_arithmetic(self, trainer: pl.Trainer) -> str | None:
        """The mixed precision Lightning must switch to for `precision` (None: trainer.precision's stays),
        after refusing the combinations that cannot run."""
        device = trainer.strategy.root_device
        precision = resolve_precision(self.precision, device, self.quantize)  # ValueError: fp16 on a CPU
        if self.quantize != "none" and trainer.precision not in ("32-true", "32"):
            raise ValueError(f"prediction_writer.quantize {self.quantize} runs on fp32 activations; "
                             f"trainer.precision is {trainer.precision}")
        mixed, switch = LIGHTNING_PRECISION[precision], None
        if mixed != "32-true" and trainer.precision != mixed:
            if trainer.precision not in ("32-true", "32"):
                raise ValueError(f"prediction_writer.precision {self.precision} and trainer.precision "
                                 f"{trainer.precision}: give one of the two")
            switch = mixed
        if self.quantize != "none" and device.type != "cpu":
            raise ValueError(f"prediction_writer.quantize {self.quantize} runs on the CPU; this run uses {device}")
        return switch

    def _arithmetic(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Apply `precision` and `quantize` (before the strategy moves the model to its device) and
        log the run's arithmetic once. Autocast stays Lightning's: a mixed-precision plugin."""
        device = trainer.strategy.root_device
        mixed = self._checked_arithmetic(trainer)
        if mixed is not None:
            trainer.strategy.precision_plugin = MixedPrecision(mixed, device.type)
        apply_quantization(pl_module, self.quantize)
        if not trainer.is_global_zero:
            return
        compute = {"bf16-mixed": "bf16", "bf16-true": "bf16", "16-mixed": "fp16"}.get(trainer.precision, "fp32")
        log.info("predicting on %s with %s%s%s", device, describe(compute, self.quantize, device),
                 "" if trainer.precision in ("32-true", "32", "bf16-mixed", "16-mixed")
                 else f" (trainer.precision {trainer.precision})",
                 f" on {trainer.world_size} processes" if trainer.world_size > 1 else "")

    def _open(self, trainer: pl.Trainer) -> PredictionFile:
        if self._file is None:
            self._file = PredictionFile(self.output)  # raises (one line) when the location is unwritable
            self._inputs = _inputs(trainer.datamodule)
            self._rows = InputRows(self._inputs)
        return self._file

    def _start_shard(self, trainer: pl.Trainer) -> None:
        """On every process, before any predicts: process 0 checks the output location and names the run;
        each checks that it found process 0's inputs and opens its shard. If any of that fails anywhere,
        every process raises (no process predicts)."""
        strategy, rank = trainer.strategy, trainer.global_rank
        self._inputs = _inputs(trainer.datamodule)
        digest = inputs_digest(self._inputs)
        problem = None
        if rank == 0:
            try:
                PredictionFile(self.output).abort()
            except (OSError, ValueError) as e:
                problem = str(e)
        problem, token, first = strategy.broadcast((problem, secrets.token_hex(4), digest), src=0)
        if problem is None and digest != first:
            problem = (f"predict: process {rank} found other inputs than process 0 (did files change as the "
                       f"run started?); nothing was written")
        problem = problem or _too_few_inputs(sum(r is None for _, r in self._inputs), trainer.world_size)
        out = Path(self.output).expanduser()
        self._shards = [shard_path(out, token, r) for r in range(1, trainer.world_size)]
        if problem is None:
            try:
                self._shard = ShardWriter(None if rank == 0 else self._shards[rank - 1], out.parent)
            except OSError as e:
                problem = f"predict: cannot write process {rank}'s rows beside {out}: {e.strerror or e}"
        if not strategy.reduce_boolean_decision(problem is None, all=True):
            raise OutputConflict(problem or "predict: another process could not start (see its error); "
                                 "nothing was written")
        unseen = [path for path in self._shards if rank == 0 and not path.is_file()]  # process 0 reads them
        if not strategy.reduce_boolean_decision(not unseen, all=True):
            raise OutputConflict(_unshared(unseen[0] if unseen else self._shards[rank - 1]))

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        if self._shard is not None:
            self._shard.write([(i, labels, probs) for i, (labels, probs) in
                               zip(prediction["indices"], prediction["top_k"])])
            return
        out = self._open(trainer)
        rows: list[Prediction] = []
        for i, (labels, probs) in sorted(zip(prediction["indices"], prediction["top_k"])):
            rows += self._rows.predicted(i, labels, probs)
        out.write(rows)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Not on_predict_epoch_end: when no input is readable Lightning skips the predict loop
        # and its hooks, and the unreadable files must still get their rows.
        if stage != "predict":
            return
        if self._shard is not None:
            self._merge(trainer)
            return
        out = self._open(trainer)
        out.write(self._rows.rest())
        counts = out.commit()
        self._file = None
        log.info("wrote %d predictions (%d unreadable) to %s", counts["ok"], counts["failed"], self.output)

    def _merge(self, trainer: pl.Trainer) -> None:
        """Every process's rows are in its shard: process 0 merges them into the output (the others are done)."""
        import torch.distributed as dist

        assert self._shard is not None
        self._shard.finish()
        if not (dist.is_available() and dist.is_initialized()):  # strategy.barrier would not wait
            raise RuntimeError("predict: several processes but no torch.distributed process group")
        try:
            trainer.strategy.barrier("mmkit_predict_shards")
        except Exception as e:  # noqa: BLE001 - a process that died (its own error says why) broke the group
            raise OutputConflict(f"predict: another process failed ({type(e).__name__} in the barrier after "
                                 "predicting; its own error says why); nothing was written") from None
        if not trainer.is_global_zero:
            self._shard = None  # process 0 removes it
            return
        missing = [p for p in self._shards if not p.is_file()]
        if missing:
            raise OutputConflict(_unshared(missing[0]))
        out = PredictionFile(self.output)
        try:
            rows = merged_predictions(self._inputs, [self._shard.rows(), *map(read_shard, self._shards)])
            while chunk := list(itertools.islice(rows, _MERGE_CHUNK)):
                out.write(chunk)
        except BaseException:
            out.abort()
            raise
        counts = out.commit()
        self._discard_shards(trainer)
        log.info("wrote %d predictions (%d unreadable) to %s", counts["ok"], counts["failed"], self.output)

    def _discard_shards(self, trainer: pl.Trainer) -> None:
        if self._shard is not None:
            self._shard.discard()
            self._shard = None
        if trainer.is_global_zero:
            for path in self._shards:
                with contextlib.suppress(OSError):  # never hide the error that brought us here
                    path.unlink(missing_ok=True)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._file is not None:  # no half-written output
            self._file.abort()
            self._file = None
        self._discard_shards(trainer)  # nor a shard left behind


_MERGE_CHUNK = 1024  # rows per write while merging shards


def _inputs(datamodule: Any) -> list[tuple[str, str | None]]:
    """Every input in order with the reason it was skipped (None: readable): the data module's
    `predict_inputs`, or, for one that keeps only the readable `predict_files`, those."""
    if hasattr(datamodule, "predict_inputs"):
        return list(datamodule.predict_inputs)
    return [(str(path), None) for path in getattr(datamodule, "predict_files", [])]


def _unshared(shard: Path) -> str:
    return (f"predict: process 0 cannot see {shard}: each process writes its rows beside the output, so on "
            "several nodes its folder must be one they all share; nothing was written")


def _too_few_inputs(readable: int, processes: int) -> str | None:
    """Lightning's predict sampler gives each process at least one input, or none at all."""
    if 0 < readable < processes:
        return (f"predict: {readable} readable input(s) for {processes} processes; use at most {readable} "
                f"(--trainer.devices x --trainer.num_nodes)")
    return None


def _warn_on_other_preprocessing(datamodule: Any, pl_module: pl.LightningModule) -> None:
    """The predict recipe names its preprocessing (image size, crop, mean/std) beside the checkpoint, whose
    export records the one it was validated with: say so when they differ, since every prediction changes."""
    from mmkit.tasks.image_classifier import eval_metadata

    saved = getattr(getattr(pl_module, "model", None), "metadata", None) or {}
    used = eval_metadata(datamodule) if datamodule is not None else {}
    differ = [f"{k} {used[k]} (checkpoint: {saved[k]})" for k in used if k in saved and used[k] != saved[k]]
    if differ:
        log.warning("predict: the data's preprocessing differs from the checkpoint's: %s; predictions use the "
                    "data's (set --data.init_args.* to the checkpoint's values to match its validation)",
                    ", ".join(differ))
