"""`mmkit label`: label specs and prompt ensembles, scoring rules (threshold, top-k, multi-label,
few-shot), parity with open_clip for `--model ARCH --pretrained FILE`, safe decoding in DataLoader
workers, EXIF, sorting into sanitised folders, and the crash-safety contract: a real SIGKILL
mid-run, then `--resume`, leaves exactly one row per image.
"""
from __future__ import annotations

import contextlib
import csv
import inspect
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mmkit.cli.label import main as label_main
from mmkit.data.transforms import EvalTransform
from mmkit.inference import label_outputs, precision, prompts
from mmkit.inference.clip_loader import clip_eval_transform, load_clip
from mmkit.inference.image_batches import image_batches
from mmkit.inference.zero_shot import ZeroShotClassifier
from mmkit.models.clip import CLIP, CLIP_MEAN, CLIP_STD
from mmkit.weights import WeightsError

from _clip import OC_TINY, save_open_clip_tiny, save_tiny_clip



@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")


@pytest.fixture(scope="module")
def labeler(ckpt) -> ZeroShotClassifier:
    model, tokenizer = load_clip(str(ckpt))
    return ZeroShotClassifier(model, tokenizer, clip_eval_transform(str(ckpt)), precision="fp32")


@pytest.fixture(params=[False, True], ids=["cpu", "bf16-cpu"])
def bf16_cpu(request, monkeypatch) -> bool:
    """Run an fp32-exactness test as on this CPU and as on one with native bf16, where
    `--precision auto` picks bf16: the test's pinned fp32 must hold on both."""
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: request.param)
    assert precision.resolve_precision("auto", "cpu") == ("bf16" if request.param else "fp32")
    return request.param


def _image(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None] * rng.uniform(0.2, 1, (1, 1, 3))
    noise = rng.normal(0, 20, (h, w, 3))
    return Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8))


