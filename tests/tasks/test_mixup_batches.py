"""Mixup/cutmix in ImageClassifier runs on every training batch, odd sizes included (timm's per-batch
mode: each row mixes with the flipped batch, the middle row of an odd batch with itself), with the
exact soft targets timm's `mixup_target` gives (label smoothing included); with mixup on, train/acc
is never logged, only train/loss. A tiny ViT on 16 px random images, one thread."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmkit.tasks import ImageClassifier

pytestmark = [pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`"),  # no Trainer attached
              pytest.mark.usefixtures("single_thread")]

CLASSES, SMOOTHING = 10, 0.1


def _batch(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, CLASSES, (n,), generator=g), torch.arange(n)


def _smoothed(targets: torch.Tensor) -> torch.Tensor:
    off = SMOOTHING / CLASSES
    return F.one_hot(targets, CLASSES).float() * (1 - SMOOTHING) + off


def _spied(task: ImageClassifier) -> dict:
    """Record what the task's mixup returns (images, soft targets) on each call."""
    seen, mix = {"calls": 0}, task.mixup

    def spy(images, targets):
        seen["calls"] += 1
        seen["images"], seen["soft"] = mix(images, targets)
        return seen["images"], seen["soft"]

    task.mixup = spy
    return seen


def _logged(task: ImageClassifier) -> dict:
    logged = {}
    task.log = lambda name, value, **kw: logged.__setitem__(name, value)
    return logged


@pytest.mark.parametrize("n", [1, 3, 4, 5])
def test_mixup_mixes_every_batch_size_exactly(make_vit, n):
    torch.manual_seed(0)
    task = ImageClassifier(make_vit(), label_smoothing=SMOOTHING, mixup_alpha=0.8)
    seen, logged = _spied(task), _logged(task)
    images, targets, idx = _batch(n)
    np.random.seed(0)  # timm draws "mix or not" (rand < prob 1.0), then lambda ~ Beta(0.8, 0.8)
    loss = task.training_step((images.clone(), targets, idx), 0)
    np.random.seed(0)
    np.random.rand()
    lam = float(np.random.beta(0.8, 0.8))
    assert seen["calls"] == 1 and 0 < lam < 1
    torch.testing.assert_close(seen["images"], lam * images + (1 - lam) * images.flip(0))
    y = _smoothed(targets)
    torch.testing.assert_close(seen["soft"], lam * y + (1 - lam) * y.flip(0))
    if n % 2:  # the middle row is its own mirror: unchanged image, its own smoothed target
        middle = n // 2
        torch.testing.assert_close(seen["images"][middle], images[middle])
        torch.testing.assert_close(seen["soft"][middle], y[middle])
    if n > 1:
        assert not torch.allclose(seen["images"], images)  # the batch really was mixed
        differs = targets != targets.flip(0)  # a row paired with another class gets a soft target
        assert differs.any() and (seen["soft"][differs].max(-1).values < y.max() - 1e-3).all()
    expected = torch.sum(-seen["soft"] * F.log_softmax(task(seen["images"]), dim=-1), dim=-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert "train/acc" not in logged and "train/loss" in logged
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in task.parameters() if p.grad is not None)


@pytest.mark.parametrize("n", [3, 4])
@pytest.mark.parametrize(("mixup_alpha", "cutmix_alpha"), [(0.0, 1.0), (0.8, 1.0)])
def test_cutmix_patches_odd_and_even_batches(make_vit, n, mixup_alpha, cutmix_alpha):
    torch.manual_seed(0)
    task = ImageClassifier(make_vit(), label_smoothing=SMOOTHING, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)
    seen, logged = _spied(task), _logged(task)
    images, targets, idx = _batch(n, seed=1)
    kinds = []
    for seed in range(20):  # both draws of mixup-or-cutmix show up within a few seeds
        np.random.seed(seed)
        loss = task.training_step((images.clone(), targets, idx), 0)
        mixed, soft = seen["images"], seen["soft"]
        y = _smoothed(targets)
        # one lambda for the batch, recovered from the soft targets and checked on every row
        lam = None
        for i in range(n):
            if not torch.equal(targets[i], targets.flip(0)[i]):
                lam = ((soft[i] - y.flip(0)[i]) / (y[i] - y.flip(0)[i]))[targets[i]].item()
                break
        assert lam is not None and 0 < lam <= 1 + 1e-6  # 1: a cutmix box clipped to nothing (timm's correct_lam)
        torch.testing.assert_close(soft, lam * y + (1 - lam) * y.flip(0))
        torch.testing.assert_close(soft.sum(-1), torch.ones(n))
        from_self, from_mirror = mixed == images, mixed == images.flip(0)
        if (from_self | from_mirror).all():  # cutmix: every pixel comes from the row or its mirror
            patched = (from_mirror & ~from_self).float().mean().item()  # share of pixels patched in
            # the middle row of an odd batch is its own mirror: its patch changes nothing
            assert patched == pytest.approx((1 - lam) * (n - n % 2) / n, abs=1e-5)
            kinds.append("cutmix" if lam < 1 - 1e-6 else "none")
        else:
            assert mixup_alpha > 0
            torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.flip(0))
            kinds.append("mixup")
        expected = torch.sum(-soft * F.log_softmax(task(mixed), dim=-1), dim=-1).mean()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert seen["calls"] == 20 and "train/acc" not in logged
    assert kinds.count("cutmix") >= 5 and (kinds.count("mixup") >= 5) == (mixup_alpha > 0)


def test_without_mixup_train_acc_is_logged_on_hard_smoothed_targets(make_vit):
    torch.manual_seed(0)
    task = ImageClassifier(make_vit(), label_smoothing=SMOOTHING)
    assert task.mixup is None
    logged = _logged(task)
    images, targets, idx = _batch(3)
    loss = task.training_step((images, targets, idx), 0)
    assert loss.item() == pytest.approx(F.cross_entropy(task(images), targets, label_smoothing=SMOOTHING).item(),
                                        rel=1e-6)
    assert {"train/acc", "train/loss"} <= set(logged)


def test_a_fit_mixes_every_batch_of_an_odd_batch_size(make_vit, tmp_path):
    """7 images in batches of 3: 3, 3 and a last batch of 1, all mixed; no train/acc."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    pl.seed_everything(0, verbose=False)
    task = ImageClassifier(make_vit(), label_smoothing=SMOOTHING, mixup_alpha=0.8, cutmix_alpha=1.0)
    seen = _spied(task)
    sizes = []
    original = task.mixup
    task.mixup = lambda images, targets: (sizes.append(len(images)), original(images, targets))[1]
    loader = DataLoader(TensorDataset(*_batch(7)), batch_size=3)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(task, loader)
    assert sizes == [3, 3, 1] * 2 and seen["calls"] == 6
    assert "train/loss" in trainer.callback_metrics and "train/acc" not in trainer.callback_metrics
