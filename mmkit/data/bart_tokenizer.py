"""dalle-mini's text tokenizer as min-dalle runs it (kuprel/min-dalle `text_tokenizer.py`): BART's
byte-level BPE read from a local `vocab.json` + `merges.txt`, after dalle-mini's normalisation:
emoji spelled out (`emoji.demojize`), lower case, non-ASCII characters dropped, words split on
single spaces, each word prefixed with BPE's word marker, then `<s> … </s>`. The ids must be the
ones min-dalle feeds its encoder, so the rules are min-dalle's, quirks included (no GPT-2 byte
mapping: ASCII control characters become `<unk>`; a truncated prompt loses its `</s>`).
"""
from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from mmkit.errors import quoted
from mmkit.weights.native import WeightsError

log = logging.getLogger(__name__)

WORD_MARK = chr(ord(" ") + 256)  # "Ġ": byte-level BPE's leading-space marker
PAD_ID = 1  # BART's <pad>, which min-dalle pads with whatever the vocabulary; DalleBart masks it out


def normalize(text: str) -> str:
    """dalle-mini's normalisation: emoji → names (when the `emoji` package is installed, as it is
    with min-dalle), lower case, non-ASCII characters dropped."""
    try:
        from emoji import demojize
    except ImportError:  # without it an emoji is dropped with the other non-ASCII characters
        demojize = None
    if demojize is not None:
        text = demojize(text, delimiters=("", ""))
    elif not text.isascii():
        log.warning("the emoji package is not installed: emoji in %s are dropped, not spelled out", quoted(text))
    return text.lower().encode("ascii", errors="ignore").decode()


class BartTokenizer:
    """Prompts → (B, text_len) int64 BART ids, right-padded with `<pad>` (1).

    Args:
        vocab: subword → id (BART's vocab.json).
        merges: BPE merges, highest priority first (merges.txt without its header).
        text_len: ids per prompt (min-dalle: 64); longer prompts are truncated with a warning.
    """

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]], text_len: int = 64) -> None:
        missing = [t for t in ("<s>", "</s>", "<unk>") if t not in vocab]
        if missing:
            raise WeightsError(f"BART vocabulary lacks the special tokens {', '.join(missing)}")
        self.vocab, self.text_len = dict(vocab), text_len
        self.rank = {tuple(pair): i for i, pair in enumerate(merges)}
        self.bos, self.eos, self.unk = vocab["<s>"], vocab["</s>"], vocab["<unk>"]
        self._bpe = lru_cache(maxsize=65536)(self._bpe_uncached)

    @classmethod
    def from_files(cls, vocab_json: str | Path, merges_txt: str | Path, text_len: int = 64) -> "BartTokenizer":
        """min-dalle's `vocab.json` and `merges.txt` (a `#version` header line, then `a b` per line)."""
        try:
            vocab = json.loads(Path(vocab_json).read_text(encoding="utf8"))
            lines = Path(merges_txt).read_text(encoding="utf8").split("\n")
        except (OSError, ValueError) as e:
            raise WeightsError(f"cannot read the BART tokenizer files ({e})") from None
        if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
            raise WeightsError(f"{vocab_json}: not a BPE vocabulary (a JSON object of subword: id)")
        merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
        bad = next((m for m in merges if len(m) != 2), None)
        if bad is not None:
            raise WeightsError(f"{merges_txt}: not a BPE merges file (line {' '.join(bad)!r})")
        return cls(vocab, merges, text_len)

    def __len__(self) -> int:
        return max(self.vocab.values()) + 1

    def _bpe_uncached(self, word: str) -> tuple[str, ...]:
        """min-dalle's `get_byte_pair_encoding`: merge the best-ranked adjacent pair until none is known."""
        parts = [WORD_MARK] + list(word)
        while len(parts) > 1:
            pairs = list(zip(parts[:-1], parts[1:]))
            best = min(pairs, key=lambda p: self.rank.get(p, float("inf")))
            if best not in self.rank:
                break
            i = pairs.index(best)
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        """`<s>` + subword ids + `</s>`, untruncated (min-dalle's `TextTokenizer.tokenize`)."""
        ids = [self.vocab.get(s, self.unk) for word in normalize(text).split(" ") if word for s in self._bpe(word)]
        return [self.bos] + ids + [self.eos]

    def unknown_words(self, text: str) -> list[str]:
        """Words of `text` (split on spaces, as min-dalle splits) that lose something: nothing left after
        normalisation (all non-ASCII), or a subword outside the vocabulary (`<unk>`)."""
        out = []
        for word in (w for w in text.split(" ") if w):
            kept = [w for w in normalize(word).split(" ") if w]
            if not kept or any(self.vocab.get(s, self.unk) == self.unk for w in kept for s in self._bpe(w)):
                out.append(word)
        return out

    def _ids(self, text: str, warn_truncation: bool = True) -> list[int]:
        ids = self.encode(text)
        if len(ids) > self.text_len and warn_truncation:
            log.warning("prompt %s has %s tokens; truncated to %d", quoted(text), f"{len(ids):,}", self.text_len)
        return ids[: self.text_len]

    def __call__(self, texts: Sequence[str], warn_truncation: bool = True) -> Tensor:
        """`warn_truncation` False: a caller that reports the truncation itself (`TextToImage.stream`)."""
        return self._pad([self._ids(t, warn_truncation) for t in texts])

    def null_text(self, texts: Sequence[str]) -> Tensor:
        """dalle-mini's unconditional prompt for super-conditioning, as min-dalle builds it: the
        first and last id of each (truncated) prompt, then padding."""
        return self._pad([[ids[0], ids[-1]] for ids in (self.encode(t)[: self.text_len] for t in texts)])

    def _pad(self, rows: list[list[int]]) -> Tensor:
        out = torch.full((len(rows), self.text_len), PAD_ID, dtype=torch.long)
        for i, ids in enumerate(rows):
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
