"""Imported BERT/RoBERTa, MarianMT and T5 models train with transformers' dropout: in training mode, from the
same torch seed, the same logits and gradients as the reference (every mask drawn in the same order and shape),
with sdpa and eager attention; natively built models keep the dropout layout the recipes' measured results had;
exports keep the rates, and exports written before the rates were fields load with the old layout."""
from __future__ import annotations

import json
from typing import Callable

import pytest
import torch
from torch import Tensor, nn

from mmkit.core import Attention
from mmkit.models import BERT, T5, Seq2Seq
from tests.models._seq2seq_refs import PAD, padded_sources, tiny_marian, tiny_t5

IMPLEMENTATIONS = ["sdpa", "eager"]


def dropout_layout(model: nn.Module) -> dict[str, float]:
    """Every dropout rate of `model`: nn.Dropout modules by name, and each Attention's probability dropout
    (a float SDPA reads, not a module) as '<name>.attn_drop'."""
    layout = {name: m.p for name, m in model.named_modules() if isinstance(m, nn.Dropout)}
    layout.update({f"{name}.attn_drop": m.attn_drop for name, m in model.named_modules() if isinstance(m, Attention)})
    return layout


def _check_training_parity(ours: nn.Module, theirs: nn.Module, run_ours: Callable[[], Tensor],
                           run_theirs: Callable[[], Tensor], our_embed: Tensor, their_embed: Tensor) -> None:
    """From one seed, training-mode outputs within 1e-5 and token-embedding gradients within 1e-6, relative to
    their largest value where that exceeds 1 (T5 v1.1's unscaled logits reach ~24: float32 rounding alone is
    ~1e-5 there, as in eval); and the outputs are not the eval ones (dropout acted)."""
    ours.train(), theirs.train()
    torch.manual_seed(1)
    expected = run_theirs()
    expected.square().mean().backward()
    torch.manual_seed(1)
    got = run_ours()
    got.square().mean().backward()
    ours.eval()
    with torch.no_grad():
        assert (got - run_ours()).abs().max() > 1e-3  # dropout acted
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max().clamp(min=1)
    assert (our_embed.grad - their_embed.grad).abs().max() <= 1e-6 * their_embed.grad.abs().max().clamp(min=1)


def _bert_config(roberta: bool, **fields):
    from transformers import BertConfig, RobertaConfig

    sizes = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2, initializer_range=0.2)
    if roberta:  # padding id 1 offsets the positions: 32 tokens need 34 rows
        return RobertaConfig(**sizes, max_position_embeddings=34, type_vocab_size=1, pad_token_id=1,
                             layer_norm_eps=1e-5, **fields)
    return BertConfig(**sizes, max_position_embeddings=32, **fields)


def _padded_ids(pad: int) -> tuple[Tensor, Tensor]:
    """(3, 12) ids, two rows right-padded, and their validity mask."""
    ids = torch.randint(5, 97, (3, 12), generator=torch.Generator().manual_seed(2))
    ids[1, 8:], ids[2, 3:] = pad, pad
    return ids, ids != pad


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("kind", ["BertModel", "BertForMaskedLM", "RobertaForMaskedLM"])
def test_an_imported_bert_trains_with_transformers_dropout(kind, attn_implementation):
    """The attention probabilities drop with attention_probs_dropout_prob (was hidden_dropout_prob) and the
    feed-forward not after its activation (was hidden_dropout_prob): transformers' BERT drops the embeddings,
    the attention probabilities and each output dense's result, nothing else."""
    import transformers

    torch.manual_seed(0)
    hf = getattr(transformers, kind)(_bert_config(kind.startswith("Roberta"), attn_implementation=attn_implementation))
    bert = BERT.from_hf(hf)
    assert (bert.config["dropout"], bert.config["attn_dropout"], bert.config["activation_dropout"]) == (0.1, 0.2, 0)
    ids, valid = _padded_ids(hf.config.pad_token_id)
    if kind == "BertModel":
        base = hf
        run_ours, run_theirs = lambda: bert(ids, valid), lambda: hf(ids, attention_mask=valid).last_hidden_state
    else:
        base = getattr(hf, hf.base_model_prefix)
        run_ours, run_theirs = lambda: bert.mlm_logits(bert(ids, valid)), lambda: hf(ids, attention_mask=valid).logits
    _check_training_parity(bert, hf, run_ours, run_theirs, bert.tok_embed.weight,
                           base.embeddings.word_embeddings.weight)


