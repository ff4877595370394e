"""What every task shares about the one mmkit model it trains (`self.model`): when its export is written at
the end of `fit`, and how a checkpoint rebuilds it.

Export: a task with an `export_dir` hyperparameter writes its inference export in `on_fit_end` to
`export_folder()`. The folder is checked when fit starts (a file there would otherwise be found after the
whole run); a `fast_dev_run` or a fit that ran no training step leaves an earlier export as it is (as
Lightning saves no checkpoint for a fast_dev_run); weights that went non-finite are refused in one line with
nothing written: a diverged run must not replace a good export with one that no loader accepts.

Checkpoints: the tasks keep the model out of their hyperparameters (it is a module, not a setting), so
Lightning's `load_from_checkpoint(path)` could not build one. Each checkpoint records the model's architecture
(an `mmkit.models` class) and constructor config (after `setup`, which may size it from the data: a
vocabulary), and `load_from_checkpoint` rebuilds it from them unless the caller passes `model=`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)

MODEL_KEY = "mmkit_model"  # the checkpoint entry: {"architecture": "ViT", "config": {...}}
BUFFERS_KEY = "mmkit_training_buffers"  # the checkpoint entry: {buffer name: tensor} (`training_buffers`)
RNG_KEY = "mmkit_rng"  # the checkpoint entry: the random generators' states (`rng_states`)


class TrainingDiverged(ValueError):
    """The trained weights are not finite (NaN or infinity): nothing was exported."""


class ModelTask:
    """Mixin for a LightningModule training one mmkit model, `self.model` (a `PretrainedMixin` with `config`)."""

    # hyperparameters replaced when a checkpoint rebuilds the model (SpeechRecognizer: its `checkpoint`)
    rebuilt_hparams: dict[str, Any] = {}

    def on_fit_start(self) -> None:
        folder = self._export_folder()
        if folder is not None and folder.exists() and not folder.is_dir():
            raise ValueError(f"export_dir {folder} is a file, not a folder: give another --model.init_args.export_dir")
        if self.trainer.fast_dev_run:  # type: ignore[attr-defined]
            # Lightning (2.6) suppresses checkpoints in a fast_dev_run except ModelCheckpoint's `save_last` at
            # train end: a smoke run beside a real one left last-v1.ckpt, the newest `last`, which a following
            # `--ckpt_path last` resumed from (one step trained) and exported over the real run's export.
            for callback in self.trainer.checkpoint_callbacks:  # type: ignore[attr-defined]
                if getattr(callback, "save_last", None):
                    callback.save_last = False
        # this run's optimizer settings, before a resume restores the checkpoint's over them (`on_train_start`)
        self._configured = _optimizer_settings(self.trainer)  # type: ignore[attr-defined]
        self._check_resumed_groups()

    def on_train_start(self) -> None:
        """A resumed run trains with this run's optimizer settings (learning rate, weight decay, betas, ...: a
        new `--model.init_args.lr` given with `--ckpt_path`), the optimizer's moments and the step restored; and
        its learning rates are those of its schedule at the step it resumes from. The checkpoint's settings
        replaced them all (Lightning restores the optimizers' and schedulers' states whole), and its schedule is
        built from this run's length: resumed with another --trainer.max_epochs or max_steps, the restored rates
        (the old schedule's: 0 at its end) drove the first step before the new schedule took over at the next
        (lr 0, then 63% of the peak)."""
        if self.trainer.ckpt_path is None:  # type: ignore[attr-defined]
            return
        _reapply_optimizer_settings(self.trainer, getattr(self, "_configured", None))  # type: ignore[attr-defined]
        for config in self.trainer.lr_scheduler_configs:  # type: ignore[attr-defined]
            schedule = config.scheduler
            if not isinstance(schedule, torch.optim.lr_scheduler.LambdaLR):
                continue
            rates = [base * rule(schedule.last_epoch) for base, rule in zip(schedule.base_lrs, schedule.lr_lambdas)]
            groups = schedule.optimizer.param_groups
            if any(not math.isclose(group["lr"], rate, rel_tol=1e-6, abs_tol=1e-12)
                   for group, rate in zip(groups, rates)):
                log.info("resumed at step %d: learning rate %.3g (the checkpoint's %.3g), its schedule's for this "
                         "run's length", schedule.last_epoch, rates[0], groups[0]["lr"])
                for group, rate in zip(groups, rates):
                    group["lr"] = rate
                schedule._last_lr = rates

    def export_folder(self) -> Path | None:
        """Where `on_fit_end` writes the export, or None for no export: an export_dir is set, this is the first
        process, the run trained (not a fast_dev_run; at least one optimizer step) and every weight is finite.

        Raises:
            TrainingDiverged: a weight is NaN or infinite; nothing is written (one line at the command line).
        """
        assert isinstance(self, pl.LightningModule)
        folder = self._export_folder()
        if folder is None or not self.trainer.is_global_zero:
            return None
        if self.trainer.fast_dev_run:
            log.info("fast_dev_run: nothing exported (%s left as it is)", folder)
            return None
        resumed_trainer, first = getattr(self, "_first_step", (None, 0))  # this trainer's resume, not an earlier
        if self.trainer.global_step == (first if resumed_trainer is self.trainer else 0):  # fit's of this model
            log.warning("no training step ran: nothing exported (%s left as it is)", folder)
            return None
        bad = [name for name, p in self.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise TrainingDiverged(f"training diverged: non-finite weights (NaN or infinity) in {shown} after "
                                   f"{self.trainer.global_step} steps; nothing exported to {folder} (try a lower "
                                   "learning rate, or --trainer.gradient_clip_val)")
        return folder

    def _export_folder(self) -> Path | None:
        export_dir = self.hparams.get("export_dir")  # type: ignore[attr-defined]
        return Path(export_dir).expanduser() if export_dir else None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        model = self.model  # type: ignore[attr-defined]
        if hasattr(model, "architecture_name"):  # an mmkit model (another module is the caller's to rebuild)
            # the architecture, not the class: PretrainedViT is a ViT built from a folder, rebuilt as a ViT
            checkpoint[MODEL_KEY] = {"architecture": model.architecture_name(), "config": model.config}
        buffers = training_buffers(model)
        if buffers:
            checkpoint[BUFFERS_KEY] = buffers
        checkpoint[RNG_KEY] = _every_ranks_rng_states(getattr(self, "_trainer", None))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Before the weights load: a checkpoint whose tensors do not fit this model is one line naming the
        config fields it recorded that differ (`mmkit test --ckpt_path last` without the sizes the fit was given:
        Lightning's size-mismatch table, or "a checkpoint of another model", said less). A resume also needs the
        optimizer states, fitting this run's parameter groups (`_check_resumed_groups`)."""
        _check_class_names(checkpoint, self.hparams.get("class_names"))  # type: ignore[attr-defined]
        trainer = getattr(self, "_trainer", None)
        resuming = trainer is not None and trainer.state.fn == "fit"
        if resuming:
            _check_training_state(checkpoint, trainer)
            hparams = checkpoint.get("hyper_parameters")
            self._resumed_groups = (trainer, _group_sizes(checkpoint, trainer), hparams if isinstance(hparams, dict)
                                    else {})
            self._check_resumed_groups()  # a strategy that restores after its setup has its optimizers already
        record, saved = checkpoint.get(MODEL_KEY), checkpoint.get("state_dict")
        if not isinstance(record, dict) or not isinstance(record.get("config"), dict) or not isinstance(saved, dict):
            return  # a checkpoint from before the record: Lightning's own load says what does not fit
        mine = self.state_dict()  # type: ignore[attr-defined]
        if {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in mine.items()}:
            _restore_training_buffers(self.model, checkpoint.get(BUFFERS_KEY))  # type: ignore[attr-defined]
            if resuming:
                self._first_step = (trainer, checkpoint.get("global_step", 0))  # `export_folder`: did it train?
                # it draws what the run would have drawn (Lightning's sanity check then runs RNG-isolated)
                set_rng_states(_this_ranks(checkpoint.get(RNG_KEY), trainer))
            return
        ours = getattr(self.model, "config", {})  # type: ignore[attr-defined]
        theirs = record["config"]
        diffs = [f"{k} {theirs.get(k)!r} (here {ours.get(k)!r})" for k in sorted(set(theirs) | set(ours), key=str)
                 if theirs.get(k) != ours.get(k)]
        raise ValueError(f"the checkpoint's {record.get('architecture', 'model')} does not fit this run's: it has "
                         f"{', '.join(diffs) if diffs else 'other tensors'}; give the sizes it was trained with "
                         "(--model.init_args.model.init_args...), or another checkpoint")

    def _check_resumed_groups(self) -> None:
        """Refuse, before Lightning restores them, optimizer states whose parameter groups do not hold as many
        tensors as this run's optimizers' (an option that changes which parameters train, such as CLIPTask's
        lock_image, given on a resume): torch's `load_state_dict` raised a ValueError about parameter groups, a
        traceback. Nothing to check until both the checkpoint is read and this run's optimizers are set up
        (`on_load_checkpoint` and `on_fit_start`, in the order of the strategy)."""
        trainer, saved, saved_hparams = getattr(self, "_resumed_groups", (None, [], {}))
        if trainer is None or trainer is not getattr(self, "_trainer", None) or not trainer.optimizers:
            return
        # pairwise, as Lightning's strategy loads them
        pairs = [(theirs, [len(group["params"]) for group in optimizer.param_groups])
                 for optimizer, theirs in zip(trainer.optimizers, saved)]
        theirs, mine = next(((theirs, mine) for theirs, mine in pairs if theirs != mine), (None, None))
        if theirs is None:
            return
        hparams = dict(self.hparams)  # type: ignore[attr-defined]
        differ = [f"--model.init_args.{k} {_shown(hparams[k])}, the run's {_shown(saved_hparams[k])}"
                  for k in sorted(hparams) if k in saved_hparams and k != "export_dir"
                  and not isinstance(hparams[k], (torch.nn.Module, list, dict)) and hparams[k] != saved_hparams[k]]
        raise ValueError(f"--ckpt_path {trainer.ckpt_path}: the checkpoint's optimizer state does not fit this run's "
                         f"parameter groups (tensors per group: {_counts(theirs)}; here {_counts(mine)}): an option "
                         "that changes which parameters train differs from the run's"
                         + (f": {'; '.join(differ)}" if differ else "")
                         + "; resume with the run's options, or drop --ckpt_path to start a new run")

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, *args: Any,
                             **kwargs: Any) -> Any:
        """Lightning's `load_from_checkpoint`, the model rebuilt from the checkpoint's record of it (its
        architecture and config) unless `model=` is given; the record is read with `torch.load(weights_only=True)`."""
        if "model" not in kwargs:
            kwargs = {**kwargs, **cls.rebuilt_hparams, "model": _rebuilt_model(checkpoint_path)}
        return super().load_from_checkpoint(checkpoint_path, map_location, *args, **kwargs)  # type: ignore[misc]


