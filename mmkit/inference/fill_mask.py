"""Masked-token prediction ("The capital of France is [MASK].") and the attention view of a BERT
(per layer and head, over the input tokens; Vig, "A Multiscale Visualization of Attention in the
Transformer Model", 2019), both over `mmkit.inference.encoder.LoadedEncoder`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mmkit.core import attention_maps
from mmkit.inference.encoder import LoadedEncoder
from mmkit.inference.inputs import check_count, text_items


@dataclass(frozen=True)
class MaskPrediction:
    """The ranked candidates for one mask: (token text, probability) pairs, likeliest first, their token
    ids, and the input with the best candidate filled in (any other masks of the text left as masks)."""

    position: int
    candidates: list[tuple[str, float]]
    filled: str
    ids: list[int]


# Characters per token a text may average and still be read: a WordPiece/BPE token spans a few characters
# (BERT's longest are about 20), so a longer text cannot fit the context and is refused before tokenizing it
# (a 10 MB text took 18 s and 2.3 GB to count its tokens).
MAX_CHARS_PER_TOKEN = 64


def _encode_checked(encoder: LoadedEncoder, text: str) -> list[int]:
    if not text.strip():
        raise ValueError("the text is empty")
    max_len = encoder.model.max_len
    if len(text) > max_len * MAX_CHARS_PER_TOKEN:
        raise ValueError(f"the text is {len(text)} characters long, more than the model's {max_len} tokens "
                         f"can hold (at most {max_len * MAX_CHARS_PER_TOKEN} characters)")
    ids = encoder.tokenizer.encode(text)
    if len(ids) > encoder.model.max_len:
        raise ValueError(f"the text is {len(ids)} tokens long, more than the model's {encoder.model.max_len}")
    return ids


def with_mask_token(tokenizer: Any, text: str) -> str:
    """`text` with "[MASK]" written as the tokenizer's own mask token (RoBERTa's "<mask>"): what
    `fill_mask` reads, so positions in its predictions index this text's token ids."""
    return text if tokenizer.mask_token == "[MASK]" else text.replace("[MASK]", tokenizer.mask_token)


def fill_mask(encoder: LoadedEncoder, text: str, top_k: int = 5) -> list[MaskPrediction]:
    """Top-k tokens with probabilities for every mask token in `text` ("[MASK]"; for RoBERTa
    tokenizers "<mask>", and "[MASK]" is read as "<mask>" too). As transformers' fill-mask pipeline: a
    probability is the softmax over the whole vocabulary, a candidate's text is its id decoded alone (RoBERTa's
    " sees", BERT's "##le"), and with several masks each `filled` keeps the other masks. Special tokens are
    never proposed: a `top_k` beyond the other tokens lists those (their probabilities then sum below 1).

    Raises:
        ValueError: empty text, no mask token, or a text longer than the model's context (cutting
            it could drop the mask, so nothing is truncated here).
    """
    tok = encoder.tokenizer
    check_count("top-k", top_k)
    if not isinstance(text, str):  # a list of texts: one call fills one
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    text = text_items(text, "text")[0]
    if not text.strip():
        raise ValueError("the text is empty")
    text = with_mask_token(tok, text)
    if tok.mask_token not in text:
        raise ValueError(f"no {tok.mask_token} in the text: mark the word to predict with {tok.mask_token}")
    ids = _encode_checked(encoder, text)
    positions = [i for i, t in enumerate(ids) if t == tok.mask_id]
    model = encoder.evaluating()
    device = next(model.parameters()).device
    with torch.inference_mode(), encoder.autocast():  # the arithmetic `load_encoder` chose
        hidden = model.encode(torch.tensor([ids], device=device))[0, positions]  # (M, dim)
        # softmax over the whole vocabulary first, as transformers: hiding special tokens before it would
        # renormalise the rest, and every probability would differ from the pipeline's (4% higher on a tiny BERT)
        probs = model.mlm_logits(hidden).float().softmax(-1)  # (M, vocab_size)
        hidden_ids = sorted(tok.special_ids) + list(range(len(tok), probs.shape[-1]))  # + a padded vocabulary
        probs[:, hidden_ids] = -1.0  # below every probability: never a candidate, at any k
    top = probs.topk(min(top_k, probs.shape[-1] - len(hidden_ids)), dim=-1)
    out = []
    for n, pos in enumerate(positions):
        candidates = top.indices[n].tolist()
        # decoded alone, as the pipeline's token_str: byte-level BPE's raw symbols ("Ġsees") are not text
        texts = [tok.decode([i], skip_special_tokens=False) for i in candidates]
        best = list(ids)
        best[pos] = candidates[0]
        out.append(MaskPrediction(pos, list(zip(texts, top.values[n].tolist())), _filled(tok, best, len(positions)),
                                  candidates))
    return out


def _filled(tok: Any, ids: list[int], masks: int) -> str:
    """The text of `ids` without the special tokens, but, where the text had several masks, with those not
    filled: dropping them (as skip_special_tokens does) read as a whole sentence that was never predicted.
    transformers' pipeline keeps them too (its sequence keeps [CLS] and [SEP] as well)."""
    if masks == 1:
        return tok.decode(ids)
    return tok.decode([i for i in ids if i == tok.mask_id or i not in tok.special_ids], skip_special_tokens=False)


def attention_view(encoder: LoadedEncoder, text: str) -> tuple[list[str], torch.Tensor]:
    """The input tokens and the attention probabilities of every layer and head.

    Returns:
        (tokens, maps) with maps (depth, num_heads, T, T): row i is where token i attends.
    """
    ids = _encode_checked(encoder, text)
    model = encoder.evaluating()
    x = torch.tensor([ids], device=next(model.parameters()).device)
    with torch.inference_mode(), encoder.autocast():
        _, maps = attention_maps(model, lambda: model.encode(x))
    return encoder.tokenizer.tokens(ids), torch.stack([m[0] for m in maps]).float().cpu()
