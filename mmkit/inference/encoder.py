"""What `--model DIR` means for the BERT family, in one place: an mmkit export (config.json with
architecture BERT + model.safetensors + tokenizer files) or a transformers BERT/RoBERTa checkpoint
directory (config.json + weights + vocab.txt / tokenizer.json / vocab.json + merges.txt).
Used by `mmkit embed`, `mmkit fill-mask`, `mmkit classify-text` and the demo; `load_encoder` also sets up
the arithmetic (bf16 autocast, int8 Linear layers) as the other loaders do (`prepare_arithmetic`).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from mmkit.data.bert_tokenizer import EncoderTokenizer
from mmkit.inference.model_dir import read_model_dir
from mmkit.inference.prompts import repeated_name
from mmkit.inference.quantize import has_int8_layers, prepare_arithmetic
from mmkit.inference.text_rows import TextRow
from mmkit.models.bert import BERT
from mmkit.weights.from_hf_bert import check_problem_type, head_metadata
from mmkit.weights.native import WeightsError

log = logging.getLogger(__name__)

# Under int8 the classification head stays fp32: a few small layers, and they decide the label.
INT8_KEEP_FP32 = ("classifier.*",)


@dataclass
class LoadedEncoder:
    """A BERT in eval mode, its tokenizer and the export's metadata (a classifier's class names and
    problem_type), with the arithmetic `load_encoder` chose: `precision` (resolved: "fp32", "bf16" or
    "fp16") and `autocast`, the factory of its autocast context, which forward passes run under."""

    model: BERT
    tokenizer: EncoderTokenizer
    metadata: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    autocast: Callable[[], contextlib.AbstractContextManager] = field(default=contextlib.nullcontext, repr=False)

    def arithmetic(self, precision: str | None, quantize: str, name: str,
                   keep_fp32: tuple[str, ...] = ()) -> tuple[str, Callable[[], contextlib.AbstractContextManager]]:
        """The (resolved precision, autocast factory) a predictor over this encoder runs with: `load_encoder`'s
        when it asks for neither (precision None, quantize "none"), else set up for it here, in place (int8 makes
        the model int8; a model `load_encoder` made int8 stays int8, and refuses bf16 as `--quantize int8` does)."""
        if precision is None and quantize == "none":
            return self.precision, self.autocast
        quantize = "int8" if has_int8_layers(self.model) else quantize
        return prepare_arithmetic(self.model, self.precision if precision is None else precision, quantize, name,
                                  keep_fp32)

    def evaluating(self) -> BERT:
        """The model, in eval mode (dropout off) whatever the caller left it in: after `model.train()` (tuning
        it in the same process) embeddings moved by up to 0.16 and the same text's class changed per call."""
        if self.model.training:
            self.model.eval()
        return self.model

    @property
    def class_names(self) -> list[str]:
        n = self.model.classifier.out_features if self.model.classifier is not None else 0
        names = self.metadata.get("class_names")
        return list(names) if isinstance(names, list) and len(names) == n else [f"LABEL_{i}" for i in range(n)]

    @property
    def problem_type(self) -> str | None:
        """transformers' problem_type of a classifier ("regression", "single_label_classification",
        "multi_label_classification"), None where its config did not say."""
        return self.metadata.get("problem_type")

    def save_pretrained(self, directory: str | Path) -> Path:
        """An mmkit export of this encoder (`save_encoder`) with its class names and problem_type: a transformers
        directory read by `load_encoder`, saved, reads back the same."""
        return save_encoder(self.model, self.tokenizer, directory, self.metadata.get("class_names"),
                            self.problem_type)


def encode_to_context(tokenizer: EncoderTokenizer, texts: Sequence[str], limit: int,
                      ids: list[list[int]] | None = None) -> tuple[list[list[int]], int]:
    """Token ids of each text, cut to `limit` tokens with the last one ([SEP], </s>) kept, and how
    many texts were cut. `ids`: the texts' whole token ids where the caller has them already
    (`mark_unknown_rows` gives them), so the texts are not tokenized again."""
    ids = tokenizer.encode_batch(list(texts)) if ids is None else ids
    cut = sum(len(i) > limit for i in ids)
    return [i if len(i) <= limit else i[: limit - 1] + [i[-1]] for i in ids], cut


