"""CLIPTask and the shared zero-shot path: the loss is CLIP's symmetric cross-entropy, the
temperature is clamped, locked towers stay untouched, weight decay skips gains and embeddings'
positions, the export round-trips into ZeroShotClassifier, and ZeroShotEvaluation logs exactly
the accuracy that `zero_shot_scores` gives on the same images. Models are tiny (dim 32, 1 layer).
"""
from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from mmkit.data import ShapesDataModule
from mmkit.data.shapes import Shape, render
from mmkit.models import CLIP
from mmkit.inference import ZeroShotClassifier, zero_shot_scores
from mmkit.tasks import CLIPTask, ZeroShotEvaluation
from mmkit.tasks.contrastive import clip_loss
from mmkit.inference.zero_shot import zero_shot_classifier

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # no Trainer attached

TINY = dict(visual=dict(embed_dim=16, image_size=16, patch_size=8, dim=32, depth=1, num_heads=2, mlp_ratio=2.0),
            text=dict(embed_dim=16, max_len=12, dim=32, depth=1, num_heads=2, mlp_ratio=2.0))


def tiny_clip(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP.from_config(TINY)


def shapes(cls: type = ShapesDataModule, **overrides) -> ShapesDataModule:
    args = dict(image_size=16, train_samples=64, val_samples=40, test_samples=20, batch_size=16, num_workers=0,
                context_length=12)
    return cls(**{**args, **overrides})


def trainer(tmp_path, **overrides) -> pl.Trainer:
    args = dict(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    return pl.Trainer(**{**args, **overrides})


def test_clip_loss_is_the_symmetric_cross_entropy_of_the_pairs():
    g = torch.Generator().manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 8, generator=g), dim=-1), F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    scale = torch.tensor(7.0)
    logits = scale * img @ txt.T
    expected = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6))) / 2
    assert clip_loss(img, txt, scale).item() == pytest.approx(expected.item(), rel=1e-6)
    # Not symmetric in a trivial way: swapping one pair's caption raises the loss.
    assert clip_loss(img, txt[[1, 0, 2, 3, 4, 5]], scale) > clip_loss(img, img, scale)


def test_training_step_loss_and_temperature_clamp():
    task = CLIPTask(tiny_clip())
    batch = next(iter(shapes().train_dataloader()))
    loss = task.training_step(batch, 0)
    logits, logits_t = task.model.get_logits(batch["images"], batch["token_ids"])
    labels = torch.arange(16)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits_t, labels)) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert task.model.logit_scale.grad is not None and task.model.logit_scale.grad.abs() > 0
    with torch.no_grad():
        task.model.logit_scale.fill_(math.log(1000.0))
    task.on_train_batch_end(loss, batch, 0)
    assert task.model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-5)
    assert task.training_step(None, 1) is None  # every image of the batch unreadable


def test_weight_decay_groups():
    task = CLIPTask(tiny_clip(), weight_decay=0.2)
    task._trainer = SimpleNamespace(estimated_stepping_batches=10)
    names = {id(p): n for n, p in task.model.named_parameters()}
    opt = task.configure_optimizers()["optimizer"]
    decay, no_decay = ({names[id(p)] for p in group["params"]} for group in opt.param_groups)
    assert opt.param_groups[0]["weight_decay"] == 0.2 and opt.param_groups[1]["weight_decay"] == 0.0
    assert {"logit_scale", "visual.cls_token", "visual.pos_embed", "text.pos_embed.weight"} <= no_decay
    assert all(n.endswith(("bias", "weight")) for n in no_decay if "norm" in n)
    assert {"text.tok_embed.weight", "visual.proj.weight", "text.proj.weight"} <= decay
    assert not any(n.endswith("bias") or "norm" in n for n in decay)


