"""A shared source/target SentencePiece vocabulary (Kudo & Richardson, 2018; unigram model) for
the translation recipes, trained in seconds on the corpus itself, as Marian and T5 do on theirs.

Special ids are fixed so that configs and exports agree: pad 0, unk 1, bos 2 (the decoder's
start token), eos 3. The model travels as its serialized protobuf (`spm.model`), never a pickle.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

PAD, UNK, BOS, EOS = 0, 1, 2, 3
FILE_NAME = "spm.model"


class SentencePieceTokenizer:
    """encode(text) -> ids ending in EOS; decode(ids) -> text (special ids dropped)."""

    pad_id, unk_id, start_id, eos_id = PAD, UNK, BOS, EOS

    def __init__(self, model_proto: bytes) -> None:
        self.proto = model_proto
        try:  # sentencepiece raises RuntimeError("INTERNAL: ...") on bytes that are no model proto
            self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except RuntimeError:
            self.sp = None
        if self.sp is None or not model_proto or self.sp.get_piece_size() == 0:  # empty bytes parse as no model
            raise ValueError("not a readable SentencePiece model")
        if (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()) != (PAD, UNK, BOS, EOS):
            raise ValueError("SentencePiece model with other special ids than pad 0, unk 1, bos 2, eos 3")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "SentencePieceTokenizer":
        """A unigram model over `texts` (full character coverage: every character is a piece)."""
        out = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(texts)), model_writer=out, vocab_size=vocab_size, model_type="unigram",
            character_coverage=1.0, pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, num_threads=1,
            hard_vocab_limit=False, minloglevel=2)
        return cls(out.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "SentencePieceTokenizer":
        """The model in file `path` (or `path/spm.model`); ValueError naming the file if unusable."""
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / FILE_NAME
        try:
            return cls(path.read_bytes())
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def save(self, directory: str | Path) -> Path:
        path = Path(directory).expanduser() / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.proto)
        return path

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SentencePieceTokenizer) and other.proto == self.proto

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text) + [EOS]

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([i for i in ids if i > EOS])

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` the vocabulary cannot encode (they would become <unk>)."""
        return sorted({c for c in text if not c.isspace() and self.sp.piece_to_id(c) == UNK
                       and UNK in self.sp.encode(c)})
