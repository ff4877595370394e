"""Prompt ensembles for CLIP text towers (Radford et al., 2021, section 3.1.4): label entries
(synonyms, literal prompts) written into templates, and the prompts encoded to unit embeddings.
One implementation behind `mmkit label`, the zero-shot demo and the training callback
(`mmkit.inference.zero_shot`).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mmkit.inference.inputs import as_items
from mmkit.models.clip import CLIP

Tokenizer = Callable[[Sequence[str]], Tensor]  # texts -> (B, T) int64 ids
TEXT_CHUNK = 64  # prompts per text-tower pass, grouped by length
PROMPT_SLICE = 1 << 15  # prompts tokenized and embedded at a time (~80 MB for CLIP), whatever the labels x templates

# The default prompt set everywhere (mmkit label, the Python API, the demo, the training callback):
# general-purpose templates from CLIP's 80 ImageNet prompts (the dataset-specific ones such as
# "a {} in a video game" left out); "itap" = "I took a picture".
DEFAULT_TEMPLATES = (
    "a photo of a {}.", "a bad photo of a {}.", "a good photo of a {}.", "a close-up photo of a {}.",
    "a cropped photo of a {}.", "a bright photo of a {}.", "a dark photo of a {}.", "a blurry photo of a {}.",
    "a photo of the large {}.", "a photo of the small {}.", "itap of a {}.", "art of the {}.",
)
# Multi-label scoring of softmax-trained CLIP: a label is "present" when it beats this neutral
# prompt set, sigmoid(scale * (cos(label) - cos(background))) (see ZeroShotClassifier.scores).
BACKGROUND_WORDS = ("object", "thing", "scene")
# Label names head output columns (--all-scores) that --resume reads back; far beyond what a text
# tower reads (77 tokens), far below the csv module's 128 KiB field limit.
MAX_LABEL_CHARS = 1000
# Labels of one run: their embeddings stay in memory (L x D floats: 200 MB for 100,000 ViT-B-32 labels), and
# every image gets a score per label. Far beyond any zero-shot vocabulary in use (ImageNet-21k: 21,841).
MAX_LABELS = 100_000


def check_names(names: Sequence[str], what: str) -> Sequence[str]:
    """`names` (labels, class names) as given; TypeError for one string, whose characters would pass
    for names ("abc" for a, b, c). The counterpart of `as_items` (where a lone str is one input): a
    single name here is far likelier a slip than meant."""
    if isinstance(names, str):
        raise TypeError(f"{what} must be a list of names, not one string")
    return names


def repeated_name(names: Sequence[str]) -> str | None:
    """A description of the first name that `names` (a model's class names) holds twice, else None: two classes
    of one name are one column of scores (`--all-scores`), one of them lost, and a label no reader can tell apart."""
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            return f"classes {first[name]} and {i} are both named {name!r}"
        first[name] = i
    return None


def parse_label_entry(entry: str) -> tuple[str, list[str]]:
    """`label` or `label: alt1 | alt2 | "a literal prompt"` -> (label, alternatives).

    Alternatives are synonyms written into every template; one in double quotes is a complete
    prompt used as it is. Without alternatives the label itself is the synonym.
    """
    name, colon, rest = entry.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"empty label name in {entry!r}")
    if "|" in name:
        raise ValueError(f"label name {name!r} may not contain '|' (it joins labels in multi-label output)")
    if len(name) > MAX_LABEL_CHARS:
        raise ValueError(f"a label name of {len(name):,} characters ({name[:40]!r}...): at most {MAX_LABEL_CHARS:,} "
                         "(a name heads an output column; give a long description as a prompt: 'name: ...')")
    alternatives = [a.strip() for a in rest.split("|") if a.strip()] if colon else [name]
    if not alternatives:
        raise ValueError(f"label {name!r} has a ':' but no prompts after it")
    return name, alternatives


def parse_labels(entries: Iterable[str]) -> dict[str, list[str]]:
    """Label entries (see `parse_label_entry`) -> {label: alternatives}, in order; a label given
    twice gathers the alternatives of both. A repeat that adds no alternative ("cat,cat"), and
    names equal but for case ("Cat", "cat": one class split in two), are refused (ValueError)."""
    labels: dict[str, list[str]] = {}
    folded: dict[str, str] = {}
    for entry in entries:
        if entry.strip():
            name, alternatives = parse_label_entry(entry)
            if folded.setdefault(name.casefold(), name) != name:
                raise ValueError(f"labels {folded[name.casefold()]!r} and {name!r} differ only in case: give one")
            new = [a for a in alternatives if a not in labels.get(name, [])]
            if name in labels and not new:
                raise ValueError(f"label {name!r} is given twice: give each label once")
            labels.setdefault(name, []).extend(new)
            if len(labels) > MAX_LABELS:
                raise ValueError(f"more than {MAX_LABELS:,} labels: at most {MAX_LABELS:,} per run (each is held as an "
                                 "embedding and scored on every image)")
    return labels


MAX_PROMPT_FILE_BYTES = 64 << 20  # labels or templates files: ~a million labels; a bigger file is a wrong path


def read_prompt_file(path: str | os.PathLike) -> str:
    """The UTF-8 text of a labels or templates file (UnicodeDecodeError when it is not UTF-8); a file
    over MAX_PROMPT_FILE_BYTES is a ValueError, read no further than that."""
    with open(Path(path).expanduser(), "rb") as f:
        data = f.read(MAX_PROMPT_FILE_BYTES + 1)
    if len(data) > MAX_PROMPT_FILE_BYTES:
        raise ValueError(f"{path}: over {MAX_PROMPT_FILE_BYTES >> 20} MiB, not a list of labels or templates")
    return data.decode("utf-8")


def read_labels_file(path: str | os.PathLike) -> dict[str, list[str]]:
    """One label entry per line (`cat: kitten | tabby cat`); blank lines and `#` comments skipped."""
    lines = read_prompt_file(path).splitlines()
    return parse_labels(line for line in lines if not line.lstrip().startswith("#"))


def clean_labels(labels: Sequence[str]) -> list[str]:
    """Stripped, non-empty, first occurrence of each; raises ValueError when none is left (TypeError
    for one string, `check_names`)."""
    out = list(dict.fromkeys(s.strip() for s in check_names(labels, "labels") if s and s.strip()))
    if not out:
        raise ValueError("give at least one non-empty label")
    return out


def check_templates(templates: str | Sequence[str]) -> list[str]:
    """Stripped, non-empty templates (a lone string is one template); each needs exactly one '{}' where
    the label goes."""
    templates = [t.strip() for t in as_items(templates) if t and t.strip()]
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise ValueError(f"templates need exactly one '{{}}' where the label goes: {bad or 'none given'}")
    return templates


def expand_prompts(alternatives: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Synonyms x templates, plus quoted alternatives as they are (quotes removed), without
    repeats. `replace`, not `format`, so braces in a label name are text."""
    prompts: list[str] = []
    for alt in alternatives:
        literal = len(alt) >= 2 and alt[0] == alt[-1] == '"'
        prompts.extend([alt[1:-1]] if literal else [t.replace("{}", alt) for t in templates])
    return list(dict.fromkeys(prompts))


@torch.no_grad()  # not inference_mode: the training callback uses the result next to autograd tensors
def encode_prompts(model: CLIP, tokenizer: Tokenizer, prompts: str | Sequence[str],
                   autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                   chunk_size: int = TEXT_CHUNK) -> Tensor:
    """Prompts (a lone string: one) -> (P, D) unit float32 embeddings on the model's device.

    Prompts go through the text tower in chunks of similar length, each cut after its longest
    <end_of_text> (the largest id). Exact, not an approximation: attention is causal and the
    embedding is read at <end_of_text>, so the padding after it is inert; it is most of the
    context (77 positions for CLIP), and so most of the cost. Towers where padding is not inert
    (SigLIP's: bidirectional, read at the last position) get the full rows.
    """
    device = next(model.parameters()).device
    prompts = list(as_items(prompts))
    if not prompts:
        return torch.empty(0, model.embed_dim, device=device)
    ids = tokenizer(prompts)  # (P, context)
    if model.text.padding_is_inert:
        lengths = ids.argmax(dim=-1) + 1  # (P,)
    else:
        lengths = torch.full((ids.shape[0],), ids.shape[1])
    out = torch.empty(len(prompts), model.embed_dim, device=device)
    for chunk in lengths.argsort().split(chunk_size):
        batch = ids[chunk, : int(lengths[chunk].max())].to(device)
        with autocast():
            out[chunk.to(device)] = F.normalize(model.encode_text(batch).float(), dim=-1)
    return out


def label_embeddings(model: CLIP, tokenizer: Tokenizer, prompts: Sequence[Sequence[str]],
                     autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> Tensor:
    """Per label, its prompts -> (L, D) unit rows: the renormalised mean of the label's unit
    prompt embeddings (the paper's prompt ensembling; open_clip's `build_zero_shot_classifier`).
    The prompts go through the tower `PROMPT_SLICE` at a time, in whole labels (a label with more
    prompts than that alone, its mean summed a slice at a time): memory holds one slice's ids and
    embeddings and the (L, D) result, however many labels and templates."""
    if any(not p for p in prompts):
        raise ValueError("every label needs at least one prompt")
    device = next(model.parameters()).device
    out = torch.empty(len(prompts), model.embed_dim, device=device)
    start = 0
    while start < len(prompts):
        end, size = start, 0
        while end < len(prompts) and (end == start or size + len(prompts[end]) <= PROMPT_SLICE):
            size, end = size + len(prompts[end]), end + 1
        group = prompts[start:end]
        if size > PROMPT_SLICE:  # one label alone
            total = sum(encode_prompts(model, tokenizer, group[0][k:k + PROMPT_SLICE], autocast).sum(dim=0)
                        for k in range(0, size, PROMPT_SLICE))
            out[start] = F.normalize(total / size, dim=-1)
        else:
            flat = encode_prompts(model, tokenizer, [p for g in group for p in g], autocast)
            out[start:end] = F.normalize(torch.stack([r.mean(dim=0) for r in flat.split([len(g) for g in group])]),
                                         dim=-1)
        start = end
    return out
