"""What the image APIs (`Classifier`, `ZeroShotClassifier`, `zero_shot_scores`, `TextToImage`) make of
the inputs users actually give: a lone string or path where a list is expected (one item, or a TypeError
for label and class names), models cast to another dtype, empty lists, numpy arrays as images, the
`top_k` keyword, empty templates, labels as a list, and a pipeline's saved sampling defaults."""
from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from PIL import Image

from mmkit.data.images import to_rgb
from mmkit.data.transforms import EvalTransform
from mmkit.inference.classifier import Classifier, top_k, top_k_predictions
from mmkit.inference.prompts import expand_prompts
from mmkit.inference.text_to_image import TextToImage
from mmkit.inference.zero_shot import ZeroShotClassifier, zero_shot_logits, zero_shot_scores
from mmkit.models.clip import CLIP
from mmkit.models.vit import ViT

from _clip import WORD_CLIP
from _clip import word_tokens as _tokens
from _dalle import tiny_text_to_image

TINY_CLIP = WORD_CLIP
LABELS = ["red circle", "blue star", "green cross"]
META = {"image_size": 32}


def _images(n: int = 4) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (36, 50, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def vit() -> ViT:
    torch.manual_seed(0)
    return ViT(image_size=32, patch_size=8, num_classes=3, dim=32, depth=2, num_heads=4).eval()


@pytest.fixture(scope="module")
def clf(vit) -> Classifier:
    return Classifier(copy.deepcopy(vit), ["a", "b", "c"], META)


@pytest.fixture(scope="module")
def clip() -> CLIP:
    torch.manual_seed(0)
    return CLIP.from_config(TINY_CLIP).eval()


@pytest.fixture(scope="module")
def zs(clip) -> ZeroShotClassifier:
    return ZeroShotClassifier(copy.deepcopy(clip), _tokens, EvalTransform(image_size=32))


@pytest.fixture(scope="module")
def t2i() -> TextToImage:
    return tiny_text_to_image()


# A lone string or path where a list is expected.

def test_predict_paths_takes_one_path_as_one_item(clf, tmp_path, monkeypatch):
    _images(1)[0].save(tmp_path / "x.png")
    monkeypatch.chdir(tmp_path)  # split into characters, "x.png" would be 'x', '.' (this folder), 'p', 'n', 'g'
    one, = clf.predict_paths("x.png")
    assert (one.path, one.error) == ("x.png", None) and len(one.labels) == 3
    assert [p.path for p in clf.predict_paths(tmp_path / "x.png")] == [str(tmp_path / "x.png")]
    assert [p.path for p in clf.predict_paths(tmp_path)] == [str(tmp_path / "x.png")]  # a folder, scanned


def test_class_names_as_one_string_are_refused(vit):
    with pytest.raises(TypeError, match="^class_names must be a list of names, not one string$"):
        Classifier(copy.deepcopy(vit), "abc", META)


def test_labels_as_one_string_are_refused(zs):
    image = _images(1)
    with pytest.raises(TypeError, match="^labels must be a list of names, not one string$"):
        zs.predict_images(image, "cat")
    with pytest.raises(TypeError, match="^labels must be a list of names, not one string$"):
        zero_shot_scores(zs.model, _tokens, image, "cat", transform=zs.transform)
    with pytest.raises(TypeError, match="^labels must be a list of names, not one string$"):
        zs.set_labels("cat")


def test_one_text_or_template_is_one_item(zs):
    one = zs.encode_texts("a red circle")
    assert one.shape == (1, 16)
    torch.testing.assert_close(one, zs.encode_texts(["a red circle"]))
    image = _images(1)
    assert zs.predict_images(image, LABELS, "a {}") == zs.predict_images(image, LABELS, ["a {}"])


def test_one_prompt_is_one_item(t2i):
    one, = t2i.generate("a red circle", 2, seed=1)
    listed, = t2i.generate(["a red circle"], 2, seed=1)
    assert one.prompt == "a red circle" and torch.equal(one.codes, listed.codes)


# Models cast to another dtype (the float image input follows the model's parameters).

@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_classifier_runs_a_cast_model(vit, dtype):
    images = _images(6)
    exact = Classifier(copy.deepcopy(vit), ["a", "b", "c"], META).predict_images(images, 3)
    cast = Classifier(copy.deepcopy(vit).to(dtype), ["a", "b", "c"], META).predict_images(images, 3)
    assert [labels[0] for labels, _ in cast] == [labels[0] for labels, _ in exact]
    tolerance = 1e-6 if dtype == torch.float64 else 0.03
    for (_, p_cast), (_, p_exact) in zip(cast, exact):
        assert sorted(p_cast) == pytest.approx(sorted(p_exact), abs=tolerance)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_zero_shot_runs_a_cast_model(clip, dtype):
    images = _images(6)
    exact = ZeroShotClassifier(copy.deepcopy(clip), _tokens, EvalTransform(image_size=32))
    cast = ZeroShotClassifier(copy.deepcopy(clip).to(dtype), _tokens, EvalTransform(image_size=32))
    expected = exact.predict_images(images, LABELS)
    top1 = [scores[0][0] for scores in expected]
    got = cast.predict_images(images, LABELS)
    assert [scores[0][0] for scores in got] == top1
    tolerance = 1e-6 if dtype == torch.float64 else 0.03
    assert [dict(row) for row in got] == [pytest.approx(dict(row), abs=tolerance) for row in expected]
    functional = zero_shot_scores(cast.model, _tokens, images, LABELS, transform=cast.transform)
    assert [scores[0][0] for scores in functional] == top1
    pixels = torch.stack([cast.transform.pixels(im) for im in images])
    assert cast.encode_images(pixels).dtype == torch.float32
    logits = zero_shot_logits(cast.model, cast.transform.normalize(pixels), exact.encode_texts(LABELS))
    assert logits.dtype == torch.float32 and logits.shape == (6, 3)


# Empty lists give empty results.

def test_empty_inputs_give_empty_results(clf, zs):
    assert clf.predict_images([]) == []
    assert zs.predict_images([], LABELS) == []
    assert zero_shot_scores(zs.model, _tokens, [], LABELS, transform=zs.transform) == []
    empty = zs.encode_texts([])
    assert empty.shape == (0, 16) and empty.dtype == torch.float32


# Classifier.predict_images' top_k.

def test_predict_images_takes_top_k_like_predict_paths(clf, tmp_path):
    image = _images(1)[0]
    image.save(tmp_path / "x.png")
    (labels, probs), = clf.predict_images([image], top_k=2)
    from_file, = clf.predict_paths([tmp_path / "x.png"], top_k=2)
    assert len(labels) == 2 and labels == from_file.labels and probs == pytest.approx(from_file.probs, abs=1e-6)
    for k in (0, -1, 2.5):
        with pytest.raises(ValueError, match=f"^top_k must be an integer >= 1, got {k}$"):
            clf.predict_images([image], top_k=k)
    with pytest.warns(DeprecationWarning, match="top_k_"):
        assert clf.predict_images([image], top_k_=2) == [(labels, probs)]
    assert top_k is top_k_predictions  # still importable under its old name (mmkit.tasks.image_classifier)


# numpy arrays as images.

def test_uint8_arrays_are_images(clf, zs):
    image = _images(1)[0]
    rgba = image.convert("RGBA")
    rgba.putalpha(128)
    arrays = [np.asarray(image), np.asarray(image.convert("L")), np.asarray(image.convert("L"))[..., None],
              np.asarray(rgba)]
    expected = [image, image.convert("L"), image.convert("L"), rgba]
    for array, pil in zip(arrays, expected):
        assert to_rgb(array).tobytes() == to_rgb(pil).tobytes()
    assert clf.predict_images(arrays) == clf.predict_images(expected)
    assert zs.predict_images(arrays, LABELS) == zs.predict_images(expected, LABELS)
    assert clf.attention_overlay(arrays[0]).tobytes() == clf.attention_overlay(image).tobytes()


@pytest.mark.parametrize("bad, name", [
    (torch.rand(3, 32, 32), "Tensor"),
    (np.zeros((32, 32, 3), np.float32), "a float32 array of shape (32, 32, 3)"),
    (np.zeros((3, 32, 32), np.uint8), "a uint8 array of shape (3, 32, 32)"),
    ("x.png", "str"),
])
def test_other_images_are_refused_by_type(clf, zs, bad, name):
    message = "^" + re.escape(f"expected PIL images (or HxWxC uint8 arrays), got {name}") + "$"
    with pytest.raises(TypeError, match=message):
        to_rgb(bad)
    with pytest.raises(TypeError, match=message):
        clf.predict_images([bad])
    with pytest.raises(TypeError, match=message):
        zs.predict_images([bad], LABELS)


# ZeroShotClassifier's arguments.

def test_empty_templates_are_refused_not_replaced(zs):
    with pytest.raises(ValueError, match="templates need exactly one '{}'"):
        zs.predict_images(_images(1), LABELS, templates=[])


def test_set_labels_takes_a_list_of_names(clip):
    scorer = ZeroShotClassifier(copy.deepcopy(clip), _tokens, EvalTransform(image_size=32))
    scorer.set_labels({label: expand_prompts([label], ["a {}"]) for label in LABELS})
    from_dict = scorer.embeddings.clone()
    scorer.set_labels(LABELS, templates=["a {}"])
    assert scorer.names == LABELS
    torch.testing.assert_close(scorer.embeddings, from_dict)
    scorer.set_labels(LABELS)  # the default templates, as predict_images uses them
    pixels = torch.stack([scorer.transform.pixels(im) for im in _images()])
    api = scorer.predict_images(_images(), LABELS)
    scores = scorer.scores(scorer.encode_images(pixels))
    assert [dict(row) for row in api] == [pytest.approx(dict(zip(LABELS, r)), abs=1e-6) for r in scores.tolist()]


def test_scores_before_set_labels_is_an_error(clip):
    scorer = ZeroShotClassifier(copy.deepcopy(clip), _tokens, EvalTransform(image_size=32))
    with pytest.raises(RuntimeError, match="^no labels yet: call set_labels first$"):
        scorer.scores(torch.randn(1, 16))


# TextToImage's saved sampling defaults.

def test_generate_and_stream_use_the_pipelines_defaults(t2i):
    tuned = TextToImage(t2i.model, t2i.vqgan, t2i.tokenizer, {"guidance": 3.0, "top_k": 4})
    explicit = t2i.generate(["a red circle"], 3, seed=2, guidance=3.0, top_k=4)[0].codes
    assert torch.equal(tuned.generate(["a red circle"], 3, seed=2)[0].codes, explicit)
    assert torch.equal(torch.cat([c for c, _ in tuned.stream("a red circle", 3, seed=2)]), explicit)
    plain = t2i.generate(["a red circle"], 3, seed=2)[0].codes  # guidance 1 (off), no top-k
    assert not torch.equal(plain, explicit)  # so the comparisons above could fail
    off = tuned.generate(["a red circle"], 3, seed=2, guidance=1.0, top_k=0)[0].codes  # 0: top-k off
    assert torch.equal(off, plain)
