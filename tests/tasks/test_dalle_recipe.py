"""The DALL·E-style shapes recipe on a tiny slice: the tokenizer task learns to reconstruct and logs
codebook usage, the generator task learns the codes (loss well under chance), exports a
TextToImage, and its test stage runs the independent judge with the shuffled-caption control."""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch

from mmkit.cli.bench.common import torch_threads
from mmkit.data.dalle_shapes import ShapesCodesDataModule, ShapesImagesDataModule
from mmkit.inference.text_to_image import TextToImage
from mmkit.models import DALLE, VQGAN
from mmkit.tasks.dalle_task import DalleTask
from mmkit.tasks.vqgan_task import VQGANTask

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.slow]  # ~80 s: two tiny trainings + judge


def _trainer(root, epochs, **kw):
    return pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=pl.loggers.CSVLogger(str(root)),
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=str(root), log_every_n_steps=1, **kw)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("dalle_tok")
    model = VQGAN(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_levels=(), z_channels=16, codebook_size=32,
                  code_dim=16, norm_groups=8)
    task = VQGANTask(model, lr=3e-3, edge_weight=2.0, judge_steps=10, export_dir=str(root / "export"))
    data = ShapesImagesDataModule(image_size=16, train_samples=640, val_samples=64, batch_size=32, background=40)
    trainer = _trainer(root, 2)
    with torch_threads(1):  # module fixtures run before the function-scoped single_thread
        trainer.fit(task, data)
        fit_metrics = dict(trainer.callback_metrics)
        trainer.test(task, data)
    return root, trainer, fit_metrics


def test_tokenizer_learns_and_logs_usage(tokenizer):
    root, _, m = tokenizer
    assert m["val/recon_l1"] < 0.1  # the background alone would be ~0.17 from the mean grey at init
    assert 0 < m["val/codes_used"] <= 1 and m["val/perplexity"] > 2
    assert (root / "export" / "config.json").is_file()


def test_tokenizer_test_stage_judges_its_reconstructions(tokenizer):
    m = tokenizer[1].callback_metrics
    for key in ("test/recon_seen_all_acc", "test/recon_heldout_shape_acc", "test/recon_seen_colour_acc"):
        assert 0.0 <= float(m[key]) <= 1.0
    assert "test/recon_shuffled_all_acc" not in m  # no caption to shuffle for a tokenizer


@pytest.fixture(scope="module")
def generator(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("dalle_gen")
    torch.manual_seed(0)
    data = ShapesCodesDataModule(image_size=16, train_samples=1024, val_samples=128, text_len=8, batch_size=32,
                                 background=40)
    model = DALLE(text_vocab_size=32, text_len=8, codebook_size=32, image_grid=8, dim=48, depth=2, num_heads=4)
    task = DalleTask(model, tokenizer_dir=str(tokenizer[0] / "export"), lr=3e-3, judge_steps=10,
                     export_dir=str(root / "export"))
    trainer = _trainer(root, 3)
    with torch_threads(1):  # module fixtures run before the function-scoped single_thread
        trainer.fit(task, data)
        fit_metrics = dict(trainer.callback_metrics)
        trainer.test(task, data)
    return root, trainer, task, fit_metrics


def test_generator_learns(generator):
    fit_metrics = generator[3]
    assert fit_metrics["val/image_loss"] < 0.75 * math.log(32)


def test_judged_test_stage(generator):
    _, trainer, task, _ = generator
    m = trainer.callback_metrics
    for key in ("test/seen_all_acc", "test/heldout_all_acc", "test/seen_colour_acc", "test/shuffled_all_acc"):
        assert 0.0 <= float(m[key]) <= 1.0
    assert len(task.test_images) == 350 and task.test_images[0].size == (16, 16)


def test_export_generates(generator):
    root = generator[0]
    t2i = TextToImage.from_pretrained(root / "export")
    out = t2i.generate(["a red circle on the left", "a large blue star"], num_images=2, seed=0, top_k=4)
    assert [len(g.images) for g in out] == [2, 2] and out[0].images[0].size == (16, 16)
    again = t2i.generate(["a red circle on the left"], num_images=2, seed=0, top_k=4)
    assert torch.equal(again[0].codes, out[0].codes)  # seeded


def test_mismatched_recipe_is_one_error(tokenizer, tmp_path):
    data = ShapesCodesDataModule(image_size=16, train_samples=32, val_samples=32, text_len=8)
    task = DalleTask(DALLE(text_vocab_size=32, text_len=8, codebook_size=64, image_grid=8, dim=16, depth=1,
                           num_heads=2), tokenizer_dir=str(tokenizer[0] / "export"))
    with pytest.raises(ValueError, match="codebook"):
        _trainer(tmp_path, 1).fit(task, data)