def _check_training_state(checkpoint: dict[str, Any], trainer: Any) -> None:
    """Refuse to resume from a checkpoint without the optimizer and scheduler states Lightning restores (one that
    `ModelCheckpoint(save_weights_only=True)` wrote): Lightning's KeyError ("checkpoint contains only the model")
    came after the step was restored, a traceback. (A bare state_dict is no Lightning checkpoint: refused before.)"""
    lacks = [key for key, needed in (("optimizer_states", trainer.strategy.lightning_restore_optimizer),
                                     ("lr_schedulers", True)) if needed and key not in checkpoint]
    if lacks:
        raise ValueError(f"--ckpt_path {trainer.ckpt_path}: the checkpoint holds the model's weights only (saved with "
                         f"save_weights_only: no {' or '.join(lacks)}), so it cannot resume training; score it "
                         "with mmkit validate or test --ckpt_path, or drop --ckpt_path to start a new run")


def _group_sizes(checkpoint: dict[str, Any], trainer: Any) -> list[list[int]]:
    """The number of tensors in each parameter group of each optimizer state the checkpoint holds (none where
    Lightning does not restore them: DeepSpeed's own)."""
    states = checkpoint.get("optimizer_states")
    if not isinstance(states, list) or not trainer.strategy.lightning_restore_optimizer:
        return []
    return [[len(group.get("params", ())) for group in state.get("param_groups", ()) if isinstance(group, dict)]
            for state in states if isinstance(state, dict)]


