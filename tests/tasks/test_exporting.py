"""When a task's `on_fit_end` writes its export (`mmkit.tasks.exporting.ExportsOnFitEnd`, every task): a
fast_dev_run or a fit without a training step leaves an earlier export as it is, weights gone non-finite are
one line with nothing written, and an export_dir that is a file is refused before training."""
from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from _gpt import tiny_corpus
from _training import fit_single_threaded

from mmkit.data.text_blocks import TextBlocksDataModule
from mmkit.models import GPT
from mmkit.tasks.exporting import TrainingDiverged
from mmkit.tasks.language_model import LanguageModel


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("exporting")
    path = root / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(60)))
    return root


def _fit(corpus, export_dir, callbacks=(), **trainer_args):
    data = TextBlocksDataModule(files=[str(corpus / "corpus.jsonl")], tokenizer=str(corpus / "tok"), vocab_size=300,
                                block_size=16, val_fraction=0.1, batch_size=8)
    pl.seed_everything(0)
    task = LanguageModel(GPT(max_len=16, dim=16, depth=1, num_heads=2), lr=1e-3, export_dir=str(export_dir))
    trainer = pl.Trainer(**{"max_steps": 2, "limit_val_batches": 1, **trainer_args}, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=list(callbacks))
    fit_single_threaded(trainer, task, data)
    return trainer


def _earlier_export(folder):
    folder.mkdir()
    (folder / "config.json").write_text("{\"earlier\": true}\n")
    return (folder / "config.json").read_bytes()


def test_a_trained_run_exports(corpus, tmp_path):
    _fit(corpus, tmp_path / "export")
    assert (tmp_path / "export" / "config.json").is_file() and (tmp_path / "export" / "model.safetensors").is_file()


@pytest.mark.parametrize("trainer_args", [{"fast_dev_run": True}, {"limit_train_batches": 0}],
                         ids=["fast_dev_run", "no_training_step"])
def test_a_check_run_leaves_the_earlier_export_as_it_is(corpus, tmp_path, trainer_args):
    before = _earlier_export(tmp_path / "export")  # was overwritten by a one-step (or untrained) model
    _fit(corpus, tmp_path / "export", **trainer_args)
    assert (tmp_path / "export" / "config.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json"]


class _Diverge(pl.Callback):
    def on_train_end(self, trainer, pl_module):  # as a run whose loss went NaN leaves its weights
        with torch.no_grad():
            pl_module.model.tok_embed.weight[0, 0] = float("nan")


def test_non_finite_weights_are_one_line_and_nothing_is_exported(corpus, tmp_path):
    before = _earlier_export(tmp_path / "export")
    with pytest.raises(TrainingDiverged) as err:  # was exit 0 and an export that no loader accepts
        _fit(corpus, tmp_path / "export", callbacks=[_Diverge()])
    message = str(err.value)
    assert "\n" not in message and "model.tok_embed.weight" in message and "nothing exported" in message
    assert (tmp_path / "export" / "config.json").read_bytes() == before


def test_an_export_dir_that_is_a_file_is_refused_before_training(corpus, tmp_path):
    (tmp_path / "export").write_text("not a folder")
    with pytest.raises(ValueError, match="is a file, not a folder") as err:  # was found after the whole run
        _fit(corpus, tmp_path / "export")
    assert "\n" not in str(err.value)