def _png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG header claiming width x height pixels, with no pixel data to speak of."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _write_bad(folder: Path, prefix: str = "") -> dict[str, str]:
    """Unreadable files of every kind -> {name relative to folder.parent: reason prefix}."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = __import__("io").BytesIO()
    _image(99, (64, 64)).save(buffer, "JPEG")
    bad = {f"{prefix}corrupt.png": (b"this is not a PNG\n", "not an image"),
           f"{prefix}empty.jpg": (b"", "zero-byte file"),
           f"{prefix}cut.jpg": (buffer.getvalue()[:600], "truncated or corrupt image data"),
           f"{prefix}bomb.png": (_png_bomb(), "decompression bomb")}
    for name, (data, _) in bad.items():
        (folder / name).write_bytes(data)
    return {f"{folder.name}/{name}": reason for name, (_, reason) in bad.items()}


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging (a stuck DataLoader worker would block forever)."""
    def fail(*_):
        raise TimeoutError(f"no result within {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- labels, prompts, scoring ------------------------------------------------------------------

def test_labels_file_synonyms_literal_prompts_and_templates(tmp_path):
    spec = tmp_path / "labels.txt"
    spec.write_text("# pets\ncat: kitten | tabby cat\n\ndog\n"
                    'car: "a photo of my car {}" | automobile\ncat: kitten | feline\n')
    labels = prompts.read_labels_file(spec)
    assert labels == {"cat": ["kitten", "tabby cat", "feline"], "dog": ["dog"],
                      "car": ['"a photo of my car {}"', "automobile"]}
    templates = prompts.check_templates(["a photo of a {}.", "art of the {}."])
    assert prompts.expand_prompts(labels["car"], templates) == [
        "a photo of my car {}", "a photo of a automobile.", "art of the automobile."]
    assert prompts.expand_prompts(["c{}t"], templates)[0] == "a photo of a c{}t."  # braces in a label are text
    assert prompts.parse_labels("cat, dog ,,".split(",")) == {"cat": ["cat"], "dog": ["dog"]}
    assert prompts.parse_label_entry("x" * 1000) == ("x" * 1000, ["x" * 1000])
    with pytest.raises(ValueError, match=r"label name of 1,001 characters \('xxx.*at most 1,000"):
        prompts.parse_label_entry("x" * 1001 + ": a long prompt")
    for bad in ("a|b", ": x", "cat:"):
        with pytest.raises(ValueError):
            prompts.parse_label_entry(bad)
    with pytest.raises(ValueError, match="exactly one"):
        prompts.check_templates(["no slot here"])


def test_prompt_ensemble_is_renormalised_mean_and_context_trim_is_exact(labeler, bf16_cpu):
    labeler = ZeroShotClassifier(labeler.model, labeler.tokenizer, labeler.transform, precision="fp32")
    assert labeler.precision == "fp32"
    prompts = {"cat": ["a photo of a cat.", "a sketch of a kitten, drawn with a pencil."], "dog": ["a dog."]}
    labeler.set_labels(prompts)
    ids = torch.stack([labeler.tokenizer([p])[0] for p in prompts["cat"] + prompts["dog"]])  # (3, 77): untrimmed
    with torch.no_grad():
        unit = F.normalize(labeler.model.encode_text(ids), dim=-1)
    expected = F.normalize(torch.stack([unit[:2].mean(0), unit[2]]), dim=-1)
    torch.testing.assert_close(labeler.embeddings, expected, atol=1e-5, rtol=1e-5)
    assert labeler.names == ["cat", "dog"]


def test_many_prompts_are_embedded_a_slice_at_a_time_to_the_same_label_embeddings(labeler, monkeypatch):
    """Labels x templates go through the text tower `PROMPT_SLICE` prompts at a time (200,000 labels x 12
    templates held 2.4M prompts' ids and embeddings at once: 2.8 GB), a label with more prompts than a slice
    alone; the embeddings are those of one pass."""
    from mmkit.inference import prompts as prompt_module

    groups = [[f"a photo of a thing number {i}.", f"art of thing {i}."] for i in range(7)]
    groups[3] = [f"a photo of the {w} thing." for w in ("red", "blue", "big", "small", "odd")]  # one big label
    whole = prompt_module.label_embeddings(labeler.model, labeler.tokenizer, groups)
    monkeypatch.setattr(prompt_module, "PROMPT_SLICE", 3)
    sizes = []
    encode = prompt_module.encode_prompts
    monkeypatch.setattr(prompt_module, "encode_prompts", lambda m, t, p, a: sizes.append(len(p)) or encode(m, t, p, a))
    sliced = prompt_module.label_embeddings(labeler.model, labeler.tokenizer, groups)
    assert max(sizes) <= 3 and sum(sizes) == sum(map(len, groups))
    torch.testing.assert_close(sliced, whole, atol=1e-6, rtol=1e-6)


def test_more_labels_than_a_run_holds_are_one_line():
    from mmkit.inference.prompts import MAX_LABELS, parse_labels

    assert len(parse_labels(f"l{i}" for i in range(MAX_LABELS))) == MAX_LABELS
    with pytest.raises(ValueError, match="more than 100,000 labels"):
        parse_labels(f"l{i}" for i in range(MAX_LABELS + 1))


def test_decision_threshold_other_bucket_top_k_and_all_scores():
    d = label_outputs.Decision(("cat", "dog", "car"), top_k=4, threshold=0.5, all_scores=True, other="unsure")
    assert d.fields() == ["path", "label", "score", "label_1", "score_1", "label_2", "score_2", "label_3", "score_3",
                          "label_4", "score_4", "score:cat", "score:dog", "score:car"]
    sure, unsure = d.row("a.png", [0.1, 0.7, 0.2]), d.row("b.png", [0.4, 0.35, 0.25])
    assert (sure["label"], sure["score"], sure["label_2"], sure["score:car"]) == ("dog", 0.7, "car", 0.2)
    assert (unsure["label"], unsure["label_1"], unsure["score"]) == ("unsure", "cat", 0.4)  # top-k still real
    assert sure["label_4"] == sure["score_4"] == ""  # fewer labels than k
    multi = label_outputs.Decision(("cat", "dog", "car"), multi_label=True)
    assert multi.row("c.png", [0.9, 0.2, 0.6])["label"] == "cat|car"  # by score, default cut-off 0.5
    assert multi.row("d.png", [0.1, 0.2, 0.3])["label"] == "other"
    assert multi.labels_of({"label": "cat|car"}) == ["cat", "car"]


def test_scores_softmax_and_multi_label_rules(labeler):
    labeler.set_labels({"a": ["alpha"], "b": ["beta"]}, multi_label=True)
    feats = F.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    scale = labeler.model.logit_scale.exp()
    cos = feats @ labeler.embeddings.T
    torch.testing.assert_close(labeler.scores(feats), (scale * cos).softmax(-1))
    # Softmax-trained CLIP: each label against the neutral background prompts.
    expected = torch.sigmoid(scale * (cos - (feats @ labeler.background)[:, None]))
    torch.testing.assert_close(labeler.scores(feats, multi_label=True), expected)
    assert labeler.background is not None and float(labeler.background.norm()) == pytest.approx(1.0)


def test_few_shot_prototypes_alone_and_combined_with_text(tmp_path, labeler):
    examples = tmp_path / "examples"
    for name, colour in (("red", (220, 20, 30)), ("blue", (20, 40, 210))):
        (examples / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), tuple(min(255, c + 10 * i) for c in colour)).save(examples / name / f"{i}.png")
    (examples / "blue" / "broken.png").write_bytes(b"not an image")  # skipped with a warning
    protos = labeler.prototypes(examples)
    assert sorted(protos) == ["blue", "red"]
    labeler.set_labels({}, protos)  # examples only
    test_red = EvalTransform(image_size=32).pixels(Image.new("RGB", (50, 40), (230, 30, 35)))[None]
    probs = labeler.scores(labeler.encode_images(test_red))
    assert labeler.names[int(probs.argmax())] == "red"
    labeler.set_labels({"red": ["red"]}, protos, examples_weight=0.25)  # red: text + image, blue: image only
    text = labeler.encode_texts(["red"])[0]
    torch.testing.assert_close(labeler.embeddings[0], F.normalize(0.75 * text + 0.25 * protos["red"], dim=-1))
    torch.testing.assert_close(labeler.embeddings[1], protos["blue"])


