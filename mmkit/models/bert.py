"""BERT (Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding", 2019) and RoBERTa (Liu et al., 2019) from the core: word + position + token-type
embeddings with LayerNorm, a post-norm bidirectional `Encoder`, the [CLS] pooler, a masked-LM head
tied to the word embeddings and sequence-classification heads (BERT's, RoBERTa's, mean pooling).
Numerically identical to transformers' `BertModel` / `BertForMaskedLM` / `BertForSequenceClassification`
/ `RobertaModel` / `RobertaForMaskedLM` / `RobertaForSequenceClassification`.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmkit.core import Encoder, LayerNorm, Mlp, PostNormBlock, key_padding_mask
from mmkit.core.blocks import layer_norm
from mmkit.core.init import init_normal_
from mmkit.weights.native import PretrainedMixin


class AbsolutePositions(nn.Module):
    """BERT's learned positions: token i gets row i of the (max_len, dim) table."""

    def __init__(self, max_len: int, dim: int, pad_id: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.init.normal_(torch.empty(max_len, dim), std=0.02))

    def forward(self, input_ids: Tensor) -> Tensor:
        """(B, T) ids -> (1, T, dim)."""
        T = input_ids.shape[1]
        if T > self.weight.shape[0]:
            raise ValueError(f"sequence of {T} tokens exceeds max_len {self.weight.shape[0]}")
        return self.weight[:T].unsqueeze(0)


class PaddingOffsetPositions(AbsolutePositions):
    """RoBERTa's positions (fairseq's `make_positions`): real tokens count from pad_id + 1 and
    padding keeps row pad_id, so the table has max_len + pad_id + 1 rows (514 for 512 tokens)."""

    def __init__(self, max_len: int, dim: int, pad_id: int) -> None:
        super().__init__(max_len, dim, pad_id)
        self.pad_id = pad_id

    def forward(self, input_ids: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, dim)."""
        real = input_ids.ne(self.pad_id).long()
        positions = torch.cumsum(real, dim=1) * real + self.pad_id  # (B, T)
        if not torch.compiler.is_compiling() and positions.max() >= self.weight.shape[0]:  # a graph needs no sync
            raise ValueError(f"sequence of {int(real.sum(1).max())} tokens exceeds the position table "
                             f"({self.weight.shape[0]} rows, offset {self.pad_id + 1})")
        return nn.functional.embedding(positions, self.weight)


# Position schemes by name, so the choice stays a JSON value in config.json.
POSITIONS: dict[str, type[AbsolutePositions]] = {"absolute": AbsolutePositions, "roberta": PaddingOffsetPositions}


class MaskedLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> logits against the tied word embeddings (+ a vocab bias)."""

    def __init__(self, dim: int, vocab_size: int, norm_eps: float) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.norm = LayerNorm(dim, eps=norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: Tensor, embedding: Tensor) -> Tensor:
        # Functional tied projection: one parameter, one checkpoint key (safetensors refuses shared storage).
        return nn.functional.linear(self.norm(self.act(self.fc(x))), embedding, self.bias)


class PooledClassifier(nn.Linear):
    """BERT's head (`BertForSequenceClassification`): dropout, then a linear layer on the pooled [CLS]
    (`BERT.pooler`: dense + tanh, pretrained by next-sentence prediction in BERT)."""

    keep: int | None = 1  # the encoder positions the head reads (1: [CLS] alone; None: all)

    def __init__(self, dim: int, num_classes: int, dropout: float) -> None:
        super().__init__(dim, num_classes)
        self.drop = nn.Dropout(dropout)

    def forward(self, hidden: Tensor, mask: Tensor | None, pooler: nn.Module | None) -> Tensor:
        """(B, 1, dim) [CLS] hidden state -> (B, num_classes) logits."""
        return super().forward(self.drop(torch.tanh(pooler(hidden[:, 0]))))


class DenseTanhClassifier(nn.Module):
    """RoBERTa's head (`RobertaClassificationHead`) on the <s> token, with its own dense layer
    instead of a pooler: dropout -> dense -> tanh -> dropout -> out_proj."""

    keep: int | None = 1

    def __init__(self, dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.dense = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, num_classes)

    @property
    def out_features(self) -> int:
        return self.out_proj.out_features

    def forward(self, hidden: Tensor, mask: Tensor | None, pooler: nn.Module | None) -> Tensor:
        """(B, 1, dim) <s> hidden state -> (B, num_classes) logits."""
        return self.out_proj(self.drop(torch.tanh(self.dense(self.drop(hidden[:, 0])))))


