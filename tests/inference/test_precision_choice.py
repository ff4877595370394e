"""Precision choice (issue 8 section 3): `--precision auto` is bf16 on a CPU with native bf16 and
fp32 elsewhere, while anything pinned to fp32 stays fp32 on both kinds of machine; bf16 scores
agree with fp32 on a tiny CLIP (emulated bf16 here, so the model is kept tiny).
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from PIL import Image

from mmkit.cli.label import _parser
from mmkit.data.transforms import EvalTransform
from mmkit.inference import precision
from mmkit.inference.zero_shot import ZeroShotClassifier
from mmkit.models.clip import CLIP

TINY = dict(visual=dict(embed_dim=16, image_size=32, patch_size=8, dim=32, depth=1, num_heads=2),
            text=dict(embed_dim=16, vocab_size=100, max_len=8, dim=32, depth=1, num_heads=2))


def _tokens(texts) -> torch.Tensor:
    """texts -> (B, 8) ids, one id per word then the end id 99 (the largest, as in CLIP's BPE)."""
    ids = torch.zeros(len(texts), 8, dtype=torch.long)
    for row, text in enumerate(texts):
        words = [1 + sum(map(ord, w)) % 97 for w in text.split()][:7]
        ids[row, : len(words) + 1] = torch.tensor([*words, 99])
    return ids


@pytest.fixture(scope="module")
def model() -> CLIP:
    torch.manual_seed(0)
    return CLIP.from_config(TINY).eval()


@pytest.mark.parametrize("native", [False, True])
def test_auto_follows_the_cpu_and_pinned_fp32_never_does(monkeypatch, model, native):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: native)
    assert precision.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert _parser().parse_args(["photos/", "--model", "m"]).precision == "auto"  # mmkit label's default
    pinned = ZeroShotClassifier(model, _tokens, EvalTransform(image_size=32), precision="fp32")
    assert pinned.precision == "fp32" and pinned._autocast is contextlib.nullcontext  # no autocast at all
    assert ZeroShotClassifier(model, _tokens, EvalTransform(image_size=32)).precision == "fp32"  # the API default
    auto = ZeroShotClassifier(model, _tokens, EvalTransform(image_size=32), precision="auto")
    assert auto.precision == ("bf16" if native else "fp32")
    with pytest.raises(ValueError, match="fp16 autocast is for GPUs"):
        precision.resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.resolve_precision("int4", "cpu")


def test_bf16_scores_agree_with_fp32(model):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(6)]
    labels, templates = ["red circle", "blue star", "green cross"], ["a {}", "a photo of a {}."]
    fp32 = ZeroShotClassifier(model, _tokens, EvalTransform(image_size=32), precision="fp32")
    bf16 = ZeroShotClassifier(model, _tokens, EvalTransform(image_size=32), precision="bf16")
    a, b = fp32.predict_images(images, labels, templates), bf16.predict_images(images, labels, templates)
    probs = lambda ranked: torch.tensor([[dict(r)[x] for x in labels] for r in ranked])  # noqa: E731
    assert (probs(a) - probs(b)).abs().max() < 0.02
    # Top-1 agrees wherever fp32 is not a near tie (bf16 keeps ~3 significant digits).
    margin = probs(a).sort(dim=-1, descending=True).values
    sure = (margin[:, 0] - margin[:, 1]) > 0.02
    assert all(x[0][0] == y[0][0] for x, y, s in zip(a, b, sure.tolist()) if s)
    # The features themselves: unit vectors pointing the same way.
    pixels = torch.stack([fp32.transform.pixels(im) for im in images])
    cos = (fp32.encode_images(pixels) * bf16.encode_images(pixels)).sum(-1)
    assert cos.min() > 0.99
    assert not torch.equal(fp32.encode_images(pixels), bf16.encode_images(pixels))  # bf16 really ran