def report_truncated(count: int, limit: int, on_truncated: Callable[[int], None] | None = None) -> None:
    """Tell of `count` texts cut to `limit` tokens: `on_truncated(count)` where given, else a warning."""
    if on_truncated is not None:
        on_truncated(count)
    elif count:
        log.warning("%d text(s) longer than the model's %d tokens were truncated", count, limit)


def mark_unknown_rows(rows: list[TextRow], tokenizer: EncoderTokenizer) -> tuple[list[TextRow], list[list[int]]]:
    """Rows whose every token is the unknown token become bad rows: the model would see nothing
    but [UNK], so a vector or label for them would be meaningless. Returns the rows and the token ids of
    those still good, in order (for `encode_to_context`: a tool tokenizes each text once)."""
    good = [r for r in rows if r.error is None]
    unknown, kept = set(), []
    for r, ids in zip(good, tokenizer.encode_batch([r.text for r in good])):
        body = [i for i in ids if i not in tokenizer.special_ids or i == tokenizer.unk_id]
        if body and all(i == tokenizer.unk_id for i in body):
            unknown.add(r.line)
        else:
            kept.append(ids)
    return [replace(r, text=None, error="no known tokens (every token is unknown to the model)")
            if r.line in unknown else r for r in rows], kept


def save_encoder(model: BERT, tokenizer: EncoderTokenizer, directory: str | Path,
                 class_names: list[str] | None = None, problem_type: str | None = None) -> Path:
    """Native checkpoint (config.json + model.safetensors) with the tokenizer files beside it; `problem_type`:
    transformers' (`mmkit.weights.from_hf_bert.PROBLEM_TYPES`), which picks a classifier's scores."""
    metadata: dict[str, Any] = {"tokenizer": "encoder"}
    if class_names:
        metadata["class_names"] = list(class_names)
    if check_problem_type(problem_type, "save_encoder") is not None:
        metadata["problem_type"] = problem_type
    directory = model.save_pretrained(directory, metadata=metadata)
    tokenizer.save(directory)
    return directory


def load_encoder(directory: str | Path, device: str | torch.device = "cpu", precision: str = "fp32",
                 quantize: str = "none") -> LoadedEncoder:
    """The BERT of an mmkit export or a transformers BERT/RoBERTa directory, in eval mode.

    Args:
        directory: the model directory.
        device: torch device to load it on.
        precision: "fp32" (exact, the default), "bf16", "fp16" or "auto" (bf16 where the hardware has it
            natively): an autocast around the forward passes (`LoadedEncoder.autocast`; `resolve_precision`).
        quantize: "none" or "int8" (int8 weights for the encoder's Linear layers, CPU only; a classification
            head stays fp32, `INT8_KEEP_FP32`; results close to fp32's, not equal).

    Raises:
        FileNotFoundError: no such directory, or no tokenizer files in it.
        NotADirectoryError: a file given where a model directory is expected.
        WeightsError: not a BERT-family checkpoint (a GPT, say), or unreadable weights.
        ValueError: a precision or quantization the device cannot run (fp16 on a CPU, bf16 with int8, int8 on
            a GPU).
    """
    directory, doc = read_model_dir(directory)
    metadata: dict[str, Any] = {}
    if doc.get("architecture") == BERT.architecture_name():
        model = BERT.from_pretrained(directory)
        metadata = doc.get("metadata") or {}
        check_problem_type(metadata.get("problem_type"), f"{directory / 'config.json'}: metadata")
    elif doc.get("model_type") in ("bert", "roberta"):
        model = BERT.from_hf(directory)
        metadata = head_metadata(doc, str(directory / "config.json"))
    else:
        kind = doc.get("architecture") or doc.get("model_type") or "unknown"
        raise WeightsError(f"{directory}: holds a {kind!r} model, not a BERT-family encoder "
                           "(mmkit BERT export or transformers BERT/RoBERTa)")
    repeated = repeated_name(metadata.get("class_names") or [])
    if repeated:
        raise WeightsError(f"{directory}: {repeated}; give each class its own name (id2label or class_names)")
    tokenizer = EncoderTokenizer.from_dir(directory)
    if tokenizer.vocab_size > model.vocab_size:
        raise WeightsError(f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens, the model "
                           f"{model.vocab_size}: they do not belong together")
    model = model.eval().to(device)
    resolved, autocast = prepare_arithmetic(model, precision, quantize, "encoder", INT8_KEEP_FP32)  # logged once
    return LoadedEncoder(model, tokenizer, metadata, resolved, autocast)