# ---- images ------------------------------------------------------------------------------------

def test_exif_rotated_image_gives_the_upright_pixels(tmp_path, labeler):
    upright = _image(1, (48, 30))
    upright.save(tmp_path / "upright.png")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a phone stores a portrait shot
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    stored.save(tmp_path / "rotated.png", exif=exif)
    stored.save(tmp_path / "no_exif.png")
    pre = EvalTransform(image_size=32)
    a, b, c = (pre.load(tmp_path / n) for n in ("upright.png", "rotated.png", "no_exif.png"))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(labeler.encode_images(a[None]), labeler.encode_images(b[None]))


def test_draft_decoding_stays_close_to_exact_and_preprocess_matches_torchvision(tmp_path):
    from torchvision import transforms as T

    photo = _image(2, (1200, 800))
    photo.save(tmp_path / "big.jpg", quality=95)
    fast, exact = EvalTransform(image_size=224), EvalTransform(image_size=224, draft=False)
    reference = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                           T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
    with Image.open(tmp_path / "big.jpg") as im:
        expected = reference(im.convert("RGB"))
    torch.testing.assert_close(exact.normalize(exact.load(tmp_path / "big.jpg")[None])[0], expected)
    drafted = fast.normalize(fast.load(tmp_path / "big.jpg")[None])[0]
    assert (drafted - expected).abs().mean() < 0.05  # DCT downscaling: same picture, not the same bits
    timm_like = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                           T.PILToTensor()])
    with Image.open(tmp_path / "big.jpg") as im:  # crop_pct (from checkpoint metadata) as timm's eval transform
        expected_u8 = timm_like(im.convert("RGB"))
    assert torch.equal(EvalTransform(crop_pct=0.875, draft=False).load(tmp_path / "big.jpg"), expected_u8)


