"""`PretrainedCLIP`: a CLIP built from an export folder, for recipes to fine-tune (as `PretrainedViT`): the same
tensors and preprocessing as `CLIP.from_pretrained`, saved back as a plain CLIP, at a new image size resampled as
`from_pretrained(visual={"image_size": ...})`; the shapes recipe fine-tunes an export given on the command line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _clip import save_tiny_clip

from mmkit.models import CLIP, PretrainedCLIP

REPO = Path(__file__).resolve().parents[2]
PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize_mode": "squash"}  # as a SigLIP import's


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    directory = save_tiny_clip(tmp_path_factory.mktemp("clip") / "export")
    model = CLIP.from_pretrained(directory)
    model.preprocess = PREPROCESS
    return model.save_pretrained(directory)


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_it_is_the_exports_model_and_saves_as_a_plain_clip(export, tmp_path):
    tuned = PretrainedCLIP(str(export))
    assert _equal(tuned, CLIP.from_pretrained(export)) and tuned.preprocess == PREPROCESS
    again = CLIP.from_pretrained(tuned.save_pretrained(tmp_path / "again"))
    assert json.loads((tmp_path / "again" / "config.json").read_text())["architecture"] == "CLIP"
    assert _equal(again, tuned) and again.preprocess == tuned.preprocess


def test_a_new_image_size_resamples_the_positions_as_from_pretrained(export):
    tuned = PretrainedCLIP(str(export), image_size=48)
    assert _equal(tuned, CLIP.from_pretrained(export, visual={"image_size": 48}))
    assert tuned.visual.config["image_size"] == 48 and tuned.preprocess.get("image_size", 48) == 48


def test_a_folder_without_an_export_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        PretrainedCLIP(str(tmp_path))


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
def test_the_shapes_recipe_fine_tunes_an_export(export, tmp_path, monkeypatch):
    from mmkit.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["fit", "--config", str(REPO / "configs" / "clip_shapes.yaml"),
                     "--model.init_args.model", "mmkit.models.PretrainedCLIP",
                     "--model.init_args.model.init_args.checkpoint", str(export),
                     "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "16",
                     "--data.init_args.val_samples", "32", "--trainer.limit_train_batches", "2",
                     "--trainer.limit_val_batches", "2", "--trainer.max_epochs", "1",
                     "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                     "--trainer.precision", "32-true", "--trainer.default_root_dir", "run",
                     "--model.init_args.export_dir", "run/export"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    tuned, start = CLIP.from_pretrained(tmp_path / "run" / "export"), CLIP.from_pretrained(export)
    assert tuned.config == start.config and not _equal(tuned, start)  # the export's model, trained further
