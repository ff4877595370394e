"""Sentence embeddings from a BERT-family encoder, the sentence-transformers convention (Reimers &
Gurevych, 2019): mean of the final hidden states over the attention mask, then L2 normalisation.
Texts are encoded in length-sorted batches (little padding) and returned in input order.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import torch

from mmkit.inference.encoder import LoadedEncoder

log = logging.getLogger(__name__)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, dim) hidden states, (B, T) mask -> (B, dim) L2-normalised masked means."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(mean, dim=-1)


class Embedder:
    """texts -> (N, dim) float32 unit vectors.

    Args:
        encoder: a loaded BERT and tokenizer (`mmkit.inference.encoder.load_encoder`).
        batch_size: texts per forward pass.
    """

    def __init__(self, encoder: LoadedEncoder, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.encoder, self.batch_size = encoder, batch_size
        self.device = next(encoder.model.parameters()).device

    @property
    def dim(self) -> int:
        return self.encoder.model.config["dim"]

    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        """Token ids of each text cut to the model's context, and how many texts were cut."""
        tok, limit = self.encoder.tokenizer, self.encoder.model.max_len
        ids = tok.encode_batch(list(texts))
        cut = sum(len(i) > limit for i in ids)
        return [i if len(i) <= limit else i[: limit - 1] + [i[-1]] for i in ids], cut

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """(N, dim) float32 embeddings of `texts`, in their order; texts longer than the model's
        context are cut with a warning (the embedding then describes their beginning)."""
        ids, cut = self.tokenize(texts)
        if cut:
            log.warning("%d text(s) longer than the model's %d tokens were truncated", cut, self.encoder.model.max_len)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        pad = self.encoder.tokenizer.pad_id
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            T = max(len(ids[i]) for i in rows)
            batch = torch.full((len(rows), T), pad, dtype=torch.long)
            for j, i in enumerate(rows):
                batch[j, : len(ids[i])] = torch.tensor(ids[i])
            mask = torch.arange(T)[None, :] < torch.tensor([len(ids[i]) for i in rows])[:, None]
            batch, mask = batch.to(self.device), mask.to(self.device)
            # A batch of equal lengths (common once sorted) needs no mask: SDPA's unmasked kernel.
            hidden = self.encoder.model.encode(batch, None if bool(mask.all()) else mask)
            vectors = mean_pool(hidden.float(), mask)
            out[rows] = vectors.cpu().numpy()
            if on_batch:
                on_batch(len(rows))
        return out
