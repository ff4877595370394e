"""`Classifier` (the predict path of `mmkit predict` and the demo) with `precision` and `quantize`
(issue 13 §2): fp32 stays exact and the default; int8 Linear weights and bf16 autocast agree with fp32
within stated tolerances on a model of the vit_digits recipe's shape (ViT 6x128, patch 8, 32 px, 10
classes) over scikit-learn's digits. The trained recipe export agrees 100% (269/269 held-out digits,
README); here the same shape is trained for a few seconds in the fixture (a random-init head makes
near-uniform, near-tied scores). Rule: every image whose fp32 top-1 leads by a clear margin keeps
its label, and >= 95% of all images do.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from mmkit.inference import precision as precision_module
from mmkit.inference.classifier import Classifier
from mmkit.models.vit import ViT

META = {"image_size": 32, "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3}
NAMES = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def digits_model() -> tuple[ViT, list[Image.Image]]:
    """The recipe's ViT shape, briefly trained (80 AdamW steps of 32 of 1,200 digits: ~6 s of CPU, 17
    tokens per image) so that classes have real decision margins; with 96 held-out digits."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    vit = ViT(image_size=32, patch_size=8, num_classes=10, dim=128, depth=6, num_heads=4, mlp_ratio=2.0,
              global_pool="avg")
    digits = load_digits()
    images = [Image.fromarray((im * 255 / 16).astype(np.uint8)).convert("RGB") for im in digits.images[:1296]]
    transform = Classifier(copy.deepcopy(vit), NAMES, META).transform
    x, y = torch.stack([transform(im) for im in images[:1200]]), torch.from_numpy(digits.target[:1200])
    opt = torch.optim.AdamW(vit.parameters(), lr=2e-3)
    vit.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~0.07 s of CPU a step; two OpenMP threads on a busy machine spin for seconds
    try:
        for _ in range(80):
            idx = torch.randint(0, len(x), (32,))
            loss = torch.nn.functional.cross_entropy(vit(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return vit.eval(), images[1200:]


def _probs(clf: Classifier, images: list[Image.Image]) -> torch.Tensor:
    """(N, 10) probabilities in class order."""
    rows = clf.predict_images(images, 10)
    out = torch.zeros(len(rows), 10)
    for i, (labels, probs) in enumerate(rows):
        out[i, [int(label) for label in labels]] = torch.tensor(probs)
    return out


def _check_agreement(ref: torch.Tensor, low: torch.Tensor, margin: float) -> None:
    top2 = ref.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > margin
    same = ref.argmax(-1) == low.argmax(-1)
    assert clear.sum() >= 10, "too few clear images to test anything"
    assert same[clear].all(), f"{int((~same[clear]).sum())} clearly-led images changed label"
    assert same.float().mean() >= 0.95, same.float().mean()
    assert 0 < (low - ref).abs().max() < 0.05  # the reduced path really ran, and stayed close


def test_fp32_default_is_the_plain_model(digits_model):
    vit, images = digits_model
    clf = Classifier(copy.deepcopy(vit), NAMES, META)
    assert clf.precision == "fp32"
    x = torch.stack([clf.transform(im) for im in images[:8]])
    with torch.inference_mode():
        ref = vit(x).softmax(-1)
    assert torch.allclose(_probs(clf, images[:8]), ref, atol=1e-6)  # rounded to 6 decimals by top_k


def test_int8_and_bf16_agree_with_fp32_on_a_vit_digits_sized_model(digits_model, caplog):
    vit, images = digits_model
    ref = _probs(Classifier(copy.deepcopy(vit), NAMES, META), images)
    with caplog.at_level("INFO", logger="mmkit.inference.classifier"):
        q = Classifier(copy.deepcopy(vit), NAMES, META, quantize="int8")
    assert "int8 Linear weights" in caplog.text and q.precision == "fp32"
    assert type(q.model.patch_embed.proj) is torch.nn.Conv2d  # the patch embedding stays an fp32 convolution
    _check_agreement(ref, _probs(q, images), margin=0.1)
    bf16 = Classifier(copy.deepcopy(vit), NAMES, META, precision="bf16")  # emulated here: slow, so fewer images
    _check_agreement(ref[:48], _probs(bf16, images[:48]), margin=0.1)


def test_int8_with_bf16_is_refused_and_auto_falls_back_to_fp32(digits_model, monkeypatch):
    """PyTorch's dynamic int8 Linear layers take fp32 activations only: bf16 autocast around them
    fails with a dtype error, so "auto" means fp32 with int8 even on a native-bf16 CPU."""
    vit, images = digits_model
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)
    with pytest.raises(ValueError, match="--precision bf16 with --quantize int8"):
        Classifier(copy.deepcopy(vit), NAMES, META, precision="bf16", quantize="int8")
    clf = Classifier(copy.deepcopy(vit), NAMES, META, precision="auto", quantize="int8")
    assert clf.precision == "fp32" and len(clf.predict_images(images[:2], 1)) == 2
    assert Classifier(copy.deepcopy(vit), NAMES, META, precision="auto").precision == "bf16"
