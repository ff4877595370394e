"""`mmkit demo --bert DIR --precision bf16 | --quantize int8`: the bert tab loads its encoder with the demo's
settings (it ran fp32 whatever was asked), and its Fill gives fp32's best candidate, its probability within the
tolerance of fp32's."""
from __future__ import annotations

import pytest
import torch
from _bert import write_tiny_bert

from mmkit.cli.demo import TabSettings, bert_tab
from mmkit.inference.encoder import load_encoder

TEXTS = ["a [MASK] finds an apple", "the teacher [MASK] a book", "the dog [MASK] the moon."]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny BERT masked-LM whose masks each have a clear best candidate (its MLM head's LayerNorm gain x 8:
    a random one's top two candidates are 0.3% apart, which int8 swaps)."""
    d = tmp_path_factory.mktemp("bert")
    write_tiny_bert(d / "hf", "mlm")
    encoder = load_encoder(d / "hf")
    with torch.no_grad():
        encoder.model.mlm_head.norm.weight.mul_(8.0)
    return encoder.save_pretrained(d / "peaked")


@pytest.mark.parametrize("precision, quantize, tolerance", [("bf16", "none", 0.05), ("fp32", "int8", 0.15)])
def test_the_bert_tab_runs_at_the_demos_precision_and_int8(model, monkeypatch, precision, quantize, tolerance):
    import demos.bert

    served = []
    monkeypatch.setattr(demos.bert, "bert_tab", lambda encoder, top_k: served.append((encoder, top_k)))
    bert_tab(model, TabSettings(top_k=3, precision=precision, quantize=quantize))()
    [(encoder, top_k)] = served
    assert top_k == 3 and encoder.precision == precision
    assert (type(encoder.model.encoder.blocks[0].attn.qkv).__name__ == "Int8Linear") == (quantize == "int8")
    exact = load_encoder(model)
    differences = []
    for text in TEXTS:
        got, filled = demos.bert.fill(encoder, text, 3)
        want, want_filled = demos.bert.fill(exact, text, 3)
        assert filled == want_filled and list(got)[0] == list(want)[0], text
        differences.append(abs(got[list(got)[0]] - want[list(want)[0]]))
    assert 0 < max(differences) <= tolerance  # above 0: the tab's fills ran at the reduced precision
