"""Sentence embeddings from a BERT-family encoder, the sentence-transformers convention (Reimers &
Gurevych, 2019): mean of the final hidden states over the attention mask, then L2 normalisation.
Texts are encoded in length-sorted batches of near-equal lengths (little padding, often no mask) and
returned in input order.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from mmkit.inference.encoder import LoadedEncoder, encode_to_context, report_truncated
from mmkit.inference.inputs import text_items

# A batch of sorted texts ends before a text more than this fraction longer than its shortest, so
# padding stays under ~6% of a batch (512 WordNet sentences in batches of 32, the bench's texts,
# padding: 14% of the positions with full batches, 1.4% with this rule, for twice as many batches).
PADDING_SLACK = 1 / 16


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, dim) hidden states, (B, T) mask -> (B, dim) L2-normalised masked means."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(mean, dim=-1)


class Embedder:
    """texts -> (N, dim) float32 unit vectors.

    Args:
        encoder: a loaded BERT and tokenizer (`mmkit.inference.encoder.load_encoder`).
        batch_size: texts per forward pass at most.
        quantize: "none" (fp32, exact) or "int8" (`mmkit.inference.quantize`: int8 Linear weights, CPU
            only; the vectors then differ slightly from fp32's: cosine measured in `bench embed`).
        precision: None (the default: the encoder's, as `load_encoder` set it up; fp32 unless asked), "fp32",
            "bf16", "fp16" or "auto" (autocast around the encoder; `mmkit.inference.precision.resolve_precision`;
            the vectors are pooled in fp32).
    """

    def __init__(self, encoder: LoadedEncoder, batch_size: int = 64, quantize: str = "none",
                 precision: str | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.device = next(encoder.model.parameters()).device
        # in place: with int8 the encoder's model becomes int8
        self.precision, self._autocast = encoder.arithmetic(precision, quantize, "embedder")
        self.encoder, self.batch_size = encoder, batch_size

    @property
    def dim(self) -> int:
        return self.encoder.model.config["dim"]

    def tokenize(self, texts: str | Sequence[str], ids: list[list[int]] | None = None) -> tuple[list[list[int]], int]:
        """Token ids of each text cut to the model's context, and how many texts were cut (a lone str is one
        text, `as_items`; `ids`: the texts' token ids where the caller has them, `mark_unknown_rows`')."""
        return encode_to_context(self.encoder.tokenizer, text_items(texts), self.encoder.model.max_len, ids)

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices of the texts in batches: sorted by length, at most `batch_size` each, and a batch
        ends before a text more than `PADDING_SLACK` longer than its shortest."""
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        out: list[list[int]] = []
        for i in order:
            if not out or len(out[-1]) == self.batch_size or lengths[i] > lengths[out[-1][0]] * (1 + PADDING_SLACK):
                out.append([])
            out[-1].append(i)
        return out

    def plan(self, texts: str | Sequence[str], on_truncated: Callable[[int], None] | None = None,
             ids: list[list[int]] | None = None) -> tuple[list[list[int]], list[list[int]]]:
        """(token ids of each text, the batches `embed` runs: `batches` of their lengths); texts longer than
        the model's context are cut, reported as in `embed`. Ranks sharing a run (`mmkit embed` under
        torchrun) each make the whole plan and embed some of its batches: the very batches of one process,
        so the vectors are bit for bit one process's. `ids`: the texts' token ids where the caller has them."""
        ids, cut = self.tokenize(texts, ids)
        report_truncated(cut, self.encoder.model.max_len, on_truncated)
        return ids, self.batches([len(i) for i in ids])

    # One autocast context for all batches, under no_grad rather than inference_mode: autocast then casts
    # the weights to bf16 once per call, not once per batch (inside inference mode it keeps no casts).
    @torch.no_grad()
    def embed_batches(self, ids: list[list[int]], batches: Sequence[list[int]],
                      on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """(len(ids), dim) float32: the rows of `batches` (lists of indices into `ids`, from `plan`)
        embedded, the others zero."""
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        pad = self.encoder.tokenizer.pad_id
        with self._autocast():
            for rows in batches:
                self._embed_batch(ids, rows, pad, out)
                if on_batch:
                    on_batch(len(rows))
        return out

    def embed(self, texts: str | Sequence[str], on_batch: Callable[[int], None] | None = None,
              on_truncated: Callable[[int], None] | None = None) -> np.ndarray:
        """(N, dim) float32 embeddings of `texts`, in their order (a lone str is one text: (1, dim)); texts
        longer than the model's context are cut (the embedding then describes their beginning), with a
        warning, or with `on_truncated(count)` for a caller that reports many calls at once."""
        ids, batches = self.plan(texts, on_truncated)
        return self.embed_batches(ids, batches, on_batch)

    def _embed_batch(self, ids: list[list[int]], rows: list[int], pad: int, out: np.ndarray) -> None:
        """Embed the texts `rows` of `ids` (one batch, padded to its longest) into those rows of `out`."""
        T = max(len(ids[i]) for i in rows)
        batch = torch.full((len(rows), T), pad, dtype=torch.long)
        for j, i in enumerate(rows):
            batch[j, : len(ids[i])] = torch.tensor(ids[i])
        mask = torch.arange(T)[None, :] < torch.tensor([len(ids[i]) for i in rows])[:, None]
        batch, mask = batch.to(self.device), mask.to(self.device)
        # A batch of equal lengths (common once sorted) needs no mask: SDPA's unmasked kernel.
        hidden = self.encoder.evaluating().encode(batch, None if bool(mask.all()) else mask)
        out[rows] = mean_pool(hidden.float(), mask).cpu().numpy()