def test_folder_with_unreadable_files_in_two_workers_csv_relative_paths(tmp_path, ckpt):
    photos = tmp_path / "photos"
    for i in range(6):
        (photos / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
        _image(i).save(photos / ("sub/deeper" if i % 2 else "sub") / f"{i}.png")
    bad = _write_bad(photos / "bad")
    out = tmp_path / "out" / "labels.csv"
    with _deadline(120):
        code = label_main([str(photos), "--labels", "cat,dog", "--model", str(ckpt), "--out", str(out),
                       "--num-workers", "2", "--batch-size", "2", "--top-k", "2", "--all-scores", "--quiet"])
    assert code == 0
    rows = _rows(out)
    assert list(rows[0])[:3] == ["path", "label", "score"] and "score:dog" in rows[0] and "label_2" in rows[0]
    assert sorted(r["path"] for r in rows) == sorted(p.relative_to(photos).as_posix()
                                                      for p in photos.rglob("*.png") if "bad" not in p.parts)
    assert all(r["label"] in ("cat", "dog") for r in rows)
    assert all(abs(float(r["score:cat"]) + float(r["score:dog"]) - 1) < 1e-4 for r in rows)
    errors = {r["path"]: r["reason"] for r in _rows(out.with_name("labels.errors.csv"))}
    assert sorted(errors) == sorted(bad)
    assert all(errors[p].startswith(reason) for p, reason in bad.items())
    assert not list(out.parent.glob("*.partial"))


def test_predict_is_a_streaming_generator(tmp_path, labeler, monkeypatch):
    for i in range(8):
        _image(i).save(tmp_path / f"{i}.png")
    paths = [f"{i}.png" for i in range(8)]
    loaded = []
    real_load = EvalTransform.load
    monkeypatch.setattr(EvalTransform, "load", lambda self, p: loaded.append(p) or real_load(self, p))
    labeler.set_labels({"a": ["a"], "b": ["b"]})
    stream = labeler.predict(image_batches(tmp_path, paths, labeler.transform, batch_size=2, num_workers=0), paths)
    assert inspect.isgenerator(stream)
    first = next(stream)
    assert [r.path for r in first] == ["0.png", "1.png"] and len(loaded) == 2  # nothing read ahead, nothing kept
    assert sum(len(batch) for batch in stream) == 6


# ---- output, resume, sorting ------------------------------------------------------------------

def _label_args(photos: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [str(photos), "--labels", "cat,dog", "--model", str(ckpt), "--out", str(out), "--num-workers", "0",
            "--batch-size", "3", "--quiet", *extra]


def test_jsonl_resume_drops_cut_off_line_and_refuses_mismatches(tmp_path, ckpt, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(7):
        _image(i).save(photos / f"{i}.png")
    out = tmp_path / "labels.jsonl"
    assert label_main(_label_args(photos, ckpt, out)) == 0
    complete = out.read_text().splitlines(keepends=True)
    assert len(complete) == 7 and json.loads(complete[0])["path"] == "0.png"
    # A killed run: OUT missing, the partial file holds 4 rows, a repeat and a cut-off line.
    partial = out.with_name("labels.jsonl.partial")
    partial.write_text("".join(complete[:4]) + complete[1] + complete[4][:25])
    out.unlink()
    assert label_main(_label_args(photos, ckpt, out)) == 2  # neither --resume nor --overwrite
    assert "--resume" in capsys.readouterr().err
    assert label_main(_label_args(photos, ckpt, out, "--resume")) == 0
    rows = _rows(out)
    assert sorted(r["path"] for r in rows) == [f"{i}.png" for i in range(7)]
    assert rows[:4] == [json.loads(line) for line in complete[:4]]  # carried over, not recomputed
    assert not partial.exists()
    # Other labels than the file was written with: refused, the file untouched.
    before = out.read_bytes()
    other_labels = _label_args(photos, ckpt, out, "--resume")
    other_labels[2] = "cat,dog,car"
    assert label_main(other_labels) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before
    # New files after a finished run: --resume labels just those; --retry-errors tries a fixed file again.
    _image(7).save(photos / "7.png")
    (photos / "8.png").write_bytes(b"broken")
    assert label_main(_label_args(photos, ckpt, out, "--resume")) == 0
    assert [r["path"] for r in _rows(out)] == [f"{i}.png" for i in range(8)]
    assert [r["path"] for r in _rows(tmp_path / "labels.errors.jsonl")] == ["8.png"]
    _image(8).save(photos / "8.png")
    assert label_main(_label_args(photos, ckpt, out, "--resume", "--retry-errors")) == 0
    assert [r["path"] for r in _rows(out)] == [f"{i}.png" for i in range(9)]
    assert not _rows(tmp_path / "labels.errors.jsonl")


def test_copy_to_sanitises_label_names_and_link_to(tmp_path, ckpt):
    photos = tmp_path / "photos"
    (photos / "a").mkdir(parents=True)
    for i in range(4):
        _image(i).save(photos / "a" / f"{i}.png")
    target = tmp_path / "sorted"
    labels = "../../etc,..,a/b: bee"
    assert label_main([str(photos), "--labels", labels, "--model", str(ckpt), "--out", str(tmp_path / "l.csv"),
                   "--num-workers", "0", "--quiet", "--copy-to", str(target)]) == 0
    placed = sorted(p for p in target.rglob("*") if p.is_file())
    assert len(placed) == 4 and all(p.resolve().is_relative_to(target.resolve()) for p in placed)
    folders = {p.relative_to(target).parts[0] for p in placed}
    assert folders <= {"_.._etc", "_", "a_b"} and not (tmp_path / "etc").exists()
    rows = {r["path"]: r["label"] for r in _rows(tmp_path / "l.csv")}
    names = label_outputs.folder_names(["../../etc", "..", "a/b"])
    for p in placed:
        rel = Path(*p.relative_to(target).parts[1:]).as_posix()
        assert names[rows[rel]] == p.relative_to(target).parts[0]  # the row's label decides the folder
    assert label_outputs.safe_folder_name("..") == "_" and label_outputs.safe_folder_name("CON") == "_CON"
    assert label_outputs.folder_names(["a/b", "a_b", "A_B"]) == {"a/b": "a_b", "a_b": "a_b~2", "A_B": "A_B~3"}
    linked = tmp_path / "linked"
    assert label_main([str(photos), "--labels", "x,y", "--model", str(ckpt), "--out", str(tmp_path / "m.csv"),
                   "--num-workers", "0", "--quiet", "--link-to", str(linked)]) == 0
    label = {r["path"]: r["label"] for r in _rows(tmp_path / "m.csv")}["a/0.png"]
    assert (linked / label / "a" / "0.png").stat().st_ino == (photos / "a" / "0.png").stat().st_ino  # hard link


def test_threshold_multi_label_and_bf16_end_to_end(tmp_path, ckpt):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        _image(i).save(photos / f"{i}.png")
    args = lambda out, *extra: [str(photos), "--labels", "cat,dog", "--model", str(ckpt), "--out",  # noqa: E731
                                str(tmp_path / out), "--num-workers", "0", "--quiet", *extra]
    assert label_main(args("t.csv", "--threshold", "1.0", "--other-label", "unsure")) == 0
    assert label_main(args("c.csv", "--threshold", "0.2", "--other-label", "dog")) == 2  # bucket = a label: refused
    assert {r["label"] for r in _rows(tmp_path / "t.csv")} == {"unsure"}
    assert label_main(args("m.csv", "--multi-label", "--threshold", "0", "--all-scores")) == 0
    assert {r["label"] for r in _rows(tmp_path / "m.csv")} <= {"cat|dog", "dog|cat"}
    assert label_main(args("f.csv", "--all-scores", "--precision", "fp32")) == 0
    assert label_main(args("b.csv", "--all-scores", "--precision", "bf16")) == 0
    fp32, bf16 = _rows(tmp_path / "f.csv"), _rows(tmp_path / "b.csv")
    assert all(abs(float(a["score:cat"]) - float(b["score:cat"])) < 0.05 for a, b in zip(fp32, bf16))


# ---- open_clip architectures -------------------------------------------------------------------

@pytest.fixture(scope="module")
def oc_file(tmp_path_factory) -> Path:
    """A random-init open_clip model of a registered tiny architecture, saved as a state dict."""
    return save_open_clip_tiny(tmp_path_factory.mktemp("oc"))


def test_arch_and_pretrained_file_match_open_clip(tmp_path, oc_file, monkeypatch, bf16_cpu):
    import open_clip

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        _image(i, (60, 45)).save(photos / f"{i}.png")
    out = tmp_path / "labels.csv"
    assert label_main([str(photos), "--labels", "cat,dog,bird", "--template", "a photo of a {}.", "--model", OC_TINY,
                   "--pretrained", str(oc_file), "--out", str(out), "--all-scores", "--num-workers", "0",
                   "--exact-decode", "--precision", "fp32", "--quiet"]) == 0
    model, _, preprocess = open_clip.create_model_and_transforms(OC_TINY, pretrained=str(oc_file))
    tokenizer = open_clip.get_tokenizer(OC_TINY)
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokenizer([f"a photo of a {x}." for x in ("cat", "dog", "bird")])), dim=-1)
        images = torch.stack([preprocess(Image.open(photos / f"{i}.png")) for i in range(3)])
        expected = (model.logit_scale.exp() * F.normalize(model.encode_image(images), dim=-1) @ text.T).softmax(-1)
    got = torch.tensor([[float(r[f"score:{x}"]) for x in ("cat", "dog", "bird")] for r in _rows(out)])
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)
    # Architectures mmkit knows by name load without building an open_clip model: same weights.
    from mmkit.models import sizes

    ours = {"visual": dict(embed_dim=32, image_size=32, patch_size=8, dim=128, depth=2, num_heads=2),
            "text": dict(embed_dim=32, vocab_size=49408, max_len=77, dim=128, depth=2, num_heads=2)}
    monkeypatch.setitem(sizes.CLIP_CONFIGS, OC_TINY, ours)
    init = torch.nn.init.normal_
    fast, _ = load_clip(OC_TINY, str(oc_file))
    assert torch.nn.init.normal_ is init  # the no-init build restores torch.nn.init
    reference = CLIP.from_open_clip(OC_TINY, str(oc_file))
    assert fast.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in fast.state_dict().items())


