"""`load_encoder(precision=, quantize=)`: bf16 autocast (emulated where the CPU lacks it: slow, so the inputs
are tiny) and int8 Linear layers agree with fp32 within stated tolerances in fill-mask, the attention view
and classification; fp32 stays the exact default; impossible settings are refused before anything runs."""
from __future__ import annotations

import contextlib
import logging

import pytest
import torch

import mmkit.inference.precision as precision_module
from mmkit.inference.embed import Embedder
from mmkit.inference.encoder import load_encoder
from mmkit.inference.fill_mask import attention_view, fill_mask
from mmkit.inference.text_classify import TextClassifierPredictor
from _bert import write_peaked_mlm, write_tiny_bert

MASKED = ["a [MASK] finds an apple", "the teacher [MASK] a book", "[MASK] dog", "the dog [MASK] the moon.",
          "my friend remembers a [MASK] song", "the [MASK] road", "a quiet [MASK]"]
VIEWED = "the cat sees the moon."
CLASSIFIED = ["the cat sees the moon.", "a dog finds an apple", "the end", "the teacher reads a book to the cat"]
# (precision, quantize, largest |probability - fp32's| of the top candidates, of an attention weight): measured
# bf16 0.023 and 0.005, int8 0.091 and 0.029
REDUCED = [("bf16", "none", 0.05, 0.02), ("fp32", "int8", 0.15, 0.05)]


@pytest.fixture(scope="module")
def peaked_mlm(tmp_path_factory):
    """A tiny BERT masked-LM export whose masks each have a clear best candidate (by 0.28 to 0.76 in probability;
    the logits' int8 error grows with them: measured 0.09 in the top probability, bf16's 0.023)."""
    return write_peaked_mlm(tmp_path_factory.mktemp("mlm"))


@pytest.fixture(scope="module")
def exact(peaked_mlm):
    encoder = load_encoder(peaked_mlm)
    return [fill_mask(encoder, text, 3)[0] for text in MASKED], attention_view(encoder, VIEWED)[1]


def test_fp32_is_the_exact_default(peaked_mlm, exact, caplog):
    """No autocast and no int8 layer unless asked, nothing logged; the peaked checkpoint's best candidates lead
    by far more than the tolerances below, so equal top-1 is a test that can fail."""
    with caplog.at_level(logging.INFO, logger="mmkit"):
        encoder = load_encoder(peaked_mlm)
    assert encoder.precision == "fp32" and encoder.autocast is contextlib.nullcontext and not caplog.records
    assert type(encoder.model.encoder.blocks[0].attn.qkv) is torch.nn.Linear
    predictions, maps = exact
    assert [fill_mask(encoder, text, 3)[0] for text in MASKED] == predictions
    assert torch.equal(attention_view(encoder, VIEWED)[1], maps)
    assert min(p.candidates[0][1] - p.candidates[1][1] for p in predictions) > 0.25


@pytest.mark.parametrize("precision, quantize, prob_tolerance, map_tolerance", REDUCED)
def test_fill_mask_and_attention_agree_with_fp32(peaked_mlm, exact, caplog, precision, quantize, prob_tolerance,
                                                 map_tolerance):
    with caplog.at_level(logging.INFO, logger="mmkit"):
        encoder = load_encoder(peaked_mlm, precision=precision, quantize=quantize)
    assert encoder.precision == precision
    assert sum(r.getMessage().startswith("encoder:") for r in caplog.records) == 1  # the choice, logged once
    int8 = type(encoder.model.encoder.blocks[0].attn.qkv).__name__ == "Int8Linear"
    assert int8 == (quantize == "int8")
    predictions, maps = exact
    differences = []
    for text, want in zip(MASKED, predictions):
        got = fill_mask(encoder, text, 3)[0]
        assert got.ids[0] == want.ids[0] and got.filled == want.filled, text
        differences.append(abs(got.candidates[0][1] - want.candidates[0][1]))
    assert 0 < max(differences) <= prob_tolerance  # above 0: the reduced path did run
    got_maps = attention_view(encoder, VIEWED)[1]
    assert got_maps.dtype == torch.float32 and 0 < (got_maps - maps).abs().max() <= map_tolerance


@pytest.mark.parametrize("native, resolved", [(True, "bf16"), (False, "fp32")])
def test_auto_is_bf16_where_the_cpu_has_it_natively(peaked_mlm, monkeypatch, native, resolved):
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: native)
    assert load_encoder(peaked_mlm, precision="auto").precision == resolved
    assert load_encoder(peaked_mlm, precision="auto", quantize="int8").precision == "fp32"


@pytest.mark.parametrize("precision, quantize, message", [("bf16", "int8", "int8 Linear layers run on fp32"),
                                                          ("fp16", "none", "fp16 autocast is for GPUs"),
                                                          ("fp64", "none", "precision must be one of"),
                                                          ("fp32", "int4", "--quantize must be one of")])
def test_settings_the_cpu_cannot_run_are_refused(peaked_mlm, precision, quantize, message):
    with pytest.raises(ValueError, match=message):
        load_encoder(peaked_mlm, precision=precision, quantize=quantize)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clf")
    write_tiny_bert(d, "classify")
    return d


@pytest.mark.parametrize("precision, quantize, tolerance", [("bf16", "none", 0.02), ("fp32", "int8", 0.05)])
def test_a_classifier_runs_at_the_encoders_arithmetic(classifier_dir, precision, quantize, tolerance):
    """`TextClassifierPredictor` without its own precision runs at the one `load_encoder` chose (under int8 the
    head stays fp32): scores within the tolerance of fp32's, the same labels."""
    want = TextClassifierPredictor(load_encoder(classifier_dir)).predict(CLASSIFIED)
    encoder = load_encoder(classifier_dir, precision=precision, quantize=quantize)
    if quantize == "int8":
        assert not any(type(m).__name__ == "Int8Linear" for m in encoder.model.classifier.modules())
    predictor = TextClassifierPredictor(encoder)
    assert predictor.precision == precision and predictor._autocast is encoder.autocast
    got = predictor.predict(CLASSIFIED)
    assert [g.label for g in got] == [w.label for w in want]
    differences = [abs(g.probs[k] - w.probs[k]) for g, w in zip(got, want) for k in w.probs]
    assert 0 < max(differences) <= tolerance


def test_a_classifier_on_an_int8_encoder_refuses_bf16(classifier_dir):
    """bf16 autocast over int8 layers is refused as `--precision bf16 --quantize int8` is, whichever asked int8."""
    with pytest.raises(ValueError, match="int8 Linear layers run on fp32"):
        TextClassifierPredictor(load_encoder(classifier_dir, quantize="int8"), precision="bf16")


@pytest.mark.parametrize("precision, quantize, tolerance", [("bf16", "none", 0.02), ("fp32", "int8", 0.05)])
def test_an_embedder_runs_at_the_encoders_arithmetic(peaked_mlm, precision, quantize, tolerance):
    """`Embedder` without its own precision runs at the one `load_encoder` chose (it ran fp32 whatever the
    encoder was loaded at): unit vectors within the tolerance of fp32's in cosine, not equal to them."""
    want = Embedder(load_encoder(peaked_mlm)).embed(CLASSIFIED)
    encoder = load_encoder(peaked_mlm, precision=precision, quantize=quantize)
    embedder = Embedder(encoder)
    assert embedder.precision == precision and embedder._autocast is encoder.autocast
    got = embedder.embed(CLASSIFIED)
    cosine_gap = 1 - (got * want).sum(-1)
    assert 0 < cosine_gap.max() <= tolerance