@pytest.mark.parametrize("kind, classifier_dropout", [("BertForSequenceClassification", 0.3),
                                                      ("RobertaForSequenceClassification", None)])
def test_an_imported_classifier_trains_with_transformers_dropout(kind, classifier_dropout):
    """classifier_dropout is read (None: hidden_dropout_prob, in both). The encoder runs whole here, as
    transformers' does: `classify` computes the last block for the first position alone, which draws that
    block's masks for it alone (the same distribution for the position the head reads, other random numbers)."""
    import transformers

    torch.manual_seed(0)
    hf = getattr(transformers, kind)(_bert_config(kind.startswith("Roberta"), classifier_dropout=classifier_dropout,
                                                  num_labels=3, attn_implementation="sdpa"))
    bert = BERT.from_hf(hf)
    assert bert.config["classifier_dropout"] == classifier_dropout
    assert bert.classifier.drop.p == (classifier_dropout or 0.1)
    ids, valid = _padded_ids(hf.config.pad_token_id)
    base = getattr(hf, hf.base_model_prefix)
    _check_training_parity(bert, hf, lambda: bert.classifier(bert.encode(ids, valid), valid, bert.pooler),
                           lambda: hf(ids, attention_mask=valid).logits, bert.tok_embed.weight,
                           base.embeddings.word_embeddings.weight)


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
def test_an_imported_marian_trains_with_transformers_dropout(attn_implementation):
    """attention_dropout and activation_dropout are read (MarianConfig's 0; both were `dropout`): the
    embeddings, every sub-layer output (cross-attention's too), the attention probabilities and the
    feed-forward's activation drop as transformers' do."""
    hf = tiny_marian(dropout=0.1, attention_dropout=0.2, activation_dropout=0.15,
                     attn_implementation=attn_implementation)
    model = Seq2Seq.from_hf(hf)
    assert (model.config["dropout"], model.config["attn_dropout"], model.config["activation_dropout"]) == (
        0.1, 0.2, 0.15)
    src, valid = padded_sources(PAD)
    tgt = torch.randint(1, 98, (6, 7), generator=torch.Generator().manual_seed(3))
    tgt[:, 0] = PAD  # the decoder start

    def ours() -> Tensor:
        return model(tgt, context=model.encode(src, valid), context_mask=valid)

    def theirs() -> Tensor:
        return hf(input_ids=src, attention_mask=valid.long(), decoder_input_ids=tgt).logits

    _check_training_parity(model, hf, ours, theirs, model.tok_embed.weight, hf.model.shared.weight)


