"""BERT / RoBERTa: contract tests (shapes, backward, padding invariance, heads, save/load) and exact
parity with transformers' BertModel, BertForMaskedLM, BertForSequenceClassification, RobertaModel,
RobertaForMaskedLM and RobertaForSequenceClassification through `BERT.from_hf` (tiny random-init
models, eager attention, fp32, <= 1e-4)."""
from __future__ import annotations

import pytest
import torch
from transformers import (BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel, RobertaConfig,
                          RobertaForMaskedLM, RobertaForSequenceClassification, RobertaModel)

from mmkit.models import BERT
from mmkit.weights import WeightsError

VOCAB = 99
HF = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
          max_position_embeddings=64, attn_implementation="eager")


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types)


def _close_on_real_tokens(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((a - b).abs() * mask[..., None]).max())


@pytest.mark.parametrize("cls", [BertModel, BertForMaskedLM, BertForSequenceClassification])
def test_bert_matches_transformers(cls, batch):
    torch.manual_seed(0)
    ref = cls(BertConfig(**HF, num_labels=3)).eval()
    model = BERT.from_hf(ref)
    assert not model.training
    with torch.no_grad():
        base = getattr(ref, "bert", ref)
        out = base(**batch)
        hidden = model.encode(**batch)
        assert _close_on_real_tokens(out.last_hidden_state, hidden, batch["attention_mask"]) <= 1e-4
        if cls is BertModel:
            assert (out.pooler_output - model.pool(hidden)).abs().max() <= 1e-4
            assert model.mlm_head is None and model.classifier is None
        if cls is BertForMaskedLM:
            assert model.pooler is None
            assert (ref(**batch).logits - model.mlm_logits(hidden)).abs().max() <= 1e-4
        if cls is BertForSequenceClassification:
            assert (ref(**batch).logits - model.classify(**batch)).abs().max() <= 1e-4


@pytest.mark.parametrize("cls", [RobertaModel, RobertaForMaskedLM, RobertaForSequenceClassification])
def test_roberta_positions_after_the_padding_index(cls, batch):
    torch.manual_seed(0)
    ref = cls(RobertaConfig(**{**HF, "max_position_embeddings": 66}, type_vocab_size=1, pad_token_id=1,
                            layer_norm_eps=1e-5, num_labels=3, initializer_range=0.2)).eval()
    ids = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 1)  # RoBERTa pads with id 1
    model = BERT.from_hf(ref)
    assert model.config["positions"] == "roberta" and model.max_len == 64
    with torch.no_grad():
        hidden = model.encode(ids, batch["attention_mask"])
        base = getattr(ref, "roberta", ref)
        ref_hidden = base(input_ids=ids, attention_mask=batch["attention_mask"]).last_hidden_state
        assert _close_on_real_tokens(ref_hidden, hidden, batch["attention_mask"]) <= 1e-4
        if cls is RobertaForMaskedLM:
            assert (ref(input_ids=ids, attention_mask=batch["attention_mask"]).logits
                    - model.mlm_logits(hidden)).abs().max() <= 1e-4
        if cls is RobertaForSequenceClassification:  # its own dense + tanh head on <s>, no pooler
            assert model.pooler is None and model.config["classifier_head"] == "dense_tanh"
            logits = ref(input_ids=ids, attention_mask=batch["attention_mask"]).logits
            assert logits.std() > 0.1  # a head whose output varies, so the comparison can fail
            assert (logits - model.classify(ids, batch["attention_mask"])).abs().max() <= 1e-4


def test_a_classification_head_of_neither_kind_is_refused_by_name():
    torch.manual_seed(0)
    ref = RobertaForSequenceClassification(RobertaConfig(**HF, pad_token_id=1, num_labels=2))
    ref.classifier.extra = torch.nn.Linear(2, 2)
    with pytest.raises(WeightsError, match="neither BERT's .* nor RoBERTa's .*classifier.extra.weight"):
        BERT.from_hf(ref)