def _shown(value: Any) -> str:
    """A hyper-parameter's value as a command line gives it (true, 0.001, null)."""
    return json.dumps(value) if isinstance(value, (bool, int, float, type(None))) else str(value)


def _counts(sizes: list[int]) -> str:
    return ", ".join(map(str, sizes)) or "no groups"


def _check_class_names(checkpoint: dict[str, Any], names: Any) -> None:
    """Refuse data whose class names (linked from the data module: its class folders' names, sorted) are not
    the ones the checkpoint was trained with: a test_dir alone numbers its own folders, and test/acc was scored
    against other classes (0.0, exit 0), or a folder missing from it was "a model of other sizes"."""
    saved = (checkpoint.get("hyper_parameters") or {}).get("class_names")
    if not isinstance(saved, (list, tuple)) or not names or list(names) == list(saved):
        return

    def shown(items: Any) -> str:
        items = list(items)
        return ", ".join(map(str, items[:8])) + (f" and {len(items) - 8} more" if len(items) > 8 else "")

    raise ValueError(f"the data's classes ({shown(names)}) are not the checkpoint's ({shown(saved)}): give data of the "
                     "classes it was trained with (image folders: a test_dir or val_dir alone names its own class "
                     "folders; --data.init_args.train_dir takes them from the training folder)")