class MeanClassifier(PooledClassifier):
    """Dropout, then a linear layer on the mean of the final hidden states over the real tokens.
    Masked-LM pretraining trains every token's output but never [CLS]'s or a pooler, so this
    head reads what pretraining taught (Reimers & Gurevych 2019 pool the same way)."""

    keep = None

    def forward(self, hidden: Tensor, mask: Tensor | None, pooler: nn.Module | None) -> Tensor:
        """(B, T, dim) hidden states, (B, T) mask -> (B, num_classes) logits."""
        if mask is None:
            mean = hidden.mean(1)
        else:
            weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
            mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return nn.Linear.forward(self, self.drop(mean))


# Classification heads by name, so the choice stays a JSON value in config.json.
CLASSIFIER_HEADS: dict[str, type[nn.Module]] = {
    "pooled": PooledClassifier, "dense_tanh": DenseTanhClassifier, "mean": MeanClassifier}


class BERT(PretrainedMixin, nn.Module):
    """Bidirectional encoder with optional heads.

    Args:
        vocab_size: token ids are in [0, vocab_size) (bert-base-uncased: 30522).
        max_len: longest input in tokens, [CLS] and [SEP] included (BERT: 512).
        type_vocab_size: token-type (segment) ids (BERT: 2; RoBERTa: 1, i.e. a constant row).
        dim, depth, num_heads, mlp_ratio: transformer sizes (timm's names; BERT-base 768 / 12 / 12 / 4).
        norm_eps: LayerNorm epsilon (BERT: 1e-12; RoBERTa: 1e-5).
        dropout: on the embeddings and after each residual branch (BERT's hidden_dropout_prob, 0.1).
        attn_dropout: on the attention probabilities (attention_probs_dropout_prob); None: `dropout`.
        activation_dropout: after the feed-forward activation, which transformers' BERT lacks (`from_hf` sets 0);
            None: `dropout`, the native recipes' setting (their measured results were trained with it).
        classifier_dropout: before the classifier (transformers' classifier_dropout); None: `dropout`.
        positions: "absolute" (BERT) or "roberta" (positions counted after the padding index).
        pad_id: the padding token (BERT: 0; RoBERTa: 1, which also offsets its positions).
        pooler: build the [CLS] pooler (dense + tanh); transformers' MaskedLM models have none.
        mlm_head: build the masked-LM head.
        num_classes: > 0 adds a sequence-classification head.
        classifier_head: "pooled" (BERT: linear on the pooled [CLS]; needs `pooler`), "dense_tanh"
            (RoBERTa: its own dense + tanh on <s>) or "mean" (linear on the mean of the real tokens).
    """

    def __init__(
        self,
        vocab_size: int = 30522,
        max_len: int = 512,
        type_vocab_size: int = 2,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-12,
        dropout: float = 0.1,
        positions: str = "absolute",
        pad_id: int = 0,
        pooler: bool = True,
        mlm_head: bool = True,
        num_classes: int = 0,
        classifier_head: str = "pooled",
        attn_dropout: float | None = None,
        activation_dropout: float | None = None,
        classifier_dropout: float | None = None,
    ) -> None:
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"unknown positions {positions!r}; known: {', '.join(POSITIONS)}")
        if classifier_head not in CLASSIFIER_HEADS:
            raise ValueError(f"unknown classifier_head {classifier_head!r}; known: {', '.join(CLASSIFIER_HEADS)}")
        if num_classes and classifier_head == "pooled" and not pooler:
            raise ValueError("the 'pooled' classification head (num_classes > 0) needs the pooler")
        self.config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.vocab_size, self.pad_id = vocab_size, pad_id
        self.max_len = max_len if positions == "absolute" else max_len - pad_id - 1
        self.tok_embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.pos_embed = POSITIONS[positions](max_len, dim, pad_id)
        self.type_embed = nn.Embedding(type_vocab_size, dim)
        self.embed_norm = LayerNorm(dim, eps=norm_eps)
        self.drop = nn.Dropout(dropout)
        # BERT's hidden dropout after fc2; after the activation only if asked (see activation_dropout)
        mlp_drop = (dropout if activation_dropout is None else activation_dropout, dropout)
        self.encoder = Encoder(dim, depth, num_heads, mlp_ratio, qkv_bias=True, block=PostNormBlock,
                               norm_layer=layer_norm(norm_eps), mlp_layer=partial(Mlp, drop=mlp_drop),
                               act_layer=nn.GELU, final_norm=False)
        for blk in self.encoder.blocks:  # the blocks build Attention without dropout; BERT has both
            blk.attn.attn_drop = dropout if attn_dropout is None else attn_dropout
            blk.attn.proj_drop.p = dropout
        self.pooler = nn.Linear(dim, dim) if pooler else None
        self.mlm_head = MaskedLMHead(dim, vocab_size, norm_eps) if mlm_head else None
        head_drop = dropout if classifier_dropout is None else classifier_dropout
        self.classifier = CLASSIFIER_HEADS[classifier_head](dim, num_classes, head_drop) if num_classes else None
        self.apply(init_normal_)

    def embed(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """(B, T) ids -> (B, T, dim) normalised embeddings."""
        types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
        x = self.tok_embed(input_ids) + self.pos_embed(input_ids) + self.type_embed(types)
        return self.drop(self.embed_norm(x))

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
               keep: int | None = None) -> Tensor:
        """Final hidden states (transformers' `last_hidden_state`).

        Args:
            input_ids: (B, T) int64.
            attention_mask: (B, T), 1/True for real tokens (default: all real).
            token_type_ids: (B, T) segment ids (default: all 0).
            keep: only the first `keep` positions are returned (1 = [CLS]); exact, and the last
                block computes those alone.

        Returns:
            (B, T, dim), or (B, keep, dim).
        """
        mask = key_padding_mask(attention_mask) if attention_mask is not None else None
        return self.encoder(self.embed(input_ids, token_type_ids), mask=mask, keep=keep)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        """Same as `encode`: (B, T) ids -> (B, T, dim) hidden states."""
        return self.encode(input_ids, attention_mask, token_type_ids)

    def pool(self, hidden: Tensor) -> Tensor:
        """(B, T, dim) hidden states -> (B, dim) pooled [CLS] (dense + tanh; BERT §3)."""
        if self.pooler is None:
            raise ValueError("this BERT has no pooler")
        return torch.tanh(self.pooler(hidden[:, 0]))

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """(..., dim) hidden states (e.g. only the masked positions) -> (..., vocab_size) logits."""
        if self.mlm_head is None:
            raise ValueError("this BERT has no masked-LM head")
        return self.mlm_head(hidden, self.tok_embed.weight)

    def classify(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                 token_type_ids: Tensor | None = None) -> Tensor:
        """(B, T) ids -> (B, num_classes) logits from the classification head."""
        if self.classifier is None:
            raise ValueError("this BERT has no classification head (num_classes=0)")
        hidden = self.encode(input_ids, attention_mask, token_type_ids, keep=self.classifier.keep)
        mask = attention_mask.bool() if attention_mask is not None else None
        return self.classifier(hidden, mask, self.pooler)

    @classmethod
    def from_hf(cls, model_or_dir: nn.Module | str | Path) -> "BERT":
        """Import a transformers BertModel / BertForMaskedLM / BertForSequenceClassification /
        RobertaModel / RobertaForMaskedLM / RobertaForSequenceClassification instance, or a local
        checkpoint directory; never the network."""
        from mmkit.weights.from_hf_bert import bert_from_hf

        return cls.from_converted(bert_from_hf(model_or_dir))

    def with_heads(self, pooler: bool = True, mlm_head: bool = False, num_classes: int = 0,
                   classifier_head: str | None = None) -> "BERT":
        """A copy of this encoder (embeddings + blocks, and the pooler if both have one) with
        other heads (classifier_head None: this model's kind), new ones randomly initialised:
        pretrained MLM -> a classifier to fine-tune."""
        head = classifier_head or self.config["classifier_head"]
        model = BERT(**{**self.config, "pooler": pooler, "mlm_head": mlm_head, "num_classes": num_classes,
                        "classifier_head": head})
        dropped = ("mlm_head.", "classifier.") + (() if pooler else ("pooler.",))
        keep = {k: v for k, v in self.state_dict().items() if not k.startswith(dropped)}
        missing, _ = model.load_state_dict(keep, strict=False)
        unexpected = set(keep) - set(model.state_dict())
        if unexpected or any(not k.startswith(("pooler.", "mlm_head.", "classifier.")) for k in missing):
            raise ValueError(f"cannot move heads: unexpected {sorted(unexpected)}, missing {sorted(missing)}")
        return model