# ---- the crash-safety contract, for real -------------------------------------------------------

def test_sigkill_mid_run_then_resume_leaves_one_row_per_image(tmp_path, ckpt):
    photos = tmp_path / "photos"
    (photos / "p").mkdir(parents=True)
    ramp = np.linspace(0, 255, 1024, dtype=np.uint8)
    for i in range(40):  # big enough that labelling 40 takes a while after the first rows land
        pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:768, None] // 2, np.uint8(i * 6)), axis=-1)
        Image.fromarray(np.ascontiguousarray(pixels)).save(photos / "p" / f"img_{i:02d}.png", compress_level=1)
    bad = {f"p/img_{n}": reason for n, reason in (("05_bad.png", "not an image"), ("20_empty.jpg", "zero-byte file"),
                                                    ("33_cut.png", "truncated"))}
    (photos / "p" / "img_05_bad.png").write_bytes(b"GIF89a? no")
    (photos / "p" / "img_20_empty.jpg").write_bytes(b"")
    (photos / "p" / "img_33_cut.png").write_bytes((photos / "p" / "img_00.png").read_bytes()[:5000])
    out = tmp_path / "labels.csv"
    partial = tmp_path / "labels.csv.partial"
    cmd = [sys.executable, "-m", "mmkit.cli", "label", str(photos), "--labels", "cat,dog", "--model", str(ckpt),
           "--out", str(out), "--batch-size", "4", "--num-workers", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.exists() and partial.read_bytes().count(b"\n") >= 3:  # header + 2 rows on disk
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    assert not out.exists(), "the run finished before the kill"
    killed_rows = partial.read_bytes().count(b"\n") - 1
    assert 2 <= killed_rows < 37

    done = subprocess.run(cmd + ["--resume"], capture_output=True, env=env, timeout=150)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    rows = _rows(out)
    assert sorted(r["path"] for r in rows) == [f"p/img_{i:02d}.png" for i in range(40)]  # each exactly once
    errors = _rows(tmp_path / "labels.errors.csv")
    assert sorted(e["path"] for e in errors) == sorted(bad)  # each exactly once, though some were seen twice
    assert all(e["reason"].startswith(bad[e["path"]]) for e in errors)
    assert not partial.exists()
    resumed = re.search(r"(\d+) done by an earlier run", done.stderr.decode())
    assert resumed and killed_rows <= int(resumed[1]) < 43  # the killed run's rows were kept, not redone


def test_bench_helpers_images_reference_script_and_agreement(tmp_path):
    from mmkit.cli.bench import label as bench

    paths = bench.make_images(tmp_path / "imgs", 5, ((64, 48), (40, 80)))
    assert len(paths) == 5 and [Image.open(p).size for p in paths[:2]] == [(64, 48), (40, 80)]
    compile(bench.REFERENCE, "reference_open_clip.py", "exec")  # the reference script is valid Python
    header = ["path", "label", "score"] + [f"score:{x}" for x in bench.LABELS]
    for name, flip in (("a.csv", False), ("b.csv", True)):
        with open(tmp_path / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for i in range(4):
                scores = [0.1] * len(bench.LABELS)
                best = 1 if flip and i == 0 else 0
                scores[best] = 0.5 + (0.01 if flip else 0)
                w.writerow([f"{i}.jpg", bench.LABELS[best], scores[best], *scores])
    from mmkit.cli.bench.label_report import agreement

    got = agreement(tmp_path / "a.csv", tmp_path / "b.csv")
    assert got["top1_agreement"] == 0.75 and got["max_abs_prob_diff"] == pytest.approx(0.41)


# ---------------------------------------------------------------- SigLIP-shaped models

SIGLIP_TINY = dict(  # bidirectional text read at the last position, attention-pooled image tower
    visual=dict(embed_dim=32, image_size=32, patch_size=8, dim=32, depth=1, num_heads=2, norm_eps=1e-6,
                global_pool="map", pre_norm=False, proj=False),
    text=dict(embed_dim=32, vocab_size=100, max_len=16, dim=32, depth=1, num_heads=2, norm_eps=1e-6,
              causal=False, pool="last", proj_bias=True),
    init_logit_bias=-10.0,
)


def _stand_in_tokenizer(texts) -> torch.Tensor:
    """texts -> (B, 16) ids: a start id 99 (the largest: a cut "after the largest id" would keep
    only it), one id per word, an end id 1, zero padding. SigLIP's real one is a hub download."""
    ids = torch.zeros(len(texts), 16, dtype=torch.long)
    for row, text in enumerate(texts):
        words = [2 + zlib.crc32(w.encode()) % 90 for w in text.split()][:13]
        ids[row, : len(words) + 2] = torch.tensor([99, *words, 1])
    return ids


def test_siglip_prompts_are_encoded_at_full_length_and_scored_with_the_bias(bf16_cpu):
    torch.manual_seed(0)
    model = CLIP.from_config(SIGLIP_TINY).eval()
    assert not model.text.padding_is_inert
    labeler = ZeroShotClassifier(model, _stand_in_tokenizer, EvalTransform(image_size=32), precision="fp32")
    prompts = {"cat": ["a photo of a cat.", "a sketch of a kitten, drawn with a pencil."], "dog": ["a dog."]}
    labeler.set_labels(prompts, multi_label=True)
    ids = _stand_in_tokenizer(prompts["cat"] + prompts["dog"])  # (3, 16): full rows
    with torch.no_grad():
        unit = F.normalize(model.encode_text(ids), dim=-1)
        cut = F.normalize(model.encode_text(ids[:, :1]), dim=-1)  # what CLIP's trim would have encoded
    assert not torch.allclose(unit, cut, atol=1e-3)
    expected = F.normalize(torch.stack([unit[:2].mean(0), unit[2]]), dim=-1)
    torch.testing.assert_close(labeler.embeddings, expected, atol=1e-5, rtol=1e-5)
    assert labeler.background is None  # a sigmoid model needs no neutral prompts
    feats = F.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    scale, cos = model.logit_scale.exp(), feats @ labeler.embeddings.T
    torch.testing.assert_close(labeler.scores(feats), (scale * cos).softmax(-1))
    torch.testing.assert_close(labeler.scores(feats, multi_label=True), torch.sigmoid(scale * cos - 10.0))


def test_siglip_architecture_tokenizer_online_and_offline(monkeypatch, tmp_path, capsys):
    import open_clip

    from mmkit.data.text import CLIPTokenizer, open_clip_tokenizer

    assert isinstance(open_clip_tokenizer("ViT-B-32"), CLIPTokenizer)  # CLIP's BPE: no hub
    torch.manual_seed(0)
    tiny = CLIP.from_config(SIGLIP_TINY).eval()
    monkeypatch.setattr(CLIP, "from_open_clip", classmethod(lambda cls, arch, pretrained=None: tiny))

    def offline(arch, context_length=None):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them")

    monkeypatch.setattr(open_clip, "get_tokenizer", offline)
    with pytest.raises(OSError, match=r"^ViT-B-16-SigLIP needs its tokenizer timm/ViT-B-16-SigLIP from the Hugging"):
        load_clip("ViT-B-16-SigLIP", str(tmp_path / "w.pt"))
    photos = tmp_path / "photos"
    photos.mkdir()
    _image(0).save(photos / "a.png")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    code = label_main([str(photos), "--model", "ViT-B-16-SigLIP", "--pretrained", str(weights), "--labels", "cat,dog",
                   "--out", str(tmp_path / "out.csv")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1  # one message
    assert "needs its tokenizer" in err
    seen = {}

    def online(arch, context_length=None):
        seen["args"] = (arch, context_length)
        return lambda texts: _stand_in_tokenizer(texts).int()

    monkeypatch.setattr(open_clip, "get_tokenizer", online)
    model, tokenizer = load_clip("ViT-B-16-SigLIP", str(tmp_path / "w.pt"))
    assert model is tiny and seen["args"] == ("ViT-B-16-SigLIP", 16)
    assert tokenizer(["a cat"]).dtype == torch.long


def test_siglip_checkpoint_directory_names_its_tokenizer(monkeypatch, tmp_path):
    import open_clip

    torch.manual_seed(0)
    tiny = CLIP.from_config(SIGLIP_TINY).eval()
    tiny.save_pretrained(tmp_path / "plain")
    with pytest.raises(WeightsError, match="open_clip_tokenizer"):  # CLIP's BPE cannot serve 100 ids
        load_clip(str(tmp_path / "plain"))
    tiny.save_pretrained(tmp_path / "named", metadata={"open_clip_tokenizer": "ViT-B-16-SigLIP"})
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda arch, context_length=None: _stand_in_tokenizer)
    model, tokenizer = load_clip(str(tmp_path / "named"))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokenizer(["a cat"])),
                                   tiny.encode_text(_stand_in_tokenizer(["a cat"])))


def test_zero_shot_classifier_reads_a_siglip_export(monkeypatch, tmp_path):
    import open_clip


    torch.manual_seed(0)
    tiny = CLIP.from_config(SIGLIP_TINY).eval()
    tiny.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="open_clip_tokenizer"):  # CLIP's BPE would index past 100 ids
        ZeroShotClassifier.from_pretrained(tmp_path / "plain")
    meta = {"open_clip_tokenizer": "ViT-B-16-SigLIP", "mean": [0.5] * 3, "std": [0.5] * 3, "resize_mode": "squash"}
    tiny.save_pretrained(tmp_path / "siglip", metadata=meta)
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda arch, context_length=None: _stand_in_tokenizer)
    zs = ZeroShotClassifier.from_pretrained(tmp_path / "siglip")
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8))
    (ranked,) = zs.predict_images([wide], ["cat", "dog"], ["a photo of a {}."])
    # By hand: squash (both sides resized, nothing cropped), mean/std 0.5, full-length prompts.
    pixels = torch.from_numpy(np.asarray(wide.resize((32, 32), Image.BICUBIC), dtype=np.float32) / 255)
    x = ((pixels.permute(2, 0, 1) - 0.5) / 0.5)[None]
    with torch.no_grad():
        text = F.normalize(tiny.encode_text(_stand_in_tokenizer(["a photo of a cat.", "a photo of a dog."])), dim=-1)
        probs = (tiny.logit_scale.exp() * F.normalize(tiny.encode_image(x), dim=-1) @ text.T).softmax(-1)[0]
    assert dict(ranked) == pytest.approx({"cat": float(probs[0]), "dog": float(probs[1])}, abs=2e-3)
