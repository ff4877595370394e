"""One zero-shot scorer: `mmkit label`'s path (set_labels + scores), the API and demo's
`predict_images`, the functional `zero_shot_scores` and the training callback's
`zero_shot_classifier` + `zero_shot_logits` give the same numbers, with the same default
templates; the old import paths still work, with a DeprecationWarning.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

from mmkit.data.transforms import EvalTransform
from mmkit.inference import zero_shot as Z
from mmkit.inference.prompts import DEFAULT_TEMPLATES, expand_prompts
from mmkit.models.clip import CLIP

from _clip import WORD_CLIP
from _clip import word_tokens as _tokens

TINY = WORD_CLIP
LABELS = ["red circle", "blue star", "green cross"]


@pytest.fixture(scope="module")
def scorer() -> Z.ZeroShotClassifier:
    torch.manual_seed(0)
    return Z.ZeroShotClassifier(CLIP.from_config(TINY), _tokens, EvalTransform(image_size=32), precision="fp32")


def _images(n: int = 4) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (36, 50, 3), dtype=np.uint8)) for _ in range(n)]


def test_every_caller_gets_the_same_scores_and_default_templates(scorer):
    images = _images()
    assert len(DEFAULT_TEMPLATES) == 12 and scorer.templates == list(DEFAULT_TEMPLATES)
    api = scorer.predict_images(images, LABELS)  # the demo's and the Python API's path, default templates
    scorer.set_labels({label: expand_prompts([label], DEFAULT_TEMPLATES) for label in LABELS})  # mmkit label's
    pixels = torch.stack([scorer.transform.pixels(im) for im in images])
    label_path = scorer.scores(scorer.encode_images(pixels))
    functional = Z.zero_shot_scores(scorer.model, _tokens, images, LABELS, transform=scorer.transform)
    classifier = Z.zero_shot_classifier(scorer.model, _tokens, LABELS)  # the training callback's
    callback = Z.zero_shot_logits(scorer.model, scorer.transform.normalize(pixels), classifier).softmax(-1)
    for i in range(len(images)):
        expected = dict(zip(LABELS, label_path[i].tolist()))
        assert dict(api[i]) == pytest.approx(expected, abs=1e-6)
        assert dict(functional[i]) == pytest.approx(expected, abs=1e-6)
        assert dict(zip(LABELS, callback[i].tolist())) == pytest.approx(expected, abs=1e-6)
    torch.testing.assert_close(classifier, scorer.embeddings)
    assert scorer.predict_images(images, LABELS, ["a {}"]) != api  # templates matter: the default was used


def test_predict_images_leaves_the_label_state_alone(scorer):
    scorer.set_labels({"x": ["x"], "y": ["y"]})
    before = scorer.embeddings.clone()
    scorer.predict_images(_images(1), LABELS)
    assert scorer.names == ["x", "y"] and torch.equal(scorer.embeddings, before)


@pytest.mark.parametrize("module, name, new", [
    ("mmkit.tasks", "Classifier", "mmkit.inference.classifier"),
    ("mmkit.tasks", "write_predictions", "mmkit.inference.writers"),
    ("mmkit.tasks", "ZeroShotClassifier", "mmkit.inference.zero_shot"),
    ("mmkit.tasks", "zero_shot_scores", "mmkit.inference.zero_shot"),
    ("mmkit.tasks.classify", "Classifier", "mmkit.inference.classifier"),
    ("mmkit.tasks.zero_shot", "ZeroShotClassifier", "mmkit.inference.zero_shot"),
    ("mmkit.tasks.label", "Decision", "mmkit.inference.label_outputs"),
])
def test_old_import_paths_forward_with_a_deprecation_warning(module, name, new):
    with pytest.warns(DeprecationWarning, match="deprecated"):
        old = getattr(importlib.import_module(module), name)
    assert old is getattr(importlib.import_module(new), name)


def test_renamed_label_names_forward_to_the_new_ones():
    label = importlib.import_module("mmkit.tasks.label")
    with pytest.warns(DeprecationWarning, match="ZeroShotClassifier"):
        assert label.ZeroShotLabeler is Z.ZeroShotClassifier
    with pytest.warns(DeprecationWarning, match="EvalTransform"):
        assert label.Preprocess is EvalTransform
    with pytest.raises(AttributeError):
        label.no_such_name  # noqa: B018