def _optimizer_settings(trainer: Any) -> dict[str, Any]:
    """The trainer's optimizers' group settings (all but the parameters and the scheduled "lr") and its
    schedulers' base rates, as configured for this run."""
    groups = [[{k: v for k, v in group.items() if k not in ("params", "lr")} for group in optimizer.param_groups]
              for optimizer in trainer.optimizers]
    bases = [list(getattr(config.scheduler, "base_lrs", [])) for config in trainer.lr_scheduler_configs]
    return {"groups": groups, "base_lrs": bases}


def _reapply_optimizer_settings(trainer: Any, configured: dict[str, Any] | None) -> None:
    """`_optimizer_settings` back over the ones a checkpoint restored, where the optimizers and schedulers have
    the same shape (the same groups); each setting that differs is logged once ("lr" through the base rates)."""
    if not configured or [len(groups) for groups in configured["groups"]] != [
            len(optimizer.param_groups) for optimizer in trainer.optimizers]:
        return  # other optimizers or groups than the checkpoint's: nothing changed, Lightning's restore stands
    changed: dict[str, tuple[Any, Any]] = {}
    for optimizer, groups in zip(trainer.optimizers, configured["groups"]):
        for group, settings in zip(optimizer.param_groups, groups):
            for key, value in settings.items():
                if key in group and _differs(group[key], value):
                    changed.setdefault(key, (value, group[key]))
                    group[key] = value
    for config, bases in zip(trainer.lr_scheduler_configs, configured["base_lrs"]):
        schedule = config.scheduler
        if bases and len(bases) == len(getattr(schedule, "base_lrs", [])) and list(schedule.base_lrs) != bases:
            changed.setdefault("base learning rate", (bases[0], schedule.base_lrs[0]))
            schedule.base_lrs = list(bases)
    changed.pop("initial_lr", None)  # the base rate's twin
    for key, (mine, theirs) in changed.items():
        log.info("resumed with this run's %s %r (the checkpoint's %r)", key, mine, theirs)


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):  # a capturable optimizer's tensor settings
        return not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b))
    return bool(a != b)


