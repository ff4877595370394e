"""Checks on the label names a zero-shot scorer ranks (Radford et al., 2021, section 3.1.4: a softmax over
the labels' prompt embeddings), shared by `mmkit label` and the Python API (`ZeroShotClassifier`,
`zero_shot_scores`) so that both refuse the same names with the same words.
"""
from __future__ import annotations

from typing import Sequence


def check_label_names(names: Sequence[str], multi_label: bool = False, multi_label_hint: str | None = None) -> None:
    """Refuse label names whose softmax scores mean nothing (ValueError, one line).

    Two names equal but for case: one class split in two (CLIP's BPE lower-cases its input, so their prompts
    are one text, their embeddings one row, and they tie at 0.5 on every image). One name alone, unless
    scored on its own (`multi_label`): the softmax over a single label is 1.0 whatever the image.

    Args:
        names: the labels, stripped, each once (`prompts.clean_labels`).
        multi_label: each label is scored on its own (sigmoid), so one label is a question worth asking.
        multi_label_hint: how the caller asks for that ("--multi-label", "multi_label=True"), named in the
            one-label message; None where the scorer has no such mode.
    """
    folded: dict[str, str] = {}
    for name in names:
        if folded.setdefault(name.casefold(), name) != name:
            raise ValueError(f"labels {folded[name.casefold()]!r} and {name!r} differ only in case: give one")
    if len(names) == 1 and not multi_label:
        hint = f", or {multi_label_hint} to score it on its own" if multi_label_hint else ""
        raise ValueError(f"one label ({names[0]!r}) always scores 1.0: give at least two{hint}")
