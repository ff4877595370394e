"""What every task shares about its model (`mmkit.tasks.model_task.ModelTask`): `on_fit_end` exports only what
trained (a fast_dev_run or a fit without a training step leaves an earlier export as it is, weights gone
non-finite are one line with nothing written, an export_dir that is a file is refused before training), and
`load_from_checkpoint(path)` rebuilds the model from the checkpoint's record of it."""
from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
import torch
from _gpt import tiny_corpus
from _training import fit_single_threaded

from mmkit.data.text_blocks import TextBlocksDataModule
from mmkit.models import GPT
from mmkit.tasks.model_task import TrainingDiverged
from mmkit.tasks.language_model import LanguageModel


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_task")
    path = root / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus(60)))
    return root


def _fit(corpus, export_dir, callbacks=(), checkpoints=None, **trainer_args):
    data = TextBlocksDataModule(files=[str(corpus / "corpus.jsonl")], tokenizer=str(corpus / "tok"), vocab_size=300,
                                block_size=16, val_fraction=0.1, batch_size=8)
    pl.seed_everything(0)
    task = LanguageModel(GPT(max_len=16, dim=16, depth=1, num_heads=2), lr=1e-3, export_dir=str(export_dir))
    trainer = pl.Trainer(**{"max_steps": 2, "limit_val_batches": 1, **trainer_args}, accelerator="cpu", logger=False,
                         enable_checkpointing=checkpoints is not None, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=checkpoints,
                         callbacks=list(callbacks))
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


def test_a_fast_dev_run_leaves_the_real_runs_last_checkpoint_the_one_to_resume(corpus, tmp_path):
    """Lightning's ModelCheckpoint saved `last` at train end even in a fast_dev_run: last-v1.ckpt beside the real
    run's last.ckpt, newer, so `--ckpt_path last` resumed the one-step smoke run."""
    save_last = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    _fit(corpus, tmp_path / "export", callbacks=[save_last], checkpoints=str(tmp_path))
    real = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()}
    assert "last.ckpt" in real
    _fit(corpus, tmp_path / "export", callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)],
         checkpoints=str(tmp_path), fast_dev_run=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()} == real


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


def test_load_from_checkpoint_rebuilds_the_model_it_recorded(corpus, tmp_path):
    trainer = _fit(corpus, tmp_path / "export", checkpoints=str(tmp_path / "run"))
    path = trainer.checkpoint_callback.best_model_path
    task = trainer.lightning_module
    # was "the following arguments are required: module.model": the model is not a hyperparameter
    loaded = LanguageModel.load_from_checkpoint(path)
    assert loaded.model.config == task.model.config and loaded.model.vocab_size == 300  # sized by the data's setup
    for name, value in task.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    assert loaded.hparams.lr == task.hparams.lr
    own = GPT(**task.model.config)
    assert LanguageModel.load_from_checkpoint(path, model=own).model is own  # the caller's model, if given


def test_a_checkpoint_without_the_record_is_one_line(corpus, tmp_path):
    trainer = _fit(corpus, tmp_path / "export", checkpoints=str(tmp_path / "run"))
    path = tmp_path / "old.ckpt"
    checkpoint = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    del checkpoint["mmkit_model"]
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="does not record its model") as err:
        LanguageModel.load_from_checkpoint(path)
    assert "\n" not in str(err.value)


def test_an_image_classifier_checkpoint_of_a_pretrained_vit_rebuilds_as_a_vit(tmp_path, make_vit):
    from mmkit.models import PretrainedViT, ViT
    from mmkit.tasks import ImageClassifier

    make_vit(num_classes=3).save_pretrained(tmp_path / "base")
    task = ImageClassifier(PretrainedViT(str(tmp_path / "base")), class_names=["a", "b", "c"])
    checkpoint = {}
    task.on_save_checkpoint(checkpoint)
    checkpoint.update(state_dict=task.state_dict(), hyper_parameters=dict(task.hparams),
                      **{"pytorch-lightning_version": pl.__version__})
    torch.save(checkpoint, tmp_path / "clf.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "clf.ckpt")
    assert type(loaded.model) is ViT and loaded.class_names == ["a", "b", "c"]  # not rebuilt from the folder
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x), task.model.eval()(x))


def test_a_model_of_other_sizes_is_one_line_naming_the_fields(corpus, tmp_path):
    trainer = _fit(corpus, tmp_path / "export", checkpoints=str(tmp_path / "run"))
    config = trainer.lightning_module.model.config
    with pytest.raises(ValueError) as err:  # was Lightning's table of every tensor whose size differs
        LanguageModel.load_from_checkpoint(trainer.checkpoint_callback.best_model_path,
                                           model=GPT(**{**config, "dim": 32, "num_heads": 4}))
    assert str(err.value).startswith("the checkpoint's GPT does not fit this run's: it has dim 16 (here 32), "
                                     "num_heads 2 (here 4); give the sizes it was trained with")
    assert "\n" not in str(err.value)
