"""Convert Hugging Face transformers BERT and RoBERTa checkpoints (`BertModel`, `BertForMaskedLM`,
`BertForSequenceClassification`, `RobertaModel`, `RobertaForMaskedLM`,
`RobertaForSequenceClassification`) into the config and state dict of `mmkit.models.BERT` (built by
`BERT.from_hf`; this converter never imports mmkit.models).

transformers keeps query/key/value apart; they are staged and fused into mmkit's `qkv`. The MLM
decoder is tied to the word embeddings (checked equal, then dropped). Which heads the model gets
(pooler, MLM head, classifier and its kind) is read from the tensors present, so every variant
loads strictly: BERT's classifier is one linear layer on the pooled [CLS], RoBERTa's a dense + tanh +
out_proj head of its own on <s> (mmkit's "dense_tanh" classifier_head), with no pooler.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from mmkit.weights.config_check import check_divisible, check_fields, check_token_ids
from mmkit.weights.hf import check_tied, config_file, fuse_projections, hf_source
from mmkit.weights.keymap import remap
from mmkit.weights.native import Converted, WeightsError

log = logging.getLogger(__name__)

BERT_CLASSES = ("BertModel", "BertForMaskedLM", "BertForSequenceClassification", "RobertaModel",
                "RobertaForMaskedLM", "RobertaForSequenceClassification")

_ENCODER_KEYS = [
    ("embeddings.word_embeddings.weight", "tok_embed.weight"),
    ("embeddings.position_embeddings.weight", "pos_embed.weight"),
    ("embeddings.token_type_embeddings.weight", "type_embed.weight"),
    ("embeddings.LayerNorm.{p}", "embed_norm.{p}"),
    ("embeddings.position_ids", None),  # an arange buffer older checkpoints saved
    ("embeddings.token_type_ids", None),  # an all-zero buffer older checkpoints saved
    ("encoder.layer.{i}.attention.self.query.{p}", "encoder.blocks.{i}.attn.qkv.q.{p}"),
    ("encoder.layer.{i}.attention.self.key.{p}", "encoder.blocks.{i}.attn.qkv.k.{p}"),
    ("encoder.layer.{i}.attention.self.value.{p}", "encoder.blocks.{i}.attn.qkv.v.{p}"),
    ("encoder.layer.{i}.attention.output.dense.{p}", "encoder.blocks.{i}.attn.proj.{p}"),
    ("encoder.layer.{i}.attention.output.LayerNorm.{p}", "encoder.blocks.{i}.norm1.{p}"),
    ("encoder.layer.{i}.intermediate.dense.{p}", "encoder.blocks.{i}.mlp.fc1.{p}"),
    ("encoder.layer.{i}.output.dense.{p}", "encoder.blocks.{i}.mlp.fc2.{p}"),
    ("encoder.layer.{i}.output.LayerNorm.{p}", "encoder.blocks.{i}.norm2.{p}"),
    ("pooler.dense.{p}", "pooler.{p}"),
]
# BertModel's state dict has no prefix; the task models prefix "bert." / "roberta.".
BERT_KEYS = [(prefix + src, dst) for prefix in ("", "bert.", "roberta.") for src, dst in _ENCODER_KEYS] + [
    ("cls.predictions.transform.dense.{p}", "mlm_head.fc.{p}"),
    ("cls.predictions.transform.LayerNorm.{p}", "mlm_head.norm.{p}"),
    ("cls.predictions.bias", "mlm_head.bias"),
    ("cls.predictions.decoder.weight", None),  # tied to the word embeddings: checked by `check_tied`
    ("cls.predictions.decoder.bias", None),  # the same tensor as cls.predictions.bias: checked equal
    ("lm_head.dense.{p}", "mlm_head.fc.{p}"),
    ("lm_head.layer_norm.{p}", "mlm_head.norm.{p}"),
    ("lm_head.bias", "mlm_head.bias"),
    ("lm_head.decoder.weight", None),
    ("lm_head.decoder.bias", None),
    ("classifier.{p}", "classifier.{p}"),  # BERT: one linear layer on the pooled [CLS]
    ("classifier.dense.{p}", "classifier.dense.{p}"),  # RoBERTa: dense -> tanh -> out_proj on <s>
    ("classifier.out_proj.{p}", "classifier.out_proj.{p}"),
]
# The transformers fields the conversion reads, with their types (sizes positive: config_check's rules;
# a flag may be null, read as false).
_HF_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings")
_HF_FIELDS = {**{name: int for name in _HF_REQUIRED}, "type_vocab_size": int, "layer_norm_eps": float,
              "hidden_dropout_prob": float, "attention_probs_dropout_prob": float,
              "classifier_dropout": Optional[float], "pad_token_id": Optional[int], "hidden_act": str,
              "position_embedding_type": str,
              **{flag: Optional[bool] for flag in ("is_decoder", "add_cross_attention", "tie_word_embeddings")}}
_EMBEDDINGS = tuple(f"{p}embeddings.word_embeddings.weight" for p in ("", "bert.", "roberta."))
# transformers' `PretrainedConfig.problem_type` values: which function turns a classifier's logits into scores
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def check_problem_type(value: Any, where: str) -> Optional[str]:
    """`value` if it is one of `PROBLEM_TYPES` or None; else a WeightsError naming `where`."""
    if value is not None and value not in PROBLEM_TYPES:
        raise WeightsError(f"{where}: problem_type must be one of {', '.join(PROBLEM_TYPES)}, got {value!r:.80}")
    return value


def head_metadata(cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """What a transformers classifier's config (the file `where`) says of its head beyond the tensors, as mmkit
    export metadata: `class_names` (id2label, in id order) and `problem_type` (how its logits become scores:
    `mmkit.inference.text_classify`), where given."""
    labels = cfg.get("id2label") or {}
    metadata: dict[str, Any] = {}
    if labels:
        metadata["class_names"] = [labels.get(str(i), f"LABEL_{i}") for i in range(len(labels))]
    problem_type = check_problem_type(cfg.get("problem_type"), where)
    if problem_type is not None:
        metadata["problem_type"] = problem_type
    return metadata


def bert_config(cfg: dict[str, Any], state: dict[str, Tensor], source: str) -> dict[str, Any]:
    """mmkit BERT constructor arguments of a transformers Bert/Roberta config (its fields checked first),
    heads from `state`."""
    where = config_file(source)
    kind = cfg.get("model_type", "bert")
    if kind not in ("bert", "roberta"):
        raise WeightsError(f"{where}: expected a BERT or RoBERTa config, got model_type={kind!r}")
    check_fields(cfg, _HF_FIELDS, where, required=_HF_REQUIRED)
    check_divisible(cfg, "hidden_size", "num_attention_heads", where)
    check_token_ids(cfg, ["pad_token_id"], cfg["vocab_size"], where)
    unsupported = {
        f"hidden_act={cfg.get('hidden_act')!r}": cfg.get("hidden_act", "gelu") != "gelu",
        f"position_embedding_type={cfg.get('position_embedding_type')!r}":
            cfg.get("position_embedding_type", "absolute") != "absolute",
        "is_decoder": cfg.get("is_decoder", False),
        "add_cross_attention": cfg.get("add_cross_attention", False),
        "untied MLM decoder (tie_word_embeddings=False)": not cfg.get("tie_word_embeddings", True),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise WeightsError(f"{where}: {kind} variant uses features outside mmkit's BERT: {', '.join(bad)}")
    head, num_classes = _classifier(state, source)
    dim = cfg["hidden_size"]
    pad_id = cfg.get("pad_token_id")
    return dict(
        vocab_size=cfg["vocab_size"], max_len=cfg["max_position_embeddings"],
        type_vocab_size=cfg.get("type_vocab_size", 2), dim=dim, depth=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"], mlp_ratio=cfg["intermediate_size"] / dim,
        norm_eps=cfg.get("layer_norm_eps", 1e-12),
        # BertConfig's defaults; transformers' feed-forward has no dropout after its activation, and its
        # classifier_dropout None means hidden_dropout_prob, as mmkit's None means dropout
        dropout=cfg.get("hidden_dropout_prob", 0.1), attn_dropout=cfg.get("attention_probs_dropout_prob", 0.1),
        activation_dropout=0.0, classifier_dropout=cfg.get("classifier_dropout"),
        positions="roberta" if kind == "roberta" else "absolute", pad_id=0 if pad_id is None else pad_id,
        pooler=any(".pooler." in f".{k}" for k in state),
        mlm_head=any(k.startswith(("cls.predictions.", "lm_head.")) for k in state),
        num_classes=num_classes, classifier_head=head,
    )


def _classifier(state: dict[str, Tensor], source: str) -> tuple[str, int]:
    """(classifier_head, num_classes) of the classification tensors in `state` (("pooled", 0) if none)."""
    keys = sorted(k for k in state if k.startswith("classifier."))
    if not keys:
        return "pooled", 0
    if keys == ["classifier.bias", "classifier.weight"]:
        return "pooled", int(state["classifier.weight"].shape[0])
    if keys == [f"classifier.{m}.{p}" for m in ("dense", "out_proj") for p in ("bias", "weight")]:
        return "dense_tanh", int(state["classifier.out_proj.weight"].shape[0])
    raise WeightsError(f"{source}: a classification head that is neither BERT's (classifier.weight/bias) "
                       f"nor RoBERTa's (classifier.dense + classifier.out_proj): {', '.join(keys)}")


def _check_bias(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """The MLM bias is saved twice (head and decoder, one shared tensor) or once, under either name."""
    for head in ("cls.predictions", "lm_head"):
        bias, decoder = state.get(f"{head}.bias"), state.get(f"{head}.decoder.bias")
        if bias is None and decoder is not None:
            state = {**state, f"{head}.bias": decoder}
        elif bias is not None and decoder is not None and not torch.equal(bias, decoder):
            raise WeightsError(f"{source}: {head}.decoder.bias differs from {head}.bias")
    return state


def bert_from_hf(model_or_dir: nn.Module | str | Path) -> Converted:
    """Convert a transformers BERT/RoBERTa model (an instance of one of `BERT_CLASSES`, or a
    local checkpoint directory holding its config.json and weights) for `mmkit.models.BERT`.

    Returns:
        BERT config and state dict; training is the instance's mode, False for a directory.

    Raises:
        WeightsError: unsupported variants, and missing, unexpected or wrongly shaped tensors.
    """
    cfg, state, source, training = hf_source(model_or_dir, BERT_CLASSES)  # which refuses other heads' folders
    config = bert_config(cfg, state, source)
    for head in ("cls.predictions.decoder.weight", "lm_head.decoder.weight"):
        check_tied(state, head, _EMBEDDINGS, source, "BERT")
    state = _check_bias(state, source)
    mapped = fuse_projections(remap(state, BERT_KEYS, source), source, biasless=())
    log.info("imported %s (%s layers, dim %s) from %s", cfg.get("model_type", "bert"), config["depth"],
             config["dim"], source)
    return Converted(config, mapped, source, training)
