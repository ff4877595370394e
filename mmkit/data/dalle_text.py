"""Word-level caption tokenizer for the DALL·E-style shapes recipe: the shapes captions use a few
dozen words, so a closed word vocabulary (id 0 = padding / null caption, 1 = unknown) is exact and
lets the tools name the words a prompt uses that the model never saw.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor

from mmkit.errors import quoted

log = logging.getLogger(__name__)

PAD, UNK = "<pad>", "<unk>"
_WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Captions → (B, text_len) int64 ids, right-padded with 0.

    Args:
        vocab: the words (ids 2..); PAD and UNK are added in front.
        text_len: ids per caption; longer captions are truncated with a warning.
    """

    def __init__(self, vocab: Sequence[str], text_len: int) -> None:
        self.vocab = [PAD, UNK] + [w for w in dict.fromkeys(vocab) if w not in (PAD, UNK)]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.text_len = text_len

    @classmethod
    def from_captions(cls, captions: Iterable[str], text_len: int) -> "WordTokenizer":
        return cls(sorted({w for c in captions for w in words(c)}), text_len)

    def __len__(self) -> int:
        return len(self.vocab)

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in words(text) if w not in self.index]

    def __call__(self, texts: Sequence[str], warn_truncation: bool = True) -> Tensor:
        """`warn_truncation` False: a caller that reports the truncation itself (`TextToImage.stream`)."""
        out = torch.zeros(len(texts), self.text_len, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.index.get(w, 1) for w in words(text)]
            if len(ids) > self.text_len and warn_truncation:
                log.warning("caption %s has %s words; truncated to %d", quoted(text), f"{len(ids):,}", self.text_len)
            out[i, : min(len(ids), self.text_len)] = torch.tensor(ids[: self.text_len], dtype=torch.long)
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"vocab": self.vocab[2:], "text_len": self.text_len}, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "WordTokenizer":
        """What `save` wrote; ValueError naming `path` for anything else."""
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError as e:  # invalid JSON or UTF-8
            raise ValueError(f"{path}: not a word tokenizer: {e}") from None
        vocab, text_len = (doc.get("vocab"), doc.get("text_len")) if isinstance(doc, dict) else (None, None)
        if not (isinstance(vocab, list) and all(isinstance(w, str) for w in vocab)) or \
                not (type(text_len) is int and text_len >= 1):
            raise ValueError(f'{path}: not a word tokenizer: expected {{"vocab": [words], "text_len": N >= 1}}')
        return cls(vocab, text_len)