@pytest.mark.parametrize("attn_implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("feed_forward", ["relu", "gated-gelu"])
def test_an_imported_t5_trains_with_transformers_dropout(feed_forward, attn_implementation):
    """T5's one dropout_rate sits where transformers puts it: embeddings, attention probabilities, after the
    feed-forward's activation, every sub-layer output, each stack's output."""
    hf = tiny_t5(feed_forward, tie=feed_forward == "relu")
    hf.set_attn_implementation(attn_implementation)
    model = T5.from_hf(hf)
    assert model.config["dropout"] == hf.config.dropout_rate == 0.1
    src, valid = padded_sources(0)
    tgt = torch.randint(1, 98, (6, 7), generator=torch.Generator().manual_seed(3))
    tgt[:, 0] = 0  # the decoder start

    def ours() -> Tensor:
        return model(tgt, context=model.encode(src, valid), context_mask=valid)

    def theirs() -> Tensor:
        return hf(input_ids=src, attention_mask=valid.long(), decoder_input_ids=tgt).logits

    _check_training_parity(model, hf, ours, theirs, model.tok_embed.weight, hf.shared.weight)


def _native_layout(blocks: dict[str, int], rate: float, cross: str = "", extra: tuple[str, ...] = ()) -> dict:
    """The dropout layout mmkit's BERT and Seq2Seq had before the rates were separate: `rate` on the
    embeddings ("drop"), every attention's probabilities and output, both Mlp dropouts (after the activation
    and after fc2), and `extra` modules; `cross` names the stack whose blocks also cross-attend."""
    names = list(extra) + ["drop"]
    for stack, depth in blocks.items():
        for i in range(depth):
            parts = ["attn.proj_drop", "attn.attn_drop", "mlp.drop1", "mlp.drop2"]
            parts += ["cross_attn.proj_drop", "cross_attn.attn_drop"] if stack == cross else []
            names += [f"{stack}.blocks.{i}.{part}" for part in parts]
    return {name: rate for name in names}


BERT_RECIPE = dict(vocab_size=500, max_len=48, dim=128, depth=3, num_heads=4, mlp_ratio=4.0, dropout=0.1)
SEQ2SEQ_RECIPE = dict(vocab_size=500, max_len=64, dim=96, encoder_depth=2, decoder_depth=2, num_heads=4,
                      mlp_ratio=2.0, dropout=0.1, positions="interleaved", activation="relu")


def test_the_native_recipes_keep_their_dropout_layout():
    """configs/bert_wordnet_mlm.yaml, bert_wordnet_classify.yaml and translate_numbers.yaml (their measured
    results in the README) build with `dropout: 0.1` alone: every rate stays 0.1 where it was, the feed-forward
    activation's and the attention probabilities' included."""
    mlm = BERT(**BERT_RECIPE, pooler=False)
    assert dropout_layout(mlm) == _native_layout({"encoder": 3}, 0.1)
    classify = BERT(**BERT_RECIPE, pooler=False, mlm_head=False, num_classes=5, classifier_head="mean")
    assert dropout_layout(classify) == _native_layout({"encoder": 3}, 0.1, extra=("classifier.drop",))
    assert dropout_layout(mlm.with_heads(pooler=False, num_classes=5, classifier_head="mean")) == dropout_layout(
        classify)
    translate = Seq2Seq(**SEQ2SEQ_RECIPE)
    assert dropout_layout(translate) == _native_layout({"encoder": 2, "decoder": 2}, 0.1, cross="decoder")
    assert translate.tok_embed.padding_idx is None  # every embedding row trains through its lookups, as before


def _without(directory, *fields: str) -> None:
    """Rewrite an export's config.json as an mmkit from before `fields` existed wrote it."""
    path = directory / "config.json"
    doc = json.loads(path.read_text())
    doc["config"] = {k: v for k, v in doc["config"].items() if k not in fields}
    path.write_text(json.dumps(doc))


def test_exports_keep_the_imported_rates_and_old_exports_the_old_layout(tmp_path):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    bert = BERT.from_hf(BertForSequenceClassification(_bert_config(False, classifier_dropout=0.3, num_labels=2)))
    torch.manual_seed(0)
    marian = Seq2Seq.from_hf(tiny_marian(attention_dropout=0.2))
    for model, fields in [(bert, ("attn_dropout", "activation_dropout", "classifier_dropout")),
                          (marian, ("attn_dropout", "activation_dropout", "pad_id"))]:
        cls = type(model)
        directory = model.save_pretrained(tmp_path / cls.__name__)
        again = cls.from_pretrained(directory)
        assert {k: again.config[k] for k in fields} == {k: model.config[k] for k in fields}
        assert dropout_layout(again) == dropout_layout(model) != dropout_layout(cls(**model.config | {
            k: None for k in fields}))
        _without(directory, *fields)
        old = cls.from_pretrained(directory)
        rate = model.config["dropout"]
        assert set(dropout_layout(old).values()) == {rate}  # every rate `dropout`, as before
        assert dropout_layout(old).keys() == dropout_layout(model).keys()
        assert old.tok_embed.padding_idx == (0 if cls is BERT else None)  # BERT's pad_id was always a field


def test_marian_imports_its_configs_rates_and_layerdrop(caplog):
    """MarianConfig's defaults drop neither attention probabilities nor the activation (mmkit dropped both at
    `dropout` before); LayerDrop is imported as the stacks' rates (`tests/models/test_layerdrop.py`), no warning."""
    with caplog.at_level("WARNING", logger="mmkit.weights.from_hf_marian"):
        model = Seq2Seq.from_hf(tiny_marian())
        dropping = Seq2Seq.from_hf(tiny_marian(encoder_layerdrop=0.1))
    assert (model.config["attn_dropout"], model.config["activation_dropout"], model.config["pad_id"]) == (0, 0, PAD)
    assert (model.config["encoder_layerdrop"], model.config["decoder_layerdrop"]) == (0, 0)
    assert (dropping.encoder.layerdrop, dropping.decoder.layerdrop) == (0.1, 0)
    assert not caplog.records
