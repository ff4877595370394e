"""ImageClassifier as a unit: its losses (label smoothing, mixup/cutmix soft targets), the
optimiser's weight-decay groups and warmup-cosine schedule, the class-count check, predict_step,
and PretrainedViT fine-tuning (only the head is re-initialised).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmkit.models import PretrainedViT
from mmkit.tasks import ImageClassifier

pytestmark = [pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`"),  # no Trainer attached
              pytest.mark.usefixtures("single_thread")]


def _batch(n: int, classes: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, classes, (n,), generator=g), torch.arange(n)


def test_training_loss_is_cross_entropy_with_the_configured_smoothing(make_vit):
    torch.manual_seed(0)
    task = ImageClassifier(make_vit(), label_smoothing=0.2)
    images, targets, idx = _batch(6)
    loss = task.training_step((images, targets, idx), 0)
    logits = task(images)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, targets, label_smoothing=0.2).item(), rel=1e-6)
    # The smoothing term is not negligible here, so using the wrong value would show.
    assert abs(loss.item() - F.cross_entropy(logits, targets).item()) > 1e-3


def test_evaluation_loss_is_unsmoothed(make_vit):
    torch.manual_seed(0)
    task = ImageClassifier(make_vit(), label_smoothing=0.2).eval()
    images, targets, idx = _batch(4)
    logged = {}
    task.log = lambda name, value, **kw: logged.__setitem__(name, value)
    task.validation_step((images, targets, idx), 0)
    assert logged["val/loss"].item() == pytest.approx(F.cross_entropy(task(images), targets).item(), rel=1e-6)


@pytest.mark.parametrize(("mixup_alpha", "cutmix_alpha"), [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_cutmix_trains_on_soft_targets(make_vit, mixup_alpha, cutmix_alpha):
    torch.manual_seed(0)
    np.random.seed(0)  # timm's Mixup draws lambda and the mode with numpy
    task = ImageClassifier(make_vit(), label_smoothing=0.1, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)
    seen = {}
    mix = task.mixup

    def spy(images, targets):
        seen["images"], seen["soft"] = mix(images.clone(), targets)
        return seen["images"], seen["soft"]

    task.mixup = spy
    images, targets, idx = _batch(8)
    loss = task.training_step((images, targets, idx), 0)
    soft = seen["soft"]
    assert torch.isfinite(loss)
    assert soft.shape == (8, 10)
    torch.testing.assert_close(soft.sum(-1), torch.ones(8))
    assert soft.max() < 1.0  # smoothed, never one-hot
    assert not torch.equal(seen["images"], images)  # the batch really was mixed
    expected = torch.sum(-soft * F.log_softmax(task(seen["images"]), dim=-1), dim=-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in task.parameters() if p.grad is not None)


def test_an_all_unreadable_batch_is_skipped(make_vit):
    task = ImageClassifier(make_vit())
    assert task.training_step(None, 0) is None
    assert task.predict_step(None, 0) == {"indices": [], "top_k": []}


def test_no_weight_decay_on_norms_biases_and_tokens(make_vit):
    task = ImageClassifier(make_vit(class_token=True), weight_decay=0.05)
    task.model.head.bias.requires_grad_(False)  # frozen parameters stay out of the optimiser
    task._trainer = SimpleNamespace(estimated_stepping_batches=100)
    opt = task.configure_optimizers()["optimizer"]
    name_of = {id(p): n for n, p in task.model.named_parameters()}
    decay, no_decay = ({name_of[id(p)] for p in g["params"]} for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    expected_no_decay = {n for n in name_of.values()
                         if n.endswith(".bias") or "norm" in n or n in ("cls_token", "pos_embed")} - {"head.bias"}
    assert no_decay == expected_no_decay
    assert {"cls_token", "pos_embed", "encoder.blocks.0.norm1.weight", "encoder.blocks.0.attn.qkv.bias"} <= no_decay
    assert decay == set(name_of.values()) - expected_no_decay - {"head.bias"}
    assert {"patch_embed.proj.weight", "encoder.blocks.0.attn.qkv.weight", "head.weight"} <= decay


def test_lr_warms_up_linearly_then_decays_by_cosine_to_zero(make_vit):
    lr, total = 1e-3, 100
    task = ImageClassifier(make_vit(), lr=lr, warmup_ratio=0.1)
    task._trainer = SimpleNamespace(estimated_stepping_batches=total)
    conf = task.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(total + 1):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    warmup = 10
    assert lrs[:warmup] == pytest.approx([lr * (s + 1) / (warmup + 1) for s in range(warmup)])
    assert max(lrs) == pytest.approx(lr) and int(np.argmax(lrs)) == warmup
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))  # monotone decay
    assert lrs[warmup + 45] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 0.5)))  # halfway: lr / 2
    assert lrs[total] == pytest.approx(0.0, abs=1e-12)


def test_class_names_must_match_the_head(make_vit):
    with pytest.raises(ValueError, match="3 classes but the model has 10 outputs"):
        ImageClassifier(make_vit(num_classes=10), class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="no classifier head"):
        ImageClassifier(make_vit(num_classes=0))
    assert ImageClassifier(make_vit(num_classes=3)).class_names == ["0", "1", "2"]


def test_predict_step_returns_top_k_labels_by_probability(make_vit):
    torch.manual_seed(0)
    names = [f"c{i}" for i in range(10)]
    task = ImageClassifier(make_vit(), class_names=names, top_k=3).eval()
    images, _, _ = _batch(4)
    out = task.predict_step((images, torch.full((4,), -1), torch.tensor([7, 3, 9, 0])), 0)
    assert out["indices"] == [7, 3, 9, 0]
    probs = task(images).softmax(-1)
    for row, (labels, p) in zip(probs, out["top_k"]):
        assert len(labels) == len(p) == 3
        assert labels == [names[i] for i in row.topk(3).indices.tolist()]
        assert p == pytest.approx(row.topk(3).values.tolist(), abs=1e-6)


def test_pretrained_vit_new_head_reinitialises_only_the_head(make_vit, tmp_path):
    torch.manual_seed(0)
    base = make_vit(num_classes=10)
    names = [str(i) for i in range(10)]
    base.save_pretrained(tmp_path, metadata={"class_names": names, "image_size": 16})
    saved = base.state_dict()

    same = PretrainedViT(str(tmp_path))
    assert same.metadata["class_names"] == names
    assert all(torch.equal(v, saved[k]) for k, v in same.state_dict().items())
    assert ImageClassifier(same).class_names == names  # names come from the checkpoint

    torch.manual_seed(1)
    tuned = PretrainedViT(str(tmp_path), num_classes=4)
    state = tuned.state_dict()
    assert set(state) == set(saved)
    body = [k for k in state if not k.startswith("head.")]
    assert len(body) > 10 and all(torch.equal(state[k], saved[k]) for k in body)
    assert state["head.weight"].shape == (4, 32) and state["head.bias"].shape == (4,)
    # The old class names no longer apply; the eval transform still does.
    assert "class_names" not in tuned.metadata and tuned.metadata["image_size"] == 16
    task = ImageClassifier(tuned, class_names=["a", "b", "c", "d"])
    assert task(torch.randn(2, 3, 16, 16)).shape == (2, 4)
