"""BERT inference against transformers on the same tiny random-init checkpoints: embeddings equal a
plain transformers loop with mean pooling + L2 norm (sorted batches == one at a time), fill-mask
probabilities, candidates and filled texts equal the fill-mask pipeline's, the attention view equals
`output_attentions`, classifier scores equal the text-classification pipeline's; bad input is
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
from _bert import MAX_POSITIONS, write_tiny_bert, write_tiny_roberta_classifier
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


def _fill_mask_pipeline(ref, directory):
    from transformers import BertTokenizerFast, pipeline

    return pipeline("fill-mask", model=ref, tokenizer=BertTokenizerFast(str(directory / "vocab.txt")))


def test_fill_mask_probabilities_equal_transformers(mlm_dir):
    """Scores, candidate texts and the filled text are the fill-mask pipeline's: the softmax over the whole
    vocabulary (special tokens were hidden before the softmax, so every probability was about 4% higher)."""
    d, ref, tok = mlm_dir
    enc = load_encoder(d)
    text = "the cat [MASK] the moon."
    [pred] = fill_mask(enc, text, top_k=5)
    expected = _fill_mask_pipeline(ref, d)(text, top_k=5)
    assert not {r["token"] for r in expected} & tok.special_ids  # else mmkit's hidden specials would differ
    assert [t for t, _ in pred.candidates] == [r["token_str"] for r in expected]
    assert pred.ids == [r["token"] for r in expected]
    assert np.allclose([p for _, p in pred.candidates], [r["score"] for r in expected], atol=1e-6, rtol=0)
    assert pred.filled == expected[0]["sequence"] and pred.position == tok.encode(text).index(tok.mask_id)
    [every] = fill_mask(enc, text, top_k=10**6)  # past the vocabulary: no special token
    specials = set(tok.tokens(sorted(tok.special_ids)))
    assert len(every.candidates) == len(tok) - len(specials) and not specials & {t for t, _ in every.candidates}
    assert sum(p for _, p in every.candidates) < 1 - 1e-6  # the specials' share is not spread over the rest


def test_several_masks_keep_the_other_masks_as_transformers(mlm_dir):
    """Each `filled` fills its own mask and keeps the others, as the pipeline's sequence does: decoding with
    skip_special_tokens dropped them, and "the cat. the moon." read as a sentence that was never predicted."""
    d, ref, tok = mlm_dir
    text = "The Cat [MASK] the moon [MASK]."
    preds = fill_mask(load_encoder(d), text, top_k=3)
    expected = _fill_mask_pipeline(ref, d)(text, top_k=3)
    assert len(preds) == 2
    for pred, rows in zip(preds, expected):
        assert pred.filled.count("[MASK]") == 1 and pred.candidates[0][0].lstrip("#") in pred.filled
        # transformers keeps [CLS]/[SEP] too, and decodes a word piece after an added token as " ##f"
        assert f"[CLS] {pred.filled} [SEP]" == rows[0]["sequence"].replace(" ##", "")
        assert np.allclose([p for _, p in pred.candidates], [r["score"] for r in rows], atol=1e-6, rtol=0)


def _write_tiny_roberta_mlm(directory):
    """A random-init RobertaForMaskedLM on the byte-level BPE of `write_tiny_roberta_classifier`."""
    from transformers import RobertaForMaskedLM

    clf, hf_tok = write_tiny_roberta_classifier(directory / "clf")
    torch.manual_seed(0)
    model = RobertaForMaskedLM(clf.config).eval()
    model.save_pretrained(directory / "mlm")
    for name in ("vocab.json", "merges.txt"):
        (directory / "mlm" / name).write_bytes((directory / "clf" / name).read_bytes())
    return directory / "mlm", model, hf_tok


def test_roberta_candidates_are_decoded_text_as_the_pipeline(tmp_path):
    """Byte-level BPE candidates are the ids decoded (" sees", "é"), the pipeline's token_str, never the raw
    symbols ("Ġsees", "Ã©") `tokens` gives; their probabilities are the pipeline's too."""
    from transformers import pipeline

    d, ref, hf_tok = _write_tiny_roberta_mlm(tmp_path)
    enc = load_encoder(d)
    text = "The cat <mask> the moon."
    [pred] = fill_mask(enc, text, top_k=len(hf_tok))  # every token but the 5 special ones
    ranked = pipeline("fill-mask", model=ref, tokenizer=hf_tok)(text, top_k=len(hf_tok))
    expected = [r for r in ranked if r["token"] not in enc.tokenizer.special_ids]
    assert len(pred.candidates) == len(expected) == len(hf_tok) - 5
    assert [t for t, _ in pred.candidates] == [r["token_str"] for r in expected]
    assert np.allclose([p for _, p in pred.candidates], [r["score"] for r in expected], atol=1e-6, rtol=0)
    assert " sees" in [t for t, _ in pred.candidates] and not any("Ġ" in t for t, _ in pred.candidates)
    assert pred.filled == expected[0]["sequence"]


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


def _with_problem_type(directory, problem_type):
    import json

    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "problem_type": problem_type}))


@pytest.mark.parametrize("problem_type, num_labels, scoring", [
    (None, 3, "softmax"), ("single_label_classification", 3, "softmax"),
    ("multi_label_classification", 3, "sigmoid"), (None, 1, "sigmoid"), ("regression", 1, "none"),
])
def test_classifier_scores_are_the_pipelines_for_every_problem_type(tmp_path, problem_type, num_labels, scoring):
    """transformers' text-classification pipeline applies sigmoid to a multi-label or one-logit model and
    nothing to a regression: mmkit took the softmax of every model, so a regression model scored 1.0 on every
    text and multi-label probabilities summed to 1. The problem_type survives an mmkit export."""
    from transformers import BertForSequenceClassification, BertTokenizerFast, pipeline

    d = tmp_path / "hf"
    write_tiny_bert(d, "classify", num_labels=num_labels)
    _with_problem_type(d, problem_type)
    ref = BertForSequenceClassification.from_pretrained(d).eval()
    rows = pipeline("text-classification", model=ref, tokenizer=BertTokenizerFast(str(d / "vocab.txt")),
                    top_k=None)(TEXTS)
    encoder = load_encoder(d)
    export = load_encoder(encoder.save_pretrained(tmp_path / "export"))
    assert export.problem_type == encoder.problem_type == problem_type
    for loaded in (encoder, export):
        predictor = TextClassifierPredictor(loaded, batch_size=3)
        assert predictor.scoring == scoring
        for pred, expected in zip(predictor.predict(TEXTS), rows):
            assert (pred.label, pred.score) == pytest.approx((expected[0]["label"], expected[0]["score"]), abs=1e-5)
            assert pred.probs == pytest.approx({r["label"]: r["score"] for r in expected}, abs=1e-5)


def test_an_unknown_problem_type_is_refused_in_one_line(tmp_path):
    write_tiny_bert(tmp_path, "classify")
    _with_problem_type(tmp_path, "ordinal")
    with pytest.raises(WeightsError, match=r"config.json: problem_type must be one of regression, "
                                           r"single_label_classification, multi_label_classification, got 'ordinal'$"):
        load_encoder(tmp_path)


def test_wrong_checkpoints_are_refused(tmp_path, mlm_dir):
    write_tiny_gpt2(tmp_path / "gpt")
    with pytest.raises(WeightsError, match="'gpt2' model, not a BERT-family encoder"):
        load_encoder(tmp_path / "gpt")
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load_encoder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no classification head"):
        TextClassifierPredictor(load_encoder(mlm_dir[0]))
    assert load_encoder(mlm_dir[0]).model.max_len == MAX_POSITIONS