def training_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The training state a model keeps in non-persistent buffers, left out of its state dict (and so of its
    export and of the reference formats it imports): those its modules name in `training_buffers` (the VQ
    codebook's EMA sums and counts and its usage counts), by their full names. Kept in a Lightning checkpoint so a
    resumed run goes on from them: restarted from the initial ones, a resumed VQGAN's first step moved the
    trained codebook halfway back to its random start."""
    found = {}
    for prefix, module in model.named_modules():
        for name in getattr(module, "training_buffers", ()):
            buffer = getattr(module, name, None)
            if isinstance(buffer, torch.Tensor):
                found[f"{prefix}.{name}" if prefix else name] = buffer.detach()
    return found


def _restore_training_buffers(model: torch.nn.Module, saved: Any) -> None:
    """`training_buffers` back from a checkpoint's record (each of the same shape; a checkpoint from before the
    record, or of a model without them, leaves them as they are)."""
    if not isinstance(saved, dict):
        return
    with torch.no_grad():
        for name, buffer in training_buffers(model).items():
            value = saved.get(name)
            if isinstance(value, torch.Tensor) and value.shape == buffer.shape:
                buffer.copy_(value)


def rng_states() -> dict[str, Any]:
    """The states of torch's, CUDA's (this process's device), NumPy's and Python's global random generators, in
    types a weights_only load reads. Lightning keeps none in its checkpoints: a resumed run re-seeded them as a new
    one, so its augmentations, dropout and workers' seeds replayed the first epochs' draws. (A checkpoint of a
    multi-process run holds every rank's: `_every_ranks_rng_states`.)"""
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": [version, list(state), gauss],
              "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()  # this process's device: under DDP each rank has its own
    return states


def _every_ranks_rng_states(trainer: Any) -> dict[str, Any]:
    """This process's `rng_states`, and under a multi-process strategy (DDP, FSDP, DeepSpeed) every rank's as
    "ranks", gathered from all of them (a checkpoint is saved by every rank together, written by the first). Ranks
    start alike (one seed) but can draw different amounts (batches of other lengths: SpecAugment's masks, BERT's
    masking); resumed from the first process's states alone, the other ranks drew numbers the uninterrupted run
    did not."""
    states = rng_states()
    dist = torch.distributed
    if trainer is None or trainer.world_size < 2 or not (dist.is_available() and dist.is_initialized()):
        return states
    ranks: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, states)  # between this run's own processes (the group Lightning set up)
    return {**states, "ranks": ranks}


def _this_ranks(states: Any, trainer: Any) -> Any:
    """The states this rank saved, where the checkpoint holds every rank's and the run has as many; else the
    first process's (a checkpoint of one process, or of a run with another number of ranks)."""
    ranks = states.get("ranks") if isinstance(states, dict) else None
    if isinstance(ranks, list) and len(ranks) == trainer.world_size and 0 <= trainer.global_rank < len(ranks):
        return ranks[trainer.global_rank]
    return states


def set_rng_states(states: Any) -> None:
    """`rng_states` back (a checkpoint from before they were kept, or a partial record, leaves what it lacks)."""
    if not isinstance(states, dict):
        return
    if isinstance(states.get("torch"), torch.Tensor):
        torch.set_rng_state(states["torch"])
    if isinstance(states.get("python"), list):
        version, state, gauss = states["python"]
        random.setstate((version, tuple(state), gauss))
    if isinstance(states.get("numpy"), list):
        name, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if isinstance(states.get("cuda"), torch.Tensor) and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def _rebuilt_model(checkpoint_path: Any) -> torch.nn.Module:
    """The randomly initialised model a checkpoint's `MODEL_KEY` record describes (its weights load after). A file
    path is memory-mapped, so that reading the record does not read every tensor before Lightning's load does."""
    mmap = isinstance(checkpoint_path, (str, os.PathLike)) and zipfile.is_zipfile(checkpoint_path)  # torch.save's
    record = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=mmap).get(MODEL_KEY)
    if hasattr(checkpoint_path, "seek"):
        checkpoint_path.seek(0)
    if not isinstance(record, dict) or not isinstance(record.get("architecture"), str):
        raise ValueError(f"{checkpoint_path}: the checkpoint does not record its model (saved before mmkit did, or "
                         "not an mmkit model): pass model= with the model it was trained with")
    import mmkit.models

    name = record["architecture"]
    model_class = getattr(mmkit.models, name, None) if name in mmkit.models.__all__ else None
    if model_class is None:
        raise ValueError(f"{checkpoint_path}: its model architecture {name!r} is not one of mmkit's")
    model_class.check_config(record["config"], f"{checkpoint_path}: recorded model config")
    return model_class.build(record["config"])