def test_locked_image_tower_is_neither_trained_nor_in_train_mode(tmp_path):
    task = CLIPTask(tiny_clip(), lr=1e-2, lock_image=True)
    before = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    trainer(tmp_path, limit_train_batches=3, limit_val_batches=0).fit(task, shapes())
    changed = {n for n, p in task.model.named_parameters() if not torch.equal(p, before[n])}
    assert not any(n.startswith("visual.") for n in changed)
    assert any(n.startswith("text.") for n in changed) and "logit_scale" in changed
    task.train()
    assert task.model.text.training and not task.model.visual.training
    assert all(not p.requires_grad for p in task.model.visual.parameters())


def test_frozen_text_tower(tmp_path):
    task = CLIPTask(tiny_clip(), lr=1e-2, lock_text=True)
    before = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    trainer(tmp_path, limit_train_batches=2, limit_val_batches=0).fit(task, shapes())
    changed = {n for n, p in task.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and not any(n.startswith("text.") for n in changed)
    assert any(n.startswith("visual.") for n in changed)


def test_zero_shot_scores_rank_softmax_of_the_prompt_ensemble():
    model = tiny_clip().eval()
    dm = shapes()
    tok = dm.tokenizer
    images = [render(Shape("circle", "red", "left", "large"), 16, random.Random(i)) for i in range(3)]
    labels = ["red circle", " blue star ", "", "red circle", "green cross"]
    templates = ["a {}", "a picture of a {}."]
    ranked = zero_shot_scores(model, tok, images, labels, templates, dm.transform)
    assert [sorted(label for label, _ in r) for r in ranked] == [["blue star", "green cross", "red circle"]] * 3
    for r in ranked:
        assert [p for _, p in r] == sorted((p for _, p in r), reverse=True)
        assert sum(p for _, p in r) == pytest.approx(1.0, abs=1e-5)
    # By hand: mean of the normalised template embeddings, renormalised; softmax of scale x cosine.
    with torch.no_grad():
        clean = ["red circle", "blue star", "green cross"]
        text = torch.stack([F.normalize(torch.stack([model.encode_text(tok(t.format(c)), True)[0] for t in templates])
                                        .mean(0), dim=0) for c in clean])
        x = torch.stack([dm.transform(im) for im in images])
        probs = (model.logit_scale.exp() * model.encode_image(x, True) @ text.T).softmax(-1)
    for row, r in zip(probs, ranked):
        assert dict(r) == pytest.approx({c: float(p) for c, p in zip(clean, row)}, abs=1e-6)
    for r, t in zip(ranked, zero_shot_scores(model, tok, x, labels, templates)):  # tensor input, same result
        assert [label for label, _ in t] == [label for label, _ in r]
        assert [p for _, p in t] == pytest.approx([p for _, p in r], abs=1e-6)
    with pytest.raises(ValueError, match="need exactly one '{}'"):
        zero_shot_scores(model, tok, x, labels, ["a photo"])
    # Braces in a label are text (str.format would raise IndexError or fill them in).
    braces = zero_shot_scores(model, tok, x, ["c{}t", "{0} dog"], templates)
    assert sorted(label for label, _ in braces[0]) == ["c{}t", "{0} dog"]
    with pytest.raises(ValueError, match="at least one non-empty label"):
        zero_shot_scores(model, tok, x, [" ", ""], templates)


def test_fit_logs_zero_shot_accuracy_and_exports_a_classifier(tmp_path):
    dm = shapes()
    task = CLIPTask(tiny_clip(), lr=5e-3, export_dir=str(tmp_path / "export"))
    fit = trainer(tmp_path, limit_train_batches=3, callbacks=[ZeroShotEvaluation()])
    fit.fit(task, dm)
    logged = fit.callback_metrics["val/zeroshot_acc"].item()

    zs = ZeroShotClassifier.from_pretrained(tmp_path / "export")
    assert zs.tokenizer.context_length == 12 and zs.labels == dm.zeroshot_labels
    assert zs.templates == dm.zeroshot_templates and zs.meta["held_out_pairs"] == dm.held_out
    val = dm.datasets["val"]
    samples = [val.sample(i) for i in range(len(val))]
    ranked = zs.predict_images([im for im, _, _ in samples])  # the checkpoint's labels and templates
    correct = sum(r[0][0] == spec.pair for r, (_, _, spec) in zip(ranked, samples))
    assert logged == pytest.approx(correct / len(val), abs=1e-6)
    # The exported weights are the trained ones.
    for (name, p), q in zip(task.model.state_dict().items(), zs.model.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)

    fit.test(task, dm)
    assert 0.0 <= fit.callback_metrics["test/zeroshot_acc"].item() <= 1.0


def test_zero_shot_evaluation_on_a_class_folder(tmp_path):
    pairs = ["red circle", "blue square", "yellow star"]
    files = {}
    for pair, count in zip(pairs, (5, 3, 1)):  # unbalanced, so even a constant prediction is telling
        colour, shape = pair.split()
        folder = tmp_path / "classes" / pair.replace(" ", "_")
        folder.mkdir(parents=True)
        for i in range(count):
            files[folder / f"{i}.png"] = pair
            render(Shape(shape, colour, "centre", "large"), 16, random.Random(i)).save(folder / f"{i}.png")
    model = tiny_clip(seed=3)
    dm = shapes()
    fit = trainer(tmp_path, callbacks=[ZeroShotEvaluation(templates=["a {}"], image_dir=str(tmp_path / "classes"))])
    fit.validate(CLIPTask(model), dm, verbose=False)
    from PIL import Image

    ranked = zero_shot_scores(model.eval(), dm.tokenizer, [Image.open(f) for f in files], pairs, ["a {}"],
                              dm.transform)
    expected = sum(r[0][0] == pair for r, pair in zip(ranked, files.values())) / len(files)
    assert fit.callback_metrics["val/zeroshot_acc"].item() == pytest.approx(expected, abs=1e-6)
    assert zero_shot_classifier(model, dm.tokenizer, pairs, ["a {}"]).shape == (3, 16)


def test_zero_shot_evaluation_counts_the_labelled_images_of_every_batch(tmp_path, monkeypatch):
    from torch.utils.data import DataLoader

    from mmkit.data import CaptionCollate
    from mmkit.data.text import CLIPTokenizer
    from mmkit.tasks import clip_task

    # Image i carries, in one pixel, the class a stand-in scorer predicts for it.
    predicted = [0, 1, 2, 2, 1, 0, 1]
    targets = [0, 1, 1, -1, 1, 2, -1]  # -1 = no label; correct: items 0, 1 and 4 of 5 labelled
    items = [(torch.full((3, 16, 16), float(p)), "a shape", i, t) for i, (p, t) in enumerate(zip(predicted, targets))]
    loader = DataLoader(items, batch_size=3, collate_fn=CaptionCollate(CLIPTokenizer(context_length=12)))
    monkeypatch.setattr(clip_task, "zero_shot_logits",
                        lambda model, images, classifier: F.one_hot(images[:, 0, 0, 0].long(), len(classifier)).float())
    fit = trainer(tmp_path, callbacks=[ZeroShotEvaluation(labels=["red circle", "blue star", "green cross"])])
    fit.validate(CLIPTask(tiny_clip()), loader, verbose=False)
    assert fit.callback_metrics["val/zeroshot_acc"].item() == pytest.approx(3 / 5)


def test_recipe_monitoring_zeroshot_acc_follows_val_loss_on_data_without_zero_shot_labels(tmp_path, caplog):
    """A caption table has no zero-shot labels: configs/clip_shapes.yaml's checkpoint (and an early
    stop) on val/zeroshot_acc follow val/loss instead of stopping the run at the first epoch's end."""
    import logging

    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    class NoZeroShotLabels(ShapesDataModule):  # stands for CaptionTableDataModule: captions only
        zeroshot_labels = None

    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/zeroshot_acc", mode="max", filename="best")
    stop = EarlyStopping(monitor="val/zeroshot_acc", mode="max", min_delta=0.01, stopping_threshold=0.9)
    fit = trainer(tmp_path, max_epochs=2, enable_checkpointing=True,
                  callbacks=[ZeroShotEvaluation(), best, stop])
    caplog.set_level(logging.WARNING)
    fit.fit(CLIPTask(tiny_clip()), shapes(NoZeroShotLabels))
    assert fit.current_epoch == 2 and "val/zeroshot_acc" not in fit.callback_metrics
    assert (best.monitor, best.mode, stop.monitor, stop.mode) == ("val/loss", "min", "val/loss", "min")
    assert best.best_model_score == pytest.approx(min(best.best_k_models.values()).item())
    assert (tmp_path / "ckpt" / "best.ckpt").is_file() and stop.min_delta < 0 and stop.stopping_threshold is None
    assert "ModelCheckpoint monitors val/zeroshot_acc, which this data cannot measure" in caplog.text
    # With labels the monitor stays as the recipe says.
    kept = ModelCheckpoint(dirpath=tmp_path / "ckpt2", monitor="val/zeroshot_acc", mode="max")
    trainer(tmp_path, enable_checkpointing=True, callbacks=[ZeroShotEvaluation(), kept]).fit(
        CLIPTask(tiny_clip()), shapes())
    assert kept.monitor == "val/zeroshot_acc" and kept.best_model_score is not None


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")
def test_recipe_refuses_a_context_length_past_the_text_towers_max_len_at_setup(tmp_path, monkeypatch, capsys):
    """`--data.init_args.context_length 77` with the recipe's 16-position text tower: one line naming both
    options when the run sets up, not "sequence of 77 positions exceeds max_len 16" from the first step."""
    from pathlib import Path

    from mmkit.cli import main

    monkeypatch.chdir(tmp_path)
    recipe = str(Path(__file__).resolve().parents[2] / "configs" / "clip_shapes.yaml")
    towers = "--model.init_args.model.init_args."
    tiny = [arg for tower in ("visual", "text") for key, value in (("dim", "32"), ("depth", "1"), ("num_heads", "2"))
            for arg in (f"{towers}{tower}.init_args.{key}", value)]
    code = main(["fit", "--config", recipe, *tiny, "--data.init_args.context_length", "77",
                 "--data.init_args.num_workers", "0", "--trainer.fast_dev_run", "true",
                 "--trainer.default_root_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err == ("mmkit fit: error: --data.init_args.context_length 77 exceeds the text tower's max_len 16 "
                   "(--model.init_args.model.init_args.text.init_args.max_len): give a context_length of at most 16, "
                   "or a text tower with max_len 77 or more\n"), err


def test_zero_shot_evaluation_on_a_class_folder_scores_as_mmkit_label_does_with_the_export(tmp_path):
    """An `image_dir` is preprocessed as the export is by `mmkit label`: the data's eval transform with the model's
    own resize mode (an import's: SigLIP squashes both sides), not open_clip's short side and centre crop, which
    cut the shape off these wide images. The accuracy logged is then the one `mmkit label` measures."""
    import csv

    from PIL import Image

    from mmkit.cli.label import main as label_main
    from mmkit.data.image_folder import find_samples
    from mmkit.data.images import load_image
    from mmkit.inference.clip_loader import clip_eval_transform

    pairs = ["red circle", "blue square", "yellow star"]
    root = tmp_path / "classes"
    for pair in pairs:
        colour, shape = pair.split()
        (root / pair.replace(" ", "_")).mkdir(parents=True)
        for i in range(3):
            wide = Image.new("RGB", (48, 16), "white")  # the shape in the left third, outside a centre crop
            wide.paste(render(Shape(shape, colour, "centre", "large"), 16, random.Random(i)), (0, 0))
            wide.save(root / pair.replace(" ", "_") / f"{i}.png")
    model = tiny_clip(seed=3)
    model.preprocess = {"resize_mode": "squash"}  # as `CLIP.from_open_clip` records SigLIP's preprocessing
    dm = shapes()
    callback = ZeroShotEvaluation(templates=["a {}"], image_dir=str(root))
    scored, update = [], callback._update
    callback._update = lambda module, images, targets: (scored.append(images.clone()), update(module, images, targets))
    task = CLIPTask(model)
    fit = trainer(tmp_path, callbacks=[callback])
    fit.validate(task, dm, verbose=False)
    logged = fit.callback_metrics["val/zeroshot_acc"].item()

    export = tmp_path / "export"
    task.export(export, dm.inference_metadata())  # what `on_fit_end` writes
    transform = clip_eval_transform(str(export))  # `mmkit label`'s preprocessing of the export
    assert transform.resize_mode == "squash"
    samples = find_samples(root, {c: i for i, c in enumerate(sorted(p.name for p in root.iterdir()))})
    torch.testing.assert_close(torch.cat(scored), torch.stack([transform(load_image(p)) for p, _ in samples]),
                               rtol=0, atol=0)
    out = tmp_path / "labels.csv"
    assert label_main([str(root), "--labels", ",".join(pairs), "--template", "a {}", "--model", str(export),
                       "--out", str(out), "--precision", "fp32", "--num-workers", "0", "--quiet"]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9
    labelled = sum(row["label"] == row["path"].split("/")[0].replace("_", " ") for row in rows) / len(rows)
    assert logged == pytest.approx(labelled, abs=1e-6)


def test_zero_shot_evaluation_refuses_an_image_dir_that_is_no_class_folder_before_training(tmp_path):
    """Found at the first validation's end it cost an epoch of training (the sanity check off) and said
    "[Errno 2] No such file or directory" without naming the option; or it scored nothing, silently."""
    import re

    (tmp_path / "empty").mkdir()
    for folder, message in ((tmp_path / "missing", "no such folder"), (tmp_path / "empty", "no class folders")):
        fit = trainer(tmp_path, limit_train_batches=2, callbacks=[ZeroShotEvaluation(image_dir=str(folder))])
        with pytest.raises(ValueError, match=re.escape(f"ZeroShotEvaluation image_dir {folder}: {message}")):
            fit.fit(CLIPTask(tiny_clip()), shapes())
        assert fit.global_step == 0


def test_a_model_with_its_own_preprocessing_has_the_data_normalised_as_it_was_pretrained(tmp_path, caplog):
    """open_clip trains a pretrained model on its own preprocess config: so does a fit of a model that records one
    (an import: SigLIP's mean/std 0.5 and squash), said once; the export records what the run used. A model without
    one (trained from scratch) keeps the data module's OpenAI statistics."""
    import logging

    from mmkit.inference.clip_loader import clip_eval_transform

    model = tiny_clip(seed=4)
    model.preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize_mode": "squash"}
    dm, plain = shapes(), shapes()
    task = CLIPTask(model)
    with caplog.at_level(logging.INFO, logger="mmkit.tasks.clip_task"):
        trainer(tmp_path).validate(task, dm, verbose=False)
    assert "the data is preprocessed as the model was pretrained: mean [0.5, 0.5, 0.5], std [0.5, 0.5, 0.5], " \
           "resize_mode squash" in caplog.text
    image = dm.datasets["val"][0][0]
    torch.testing.assert_close(image, (plain.datasets["val"][0][0] * torch.tensor(plain.transform.std)[:, None, None]
                                       + torch.tensor(plain.transform.mean)[:, None, None] - 0.5) / 0.5,
                               rtol=0, atol=1e-5)  # the same pixels, normalised with the model's statistics
    task.export(tmp_path / "export", dm.inference_metadata())
    exported = clip_eval_transform(str(tmp_path / "export"))
    assert (exported.mean, exported.std, exported.resize_mode) == ((0.5,) * 3, (0.5,) * 3, "squash")
    scratch = shapes()
    trainer(tmp_path).validate(CLIPTask(tiny_clip()), scratch, verbose=False)
    assert scratch.transform == plain.transform