def test_import_from_a_checkpoint_directory(tmp_path, batch):
    torch.manual_seed(0)
    ref = BertForMaskedLM(BertConfig(**HF)).eval()
    ref.save_pretrained(tmp_path)
    model = BERT.from_hf(tmp_path)
    with torch.no_grad():
        assert (ref(**batch).logits - model.mlm_logits(model.encode(**batch))).abs().max() <= 1e-4


def test_unsupported_variants_are_refused_by_name():
    torch.manual_seed(0)
    ref = BertModel(BertConfig(**{**HF, "hidden_act": "relu"}))
    with pytest.raises(WeightsError, match="hidden_act='relu'"):
        BERT.from_hf(ref)
    with pytest.raises(WeightsError, match="expected a transformers"):
        BERT.from_hf(torch.nn.Linear(2, 2))


def test_padding_does_not_change_real_tokens_and_backward_reaches_every_parameter(batch):
    torch.manual_seed(0)
    model = BERT(vocab_size=VOCAB, max_len=32, dim=32, depth=2, num_heads=4, num_classes=3, dropout=0.0)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        full = model.encode(ids, mask)
        alone = model.encode(ids[2:, :4])
    assert (full[2:, :4] - alone).abs().max() <= 1e-5
    hidden = model.encode(ids, mask)
    loss = model.mlm_logits(hidden).logsumexp(-1).mean() + model.classify(ids, mask).logsumexp(-1).mean()
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_classify_with_keep_equals_the_full_encoder(batch):
    torch.manual_seed(0)
    model = BERT(vocab_size=VOCAB, max_len=32, dim=32, depth=2, num_heads=4, num_classes=3).eval()
    with torch.no_grad():
        full = model.classifier(model.encode(batch["input_ids"], batch["attention_mask"]), None, model.pooler)
        assert (model.classify(batch["input_ids"], batch["attention_mask"]) - full).abs().max() <= 1e-5


def test_save_load_round_trip_and_moving_heads(tmp_path, batch):
    torch.manual_seed(0)
    model = BERT(vocab_size=VOCAB, max_len=32, dim=32, depth=2, num_heads=4, pooler=False).eval()
    model.save_pretrained(tmp_path)
    loaded = BERT.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(model.encode(batch["input_ids"]), loaded.encode(batch["input_ids"]))
        clf = model.with_heads(num_classes=5).eval()
        assert clf.classifier.out_features == 5 and clf.mlm_head is None
        assert torch.equal(clf.encode(batch["input_ids"]), model.encode(batch["input_ids"]))
    with pytest.raises(ValueError, match="needs the pooler"):
        BERT(vocab_size=VOCAB, dim=32, depth=1, num_heads=4, pooler=False, num_classes=2)
    with pytest.raises(ValueError, match="unknown classifier_head 'cls'"):
        BERT(vocab_size=VOCAB, dim=32, depth=1, num_heads=4, num_classes=2, classifier_head="cls")


@pytest.mark.parametrize("head", ["dense_tanh", "mean"])
def test_headed_copies_keep_the_encoder_and_save_load_exactly(tmp_path, batch, head):
    torch.manual_seed(0)
    mlm = BERT(vocab_size=VOCAB, max_len=32, dim=32, depth=2, num_heads=4, pooler=False).eval()
    clf = mlm.with_heads(pooler=False, num_classes=4, classifier_head=head).eval()
    assert clf.pooler is None and clf.classifier.out_features == 4
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        hidden = clf.encode(ids, mask)
        assert torch.equal(hidden, mlm.encode(ids, mask))
        clf.save_pretrained(tmp_path)
        loaded = BERT.from_pretrained(tmp_path).eval()
        assert loaded.config["classifier_head"] == head
        assert torch.equal(loaded.classify(ids, mask), clf.classify(ids, mask))
        if head == "mean":  # the mean over the real tokens only: padding changes nothing
            m = mask[..., None].float()
            expected = clf.classifier.weight @ ((hidden * m).sum(1) / m.sum(1)).T
            assert (clf.classify(ids, mask) - expected.T - clf.classifier.bias).abs().max() <= 1e-5
            assert (clf.classify(ids[2:, :4]) - clf.classify(ids[2:], mask[2:])).abs().max() <= 1e-5
