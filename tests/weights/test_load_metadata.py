"""`PretrainedMixin.from_pretrained` reads config.json once and hands its metadata to the model's
`load_metadata` hook: ViT and CLIP keep their saved eval preprocessing as `preprocess` (at an image-size
override, the new size), `load_clip` takes it through the same hook, and a family without the hook keeps
nothing."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmkit.inference.clip_loader import load_clip
from mmkit.models import ViT
from mmkit.models.clip import CLIP
from mmkit.weights.native import CONFIG_NAME
from _clip import TINY_CLIP, WORD_CLIP

VIT = dict(image_size=32, patch_size=8, num_classes=3, dim=32, depth=1, num_heads=2)
PREPROCESS = {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "crop_pct": 0.9,
              "resize_mode": "squash"}


@pytest.fixture
def config_reads(monkeypatch) -> list[Path]:
    """Every read of a config.json, as it happens."""
    reads, read_text = [], Path.read_text

    def counted(self: Path, *args, **kwargs) -> str:
        if self.name == CONFIG_NAME:
            reads.append(self)
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counted)
    return reads


def test_vit_reads_its_config_once_and_keeps_its_preprocessing(tmp_path, config_reads):
    vit = ViT(**VIT)
    vit.preprocess = dict(PREPROCESS)
    vit.save_pretrained(tmp_path, metadata={"class_names": ["a", "b", "c"]})
    config_reads.clear()
    loaded = ViT.from_pretrained(tmp_path)
    assert config_reads == [tmp_path / CONFIG_NAME]  # ViT's own override read it a second time
    assert loaded.preprocess == PREPROCESS  # the class names are no preprocessing
    assert ViT.from_pretrained(tmp_path, image_size=48).preprocess == {**PREPROCESS, "image_size": 48}
    ViT(**VIT).save_pretrained(tmp_path / "plain")
    assert ViT.from_pretrained(tmp_path / "plain").preprocess is None  # the family's defaults


def test_clip_from_pretrained_keeps_its_preprocessing_and_tokenizer_choice(tmp_path, config_reads):
    """`CLIP.from_pretrained` dropped the export's preprocessing (only `load_clip` set it): a model loaded,
    then saved again, lost SigLIP's mean/std and tokenizer."""
    torch.manual_seed(0)
    saved = {**PREPROCESS, "open_clip_tokenizer": "ViT-B-16-SigLIP"}
    CLIP.from_config(WORD_CLIP).save_pretrained(tmp_path / "a", metadata={**saved, "crop_pct": None})
    config_reads.clear()
    loaded = CLIP.from_pretrained(tmp_path / "a")
    assert config_reads == [tmp_path / "a" / CONFIG_NAME]
    assert loaded.preprocess == {k: v for k, v in saved.items() if k != "crop_pct"}  # None: not set
    resized = CLIP.from_pretrained(tmp_path / "a", visual={"image_size": 48})
    assert resized.preprocess["image_size"] == 48 and resized.visual.pos_embed.shape[1] == 1 + 36
    resized.save_pretrained(tmp_path / "b")  # and the round trip keeps it
    assert CLIP.from_pretrained(tmp_path / "b").preprocess == resized.preprocess


def test_load_clip_takes_the_preprocessing_through_the_same_hook(tmp_path, config_reads):
    torch.manual_seed(0)
    CLIP.from_config(TINY_CLIP).save_pretrained(tmp_path, metadata={"mean": [0.5] * 3, "std": [0.5] * 3,
                                                                    "class_names": ["x"]})
    config_reads.clear()
    model, _ = load_clip(str(tmp_path))
    assert config_reads == [tmp_path / CONFIG_NAME]
    assert model.preprocess == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert model.preprocess == CLIP.from_pretrained(tmp_path).preprocess


def test_a_family_without_the_hook_keeps_nothing(tmp_path):
    from mmkit.models.gpt import GPT

    GPT(vocab_size=50, max_len=8, dim=16, depth=1, num_heads=2).save_pretrained(tmp_path, metadata=PREPROCESS)
    assert GPT.from_pretrained(tmp_path).preprocess is None
