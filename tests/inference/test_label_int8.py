"""`mmkit label --quantize int8` and `ZeroShotClassifier(quantize=...)` (issue 13 §2): int8 weights for
every Linear layer of both towers (the patch embedding stays an fp32 convolution), chosen once and
logged once; int8 runs on fp32 activations, so `--precision auto` is fp32 with it even where the CPU
has bf16 and an explicit bf16 is refused in one line; a resumed run must use the same --quantize.
Agreement with fp32 on a trained CLIP: `mmkit bench label --model EXPORT` (README); on random
weights: tests/inference/test_quantize.py.
"""
from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mmkit.cli.label import main as label_main
from mmkit.inference import precision
from mmkit.inference.clip_loader import clip_eval_transform, load_clip
from mmkit.inference.quantize import Int8Linear
from mmkit.inference.zero_shot import ZeroShotClassifier

from _clip import save_tiny_clip



@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _quantized(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, Int8Linear)]


def test_zero_shot_classifier_int8_image_tower_patch_embedding_and_text_fp32(ckpt, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)  # as on a native-bf16 CPU: auto would be bf16
    model, tokenizer = load_clip(str(ckpt))
    n_linear = sum(isinstance(m, nn.Linear) for m in model.visual.modules())
    text_fp32 = copy.deepcopy(model.text)
    zs = ZeroShotClassifier(model, tokenizer, clip_eval_transform(str(ckpt)), precision="auto", quantize="int8")
    names = _quantized(zs.model)
    assert zs.precision == "fp32" and len(names) == n_linear  # int8 runs on fp32 activations
    assert all(n.startswith("visual.") for n in names)  # the image tower runs over the many inputs
    # the text tower encodes the prompts once and stays fp32, untouched
    assert all(torch.equal(a, b) for a, b in zip(zs.model.text.state_dict().values(), text_fp32.state_dict().values()))
    assert type(zs.model.visual.patch_embed.proj) is nn.Conv2d
    zs.set_labels({"cat": ["a cat"], "dog": ["a dog"]})
    images = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    scores = zs.scores(zs.encode_images(images[:2]))
    assert scores.shape == (2, 2) and torch.allclose(scores.sum(-1), torch.ones(2))
    # activations are scaled per row (Int8Linear): an image's features do not depend on its batch
    assert torch.equal(zs.encode_images(images)[:1], zs.encode_images(images[:1]))
    with pytest.raises(ValueError, match="--precision bf16 with --quantize int8"):
        ZeroShotClassifier(*load_clip(str(ckpt)), precision="bf16", quantize="int8")


def test_label_int8_logs_once_agrees_and_resume_must_match(tmp_path, ckpt, photos, caplog, capsys):
    def run(out: str, *extra: str) -> int:
        return label_main([str(photos), "--labels", "cat,dog", "--model", str(ckpt), "--out", str(tmp_path / out),
                           "--num-workers", "0", "--quiet", "--all-scores", *extra])

    assert run("f.csv") == 0
    with caplog.at_level("INFO"):
        assert run("q.csv", "--quantize", "int8") == 0
    assert sum("int8 Linear weights and per-row activations, fp32" in r.getMessage() for r in caplog.records) == 1
    with open(tmp_path / "f.csv") as f, open(tmp_path / "q.csv") as g:
        fp32, int8 = list(csv.DictReader(f)), list(csv.DictReader(g))
    diffs = [abs(float(a["score:cat"]) - float(b["score:cat"])) for a, b in zip(fp32, int8)]
    assert len(int8) == 4 and 0 < max(diffs) < 0.05  # int8 really ran, close to fp32
    assert run("q.csv", "--resume") == 2  # the rows so far are int8: an fp32 resume would mix them
    assert "other quantize" in capsys.readouterr().err
    assert run("q.csv", "--resume", "--quantize", "int8") == 0
    capsys.readouterr()
    assert run("b.csv", "--quantize", "int8", "--precision", "bf16") == 2  # a usage error, before any file
    assert capsys.readouterr().err.startswith("mmkit label: error: --precision bf16 with --quantize int8")
    assert not (tmp_path / "b.csv.run.json").exists()
