"""What the translation data modules share (`number_phrases`, `translation_pairs`): a source/target
SentencePiece vocabulary trained on the training pairs, as Marian and T5 train theirs on their
corpus (or an exported `spm.model`), pairs encoded as a batch is drawn (memory holds the pairs'
text, never their ids), and the batch that `mmkit.tasks.translation.TranslationTask` reads.
"""
from __future__ import annotations

from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mmkit.data.sampling import order
from mmkit.data.spm_tokenizer import BOS, PAD, SentencePieceTokenizer

IGNORE_INDEX = -100
SPLITS = ("train", "val", "test")
Pair = tuple[str, str]  # (source, target)


class TranslationCollate:
    """[(src ids, tgt ids, source, target)] -> src (B, S) padded, src_mask, tokens = BOS + tgt,
    targets = tgt (tgt ends in EOS) with IGNORE_INDEX on padding, and the texts."""

    def __call__(self, batch: list[tuple[list[int], list[int], str, str]]) -> dict[str, Any]:
        S, T = max(len(b[0]) for b in batch), max(len(b[1]) for b in batch)
        src = torch.full((len(batch), S), PAD)
        tokens = torch.full((len(batch), T), PAD)
        targets = torch.full((len(batch), T), IGNORE_INDEX)
        for i, (s, t, _, _) in enumerate(batch):
            src[i, : len(s)] = torch.tensor(s)
            tokens[i, : len(t)] = torch.tensor([BOS] + t[:-1])
            targets[i, : len(t)] = torch.tensor(t)
        return {"src": src, "src_mask": src != PAD, "tokens": tokens, "targets": targets,
                "sources": [b[2] for b in batch], "references": [b[3] for b in batch]}


class EncodedPairs(Dataset):
    """`pairs` encoded one at a time: (source ids, target ids, source, target), ids ending in EOS."""

    def __init__(self, pairs: Sequence[Pair], tokenizer: SentencePieceTokenizer) -> None:
        self.pairs, self.tokenizer = pairs, tokenizer

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[list[int], list[int], str, str]:
        source, target = self.pairs[i]
        return self.tokenizer.encode(source), self.tokenizer.encode(target), source, target


def shared_vocabulary(pairs: Sequence[Pair], vocab_size: int, path: str | None = None) -> SentencePieceTokenizer:
    """The exported SentencePiece model at `path` (a `spm.model` or its folder), else one of `vocab_size`
    pieces trained on both sides of `pairs` (ids: pad 0, unk 1, bos 2, eos 3)."""
    if path:
        return SentencePieceTokenizer.load(path)
    return SentencePieceTokenizer.train((text for pair in pairs for text in pair), vocab_size)


class TranslationDataModule(pl.LightningDataModule):
    """Pairs per split (`SPLITS`) from `read_pairs`, which a subclass gives; the subclass's hyperparameters
    name `tokenizer`, `vocab_size`, `batch_size` and `num_workers`. After `setup`: `tokenizer` (the shared
    vocabulary) and `pairs` ({split: [(source, target)]})."""

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer: SentencePieceTokenizer | None = None
        self.pairs: dict[str, list[Pair]] = {}

    def read_pairs(self) -> dict[str, list[Pair]]:
        raise NotImplementedError

    def fitted(self, pairs: dict[str, list[Pair]]) -> dict[str, list[Pair]]:
        """The pairs the model can take, once `tokenizer` is known (all of them unless a subclass says)."""
        return pairs

    def setup(self, stage: str | None = None) -> None:
        if self.pairs:
            return
        h = self.hparams
        pairs = self.read_pairs()
        self.tokenizer = shared_vocabulary(pairs["train"], h.vocab_size, h.tokenizer)
        self.pairs = self.fitted(pairs)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = EncodedPairs(self.pairs[split], self.tokenizer)
        return DataLoader(dataset, batch_size=self.hparams.batch_size, **order(dataset, shuffle),
                          num_workers=self.hparams.num_workers, collate_fn=TranslationCollate())

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
