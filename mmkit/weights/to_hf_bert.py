"""Convert an `mmkit.models.BERT` (config, state dict, a classifier's class names and problem type) into the
config.json document and state dict of a transformers `BertModel` / `BertForMaskedLM` /
`BertForSequenceClassification`, or the `Roberta*` classes for RoBERTa's positions (Liu et al., 2019). The inverse
of `from_hf_bert.bert_from_hf` (its key map, read backwards); this converter never imports mmkit.models.

mmkit's fused `qkv` is split into transformers' query/key/value; the MLM decoder stays tied to the word embeddings
(transformers saves neither it nor its bias, as `save_pretrained` does not). Heads transformers' classes cannot
build are refused by name before anything is written.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from torch import Tensor

from mmkit.weights.from_hf_bert import BERT_KEYS, check_problem_type
from mmkit.weights.hf import split_projections
from mmkit.weights.keymap import remap
from mmkit.weights.native import WeightsError

# A fused projection of mmkit's core `Attention`: `<base>.<qkv|kv>.<weight|bias>`
# mmkit's position scheme -> (transformers model_type, class-name stem, state-dict prefix of the task models)
LAYOUTS = {"absolute": ("bert", "Bert", "bert."), "roberta": ("roberta", "Roberta", "roberta.")}
# The classification head each layout's *ForSequenceClassification builds (`models.bert.CLASSIFIER_HEADS`)
CLASSIFIER_HEADS = {"absolute": "pooled", "roberta": "dense_tanh"}
# The MLM head's first key component in each layout (BertOnlyMLMHead: `cls.predictions`, RobertaLMHead: `lm_head`)
_MLM_HEADS = {"absolute": "cls", "roberta": "lm_head"}


def architecture(config: dict[str, Any]) -> str:
    """The transformers class a BERT of `config` loads in: the classifier's *ForSequenceClassification where it
    has one (an MLM head beside it is written too: the *ForMaskedLM class loads it from the same folder), else
    *ForMaskedLM where it has an MLM head, else the bare *Model."""
    stem = LAYOUTS[config.get("positions", "absolute")][1]
    if config.get("num_classes", 0):
        return f"{stem}ForSequenceClassification"
    return f"{stem}ForMaskedLM" if config.get("mlm_head", True) else f"{stem}Model"


def check_expressible(config: dict[str, Any], where: str) -> None:
    """Refuse, by name, a BERT whose layout transformers' Bert/Roberta classes cannot build.

    Raises:
        WeightsError: an unknown position scheme, or a classification head other than the one the layout's
            *ForSequenceClassification has (BERT: linear on the pooled [CLS]; RoBERTa: dense + tanh on <s>).
    """
    positions = config.get("positions", "absolute")
    if positions not in LAYOUTS:
        raise WeightsError(f"{where}: positions={positions!r} has no transformers BERT/RoBERTa layout")
    head = config.get("classifier_head", "pooled")
    if not config.get("num_classes", 0) or head == CLASSIFIER_HEADS[positions]:
        return
    if head == "mean":
        raise WeightsError(f"{where}: classifier_head='mean' (a linear layer on the mean of the tokens) has no "
                           "transformers class: BertForSequenceClassification reads the pooled [CLS], "
                           "RobertaForSequenceClassification <s> through its own dense layer")
    stem = LAYOUTS[positions][1]
    raise WeightsError(f"{where}: classifier_head={head!r} with positions={positions!r}: {stem}ForSequence"
                       f"Classification's head is {CLASSIFIER_HEADS[positions]!r}; no transformers class builds both")


def _rules(positions: str, prefix: str) -> list[tuple[str, str]]:
    """`BERT_KEYS` backwards for one layout: mmkit key template -> transformers key template, the encoder under
    `prefix` ("" for the bare *Model, "bert." / "roberta." for the task models), the layout's own MLM head."""
    def wanted(src: str) -> bool:
        first = src.split(".", 1)[0]
        if first in ("bert", "roberta"):
            return first + "." == prefix
        if first in ("cls", "lm_head"):
            return first == _MLM_HEADS[positions]
        return first == "classifier" or prefix == ""  # both classifier kinds: mmkit's keys tell them apart

    return [(dst, src) for src, dst in BERT_KEYS if dst is not None and wanted(src)]


def hf_bert_export(config: dict[str, Any], state: dict[str, Tensor], class_names: Optional[Sequence[str]] = None,
                   problem_type: Optional[str] = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """transformers' config.json document and state dict for an mmkit BERT.

    Args:
        config: the BERT's constructor arguments (`BERT.config`).
        state: its state dict.
        class_names: a classifier's labels in class order (transformers' id2label / label2id); None: LABEL_i.
        problem_type: transformers' problem_type of a classifier (`from_hf_bert.PROBLEM_TYPES`), or None.

    Returns:
        The config (with `architectures`: `architecture(config)`) and the state dict under transformers' names,
        as that class saves them (the task models prefix the encoder with "bert." / "roberta.").

    Raises:
        WeightsError: a layout transformers cannot build (`check_expressible`), class names that do not fit the
            head (count, repeats), or tensors the key map does not account for.
    """
    where = f"mmkit BERT (dim {config['dim']}, depth {config['depth']})"
    check_expressible(config, where)
    check_problem_type(problem_type, where)
    positions = config.get("positions", "absolute")
    model_type, _, task_prefix = LAYOUTS[positions]
    arch = architecture(config)
    prefix = "" if arch.endswith("Model") else task_prefix
    mapped = remap(split_projections(state), _rules(positions, prefix), where)
    dropout = config.get("dropout", 0.1)
    attn_dropout = config.get("attn_dropout")
    hf_config: dict[str, Any] = dict(
        architectures=[arch], model_type=model_type, vocab_size=config["vocab_size"], hidden_size=config["dim"],
        num_hidden_layers=config["depth"], num_attention_heads=config["num_heads"],
        intermediate_size=int(config["dim"] * config.get("mlp_ratio", 4.0)),  # as the blocks size it
        hidden_act="gelu", hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout if attn_dropout is None else attn_dropout,
        max_position_embeddings=config.get("max_len", 512), type_vocab_size=config.get("type_vocab_size", 2),
        initializer_range=0.02, layer_norm_eps=config.get("norm_eps", 1e-12), pad_token_id=config.get("pad_id", 0),
        position_embedding_type="absolute", classifier_dropout=config.get("classifier_dropout"),
        is_decoder=False, add_cross_attention=False, tie_word_embeddings=True, use_cache=True,
        dtype=str(state["tok_embed.weight"].dtype).removeprefix("torch."))
    num_classes = config.get("num_classes", 0)
    if num_classes:
        names = [f"LABEL_{i}" for i in range(num_classes)] if class_names is None else list(class_names)
        if len(names) != num_classes:
            raise WeightsError(f"{where}: {len(names)} class names for a {num_classes}-class head")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise WeightsError(f"{where}: class names repeat ({', '.join(map(repr, repeated))}); transformers' "
                               "label2id holds each name once")
        hf_config.update(id2label={str(i): n for i, n in enumerate(names)},
                         label2id={n: i for i, n in enumerate(names)}, num_labels=num_classes)
        if problem_type is not None:
            hf_config["problem_type"] = problem_type
    return hf_config, mapped
