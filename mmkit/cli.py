"""The `mmkit` command: LightningCLI subcommands (fit/validate/test/predict) over YAML recipes
in configs/, plus tool subcommands (`bench`, `demo`) dispatched to their own parsers.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from mmkit.tasks.classify import OUTPUT_SUFFIXES, Prediction, write_predictions

log = logging.getLogger("mmkit")

# Tool subcommands: name -> (one-line help, "module:function" taking argv and returning an exit code).
# Imported only when called, so `mmkit fit` does not pay for Gradio or benchmark imports.
TOOLS = {
    "bench": ("benchmarks against the reference implementation (mmkit bench vit --help)", "mmkit.bench:main"),
    "demo": ("Gradio demos in the browser (mmkit demo vit --help)", "mmkit.demos:main"),
    "transcribe": ("speech to text with a Whisper checkpoint (mmkit transcribe --help)", "mmkit.tasks.transcribe:main"),
}


class PredictionWriter(BasePredictionWriter):
    """Write `mmkit predict` results to CSV/JSON/JSONL, one row per input image, including
    the files that could not be read (with the reason) so nothing is dropped silently."""

    def __init__(self, output: str = "predictions.csv") -> None:
        super().__init__(write_interval="batch")
        if Path(output).suffix not in OUTPUT_SUFFIXES:  # fail before predicting, not after
            raise ValueError(f"prediction_writer.output {output}: use one of {', '.join(OUTPUT_SUFFIXES)}")
        self.output = output
        self._rows: list[Prediction] = []

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        files = trainer.datamodule.predict_files
        for i, (labels, probs) in zip(prediction["indices"], prediction["top_k"]):
            self._rows.append(Prediction(str(files[i]), labels, probs))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Not on_predict_epoch_end: when no input is readable Lightning skips the predict loop
        # and its hooks, and the unreadable files must still get their rows.
        if stage != "predict":
            return
        skipped = [Prediction(str(p), error=reason) for p, reason in getattr(trainer.datamodule, "skipped", [])]
        done = {r.path for r in self._rows}
        late = [Prediction(str(p), error="unreadable image (skipped while loading)")
                for p in trainer.datamodule.predict_files if str(p) not in done]
        rows = sorted(self._rows + skipped + [r for r in late if r.path not in {s.path for s in skipped}],
                      key=lambda r: r.path)
        counts = write_predictions(rows, self.output)
        log.info("wrote %d predictions (%d unreadable) to %s", counts["ok"], counts["failed"], self.output)
        self._rows = []


class MMKitCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        # Values the data determines are linked, never repeated in the recipe.
        # A data module with no training classes (prediction only) links nothing: the model's
        # checkpoint then supplies its own head and class names.
        parser.link_arguments("data.class_names", "model.init_args.class_names",
                              compute_fn=lambda names: list(names) or None, apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.init_args.model.init_args.num_classes",
                              compute_fn=lambda n: n or None, apply_on="instantiate")


def _raised_in_mmkit(e: BaseException) -> bool:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE_DIR)


_PACKAGE_DIR = Path(__file__).resolve().parent


def _run_tool(name: str, argv: list[str]) -> int:
    import importlib

    module, _, function = TOOLS[name][1].partition(":")
    return getattr(importlib.import_module(module), function)(argv)


def main(argv: list[str] | None = None) -> int:
    from_console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in TOOLS:
        return _run_tool(argv[0], argv[1:]) or 0
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mmkit {fit,validate,test,predict} --config configs/<recipe>.yaml [options]\n"
              "       mmkit {" + ",".join(TOOLS) + "} ...\n\n"
              + "\n".join(f"  {k:9s} {v[0]}" for k, v in TOOLS.items())
              + "\n  fit/validate/test/predict: LightningCLI (mmkit fit --help, --print_config)")
        if not argv:
            return 2
    # From the console LightningCLI reads sys.argv itself; passing it as `args` too makes it warn.
    try:
        MMKitCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                 save_config_kwargs={"overwrite": True}, args=None if from_console else argv,
                 # predict writes its own output; a config.yaml dropped into the working directory is noise
                 save_config_callback=None if argv[0] == "predict" else SaveConfigCallback)
    except Exception as e:  # noqa: BLE001 - user errors become one line; anything else re-raises
        user_error = _user_error(e)
        if user_error is None:
            raise
        print(f"mmkit {argv[0]}: error: {user_error}", file=sys.stderr)
        return 2
    return 0


def _user_error(e: BaseException) -> str | None:
    """The message of a user-facing error (bad checkpoint, bad file, bad value) anywhere in the
    exception chain, which jsonargparse wraps while instantiating classes; None otherwise."""
    from mmkit.weights.native import WeightsError

    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (WeightsError, FileNotFoundError, FileExistsError)):
            return str(e)
        if isinstance(e, ValueError) and _raised_in_mmkit(e):  # our argument checks, e.g. a bad output suffix
            return str(e)
        e = e.__cause__ or e.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
