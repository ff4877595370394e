"""Sequence classification with a fine-tuned BERT (`mmkit.tasks.text_classifier.TextClassifier`
exports, or transformers BertForSequenceClassification directories): label, its score and every
class's score per text, in length-sorted batches returned in input order (planned, then run: ranks
sharing a run each run some of one process's batches). Scores follow transformers'
TextClassificationPipeline: softmax probabilities, sigmoid ones for multi-label and one-logit models,
raw outputs for regression (`SCORINGS`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from mmkit.inference.encoder import INT8_KEEP_FP32, LoadedEncoder, encode_to_context, report_truncated
from mmkit.inference.inputs import text_items


# What turns a classifier's logits (..., num_labels) into its scores, by `scoring`'s name.
SCORINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax": lambda logits: logits.softmax(-1),  # one class per text: probabilities that sum to 1
    "sigmoid": torch.sigmoid,  # each class on its own (multi-label), or one logit's probability
    "none": lambda logits: logits,  # regression: the predicted values themselves
}


def scoring(problem_type: str | None, num_labels: int) -> str:
    """The `SCORINGS` entry transformers' TextClassificationPipeline applies by default (its
    function_to_apply): a one-logit model without a problem_type is a binary classifier, so sigmoid."""
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    return "softmax"


@dataclass(frozen=True)
class TextPrediction:
    """The best label of one text, its score, and every class's score (`TextClassifierPredictor.scoring`:
    softmax probabilities; sigmoid ones, which need not sum to 1; or a regression's values)."""

    label: str
    score: float
    probs: dict[str, float]


class TextClassifierPredictor:
    """texts -> `TextPrediction`s, scored as transformers' text-classification pipeline scores them: `scoring`
    (a `SCORINGS` name) comes from the encoder's problem_type and label count.

    Args:
        encoder: a loaded classifier and tokenizer (`mmkit.inference.encoder.load_encoder`).
        batch_size: texts per forward pass at most.
        quantize: "none" (fp32, exact) or "int8" (int8 weights for the encoder's Linear layers, CPU only; the
            classification head stays fp32; probabilities close to fp32's, not equal).
        precision: None (the default: the encoder's, as `load_encoder` set it up; fp32 unless asked), "fp32",
            "bf16", "fp16" or "auto" (autocast around the model, as `Embedder`; the probabilities are computed
            in fp32 from its logits).

    Raises:
        ValueError: at construction, a batch size below 1, a model without a classification head (a plain or
            MLM BERT), or a precision the device cannot run (bf16 with int8, asked here or by `load_encoder`).
    """

    def __init__(self, encoder: LoadedEncoder, batch_size: int = 64, quantize: str = "none",
                 precision: str | None = None) -> None:
        if batch_size < 1:  # as `Embedder`: range() refuses a step of 0, and a negative one gives no batches
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if encoder.model.classifier is None:
            raise ValueError("the model has no classification head: give a fine-tuned classifier "
                             "(mmkit fit --config configs/bert_wordnet_classify.yaml exports one)")
        # in place: with int8 the encoder's model becomes int8
        self.precision, self._autocast = encoder.arithmetic(precision, quantize, "text classifier", INT8_KEEP_FP32)
        self.encoder, self.batch_size = encoder, batch_size
        self.names = encoder.class_names
        self.scoring = scoring(encoder.problem_type, len(self.names))

    def plan(self, texts: str | Sequence[str], on_truncated: Callable[[int], None] | None = None,
             ids: list[list[int]] | None = None) -> tuple[list[list[int]], list[list[int]]]:
        """(token ids of each text, the batches `predict` runs: indices sorted by length, `batch_size` at a
        time); a lone str is one text (`as_items`); texts longer than the model's context are cut, reported
        as in `predict`. Ranks sharing a run (`mmkit classify-text` under torchrun) each make the whole plan
        and run some of its batches: one process's batches, so its predictions (as `Embedder.plan`). `ids`:
        the texts' token ids where the caller has them (`mark_unknown_rows`)."""
        ids, cut = encode_to_context(self.encoder.tokenizer, text_items(texts), self.encoder.model.max_len, ids)
        report_truncated(cut, self.encoder.model.max_len, on_truncated)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        return ids, [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]

    # one autocast context for all batches, under no_grad, not inference_mode: as `Embedder.embed_batches`
    @torch.no_grad()
    def predict_batches(self, ids: list[list[int]], batches: Sequence[list[int]],
                        on_batch: Callable[[int], None] | None = None) -> list[TextPrediction | None]:
        """One prediction per text of `ids` in `batches` (lists of indices into `ids`, from `plan`), None
        for the others."""
        with self._autocast():
            return self._predict_batches(ids, batches, on_batch)

    def _predict_batches(self, ids: list[list[int]], batches: Sequence[list[int]],
                         on_batch: Callable[[int], None] | None) -> list[TextPrediction | None]:
        model, pad = self.encoder.evaluating(), self.encoder.tokenizer.pad_id
        out: list[TextPrediction | None] = [None] * len(ids)
        device = next(model.parameters()).device
        for rows in batches:
            T = max(len(ids[i]) for i in rows)
            batch = torch.full((len(rows), T), pad, dtype=torch.long)
            for j, i in enumerate(rows):
                batch[j, : len(ids[i])] = torch.tensor(ids[i])
            mask = torch.arange(T)[None, :] < torch.tensor([len(ids[i]) for i in rows])[:, None]
            probs = SCORINGS[self.scoring](model.classify(batch.to(device), mask.to(device)).float()).cpu()
            for j, i in enumerate(rows):
                p = probs[j].tolist()
                best = max(range(len(p)), key=p.__getitem__)
                out[i] = TextPrediction(self.names[best], p[best], dict(zip(self.names, p)))
            if on_batch:
                on_batch(len(rows))
        return out

    def predict(self, texts: str | Sequence[str], on_batch: Callable[[int], None] | None = None,
                on_truncated: Callable[[int], None] | None = None) -> list[TextPrediction]:
        """One prediction per text (a lone str is one text: a list of one); texts longer than the model's
        context are cut, with a warning or `on_truncated(count)` (as `Embedder.embed`)."""
        ids, batches = self.plan(texts, on_truncated)
        return self.predict_batches(ids, batches, on_batch)  # type: ignore[return-value]
