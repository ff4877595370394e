"""BERT inference against transformers on the same tiny random-init checkpoints: embeddings equal a
plain transformers loop with mean pooling + L2 norm (sorted batches == one at a time), fill-mask
probabilities equal the softmax of BertForMaskedLM's logits, the attention view equals
`output_attentions`, classifier probabilities equal BertForSequenceClassification's; bad input is
one clear error."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmkit.inference.embed import Embedder
from mmkit.inference.encoder import load_encoder
from mmkit.inference.fill_mask import attention_view, fill_mask
from mmkit.inference.text_classify import TextClassifierPredictor
from mmkit.weights import WeightsError
from _bert import MAX_POSITIONS, write_tiny_bert
from _gpt import write_tiny_gpt2

TEXTS = ["the cat sees the moon.", "a dog", "my friend remembers a quiet song and the long road.", "the teacher"]


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlm")
    return d, *write_tiny_bert(d, "mlm")


def _reference_embeddings(ref, tok, texts):
    out = []
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok.encode(t)])
            h = ref.bert(input_ids=ids).last_hidden_state[0].mean(0)
            out.append(torch.nn.functional.normalize(h, dim=-1).numpy())
    return np.stack(out)


def test_embeddings_equal_transformers_mean_pooling(mlm_dir):
    d, ref, tok = mlm_dir
    expected = _reference_embeddings(ref, tok, TEXTS)
    for batch_size in (1, 3, 16):  # sorted, padded batches == one text at a time
        got = Embedder(load_encoder(d), batch_size).embed(TEXTS)
        assert got.dtype == np.float32 and np.abs(got - expected).max() <= 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_long_texts_are_truncated_with_a_warning(mlm_dir, caplog):
    d, _, _ = mlm_dir
    long = " ".join(["the cat sees the moon"] * 20)
    got = Embedder(load_encoder(d)).embed([long, "a dog"])
    assert np.isfinite(got).all() and "truncated" in caplog.text


def test_fill_mask_probabilities_equal_transformers(mlm_dir):
    d, ref, tok = mlm_dir
    enc = load_encoder(d)
    [pred] = fill_mask(enc, "the cat [MASK] the moon.", top_k=3)
    ids = tok.encode("the cat [MASK] the moon.")
    with torch.no_grad():
        logits = ref(input_ids=torch.tensor([ids])).logits[0, ids.index(tok.mask_id)]
    logits[sorted(tok.special_ids)] = float("-inf")
    probs, top = logits.softmax(-1).topk(3)
    assert [t for t, _ in pred.candidates] == tok.tokens(top.tolist())
    assert np.allclose([p for _, p in pred.candidates], probs.numpy(), atol=1e-5)
    assert pred.position == ids.index(tok.mask_id) and "[MASK]" not in pred.filled
    assert len(fill_mask(enc, "[MASK] cat [MASK] the moon.")) == 2
    [every] = fill_mask(enc, "the cat [MASK] the moon.", top_k=10**6)  # past the vocabulary: no special token
    specials = set(tok.tokens(sorted(tok.special_ids)))
    assert len(every.candidates) == len(tok) - len(specials) and not specials & {t for t, _ in every.candidates}


@pytest.mark.parametrize("text, message", [
    ("the cat sees the moon.", r"no \[MASK\] in the text"),
    ("   ", "the text is empty"),
    (" ".join(["the [MASK] sees the moon"] * 20), "more than the model's 32"),
])
def test_fill_mask_bad_input_is_one_clear_error(mlm_dir, text, message):
    with pytest.raises(ValueError, match=message):
        fill_mask(load_encoder(mlm_dir[0]), text)


def test_attention_view_equals_transformers_output_attentions(mlm_dir):
    d, ref, tok = mlm_dir
    tokens, maps = attention_view(load_encoder(d), "the cat sees the moon.")
    ids = tok.encode("the cat sees the moon.")
    with torch.no_grad():
        expected = torch.stack([a[0] for a in ref(input_ids=torch.tensor([ids]), output_attentions=True).attentions])
    assert tokens[0] == "[CLS]" and len(tokens) == len(ids)
    assert maps.shape == (2, 4, len(ids), len(ids)) and (maps - expected).abs().max() <= 1e-5


def test_classifier_probabilities_and_names(tmp_path):
    ref, tok = write_tiny_bert(tmp_path, "classify")
    preds = TextClassifierPredictor(load_encoder(tmp_path), batch_size=2).predict(TEXTS)
    with torch.no_grad():
        expected = [ref(input_ids=torch.tensor([tok.encode(t)])).logits[0].softmax(-1) for t in TEXTS]
    for p, e in zip(preds, expected):
        assert p.label == f"class{int(e.argmax())}" and abs(p.score - float(e.max())) <= 1e-5
        assert list(p.probs) == ["class0", "class1", "class2"]


def test_wrong_checkpoints_are_refused(tmp_path, mlm_dir):
    write_tiny_gpt2(tmp_path / "gpt")
    with pytest.raises(WeightsError, match="'gpt2' model, not a BERT-family encoder"):
        load_encoder(tmp_path / "gpt")
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load_encoder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no classification head"):
        TextClassifierPredictor(load_encoder(mlm_dir[0]))
    assert load_encoder(mlm_dir[0]).model.max_len == MAX_POSITIONS
