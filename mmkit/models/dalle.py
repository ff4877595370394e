"""DALL·E-style text-to-image generator (Ramesh et al., "Zero-Shot Text-to-Image Generation", 2021):
one causal transformer over [text tokens ; image tokens], with separate text and image embeddings,
learned text positions and row/column image positions (as DALLE-pytorch lays it out). Image tokens
are the codes of a `VQGAN`; logits at positions whose next token is an image token are restricted
to the codebook (and to the text vocabulary before). Classifier-free guidance ("super-conditioning"
in dalle-mini) runs conditional and unconditional rows in one batch (`ClassifierFreeGuidance`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mmkit.core import Decoder, KVCache, LearnedPositions
from mmkit.core.blocks import layer_norm
from mmkit.core.filters import guided
from mmkit.core.init import init_normal_
from mmkit.stems.vq import ImageTokenEmbedding
from mmkit.weights.native import PretrainedMixin, WeightsError


_UNNAMED = dict(dim=256, depth=4, num_heads=4, mlp_ratio=4.0)  # DALLE's transformer sizes when no `size` is named


def _sizes(size: str | None, given: dict[str, Any]) -> dict[str, Any]:
    """dim, depth, num_heads, mlp_ratio: those `given` (not None), else the named `size`'s, else `_UNNAMED`'s."""
    from mmkit.models.sizes import dalle_config

    named = dalle_config(size) if size is not None else _UNNAMED
    return {k: named[k] if given.get(k) is None else given[k] for k in _UNNAMED}


class DALLE(PretrainedMixin, nn.Module):
    """Decoder-only text-to-image model following `forward(tokens, context, cache) -> logits`.

    One id space for the shared decoding loop: text ids are [0, text_vocab_size), image code c is
    id `text_vocab_size + c`. A sequence is `text_len` text ids (right-padded with `pad_id`; all
    `pad_id` is the null caption of classifier-free guidance) followed by image_grid² codes in
    raster order; the logits at position p predict the token at p + 1.

    Args:
        text_vocab_size: text token ids are in [0, text_vocab_size).
        text_len: text positions (captions are padded or truncated to it).
        codebook_size: image codes (the VQGAN's codebook size).
        image_grid: the code grid is image_grid × image_grid.
        dim, depth, num_heads, mlp_ratio: transformer sizes (timm's names); None = the named `size`'s,
            else 256, 4, 4, 4.0.
        dropout: dropout on the summed embeddings.
        norm_eps: LayerNorm epsilon.
        pad_id: the text padding id (also the null caption).
        size: a named transformer size (`mmkit.models.sizes.DALLE_SIZES`, e.g. "dalle_tiny"), so that
            a YAML recipe can name it; explicit dim/depth/num_heads/mlp_ratio still win.
    """

    def __init__(
        self,
        text_vocab_size: int = 64,
        text_len: int = 12,
        codebook_size: int = 256,
        image_grid: int = 8,
        dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float | None = None,
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
        pad_id: int = 0,
        size: str | None = None,
    ) -> None:
        super().__init__()
        dim, depth, num_heads, mlp_ratio = _sizes(size, dict(dim=dim, depth=depth, num_heads=num_heads,
                                                             mlp_ratio=mlp_ratio)).values()
        # Resolved sizes: a saved config rebuilds the same model even if the named table changes.
        self.config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.text_vocab_size, self.text_len, self.pad_id = text_vocab_size, text_len, pad_id
        self.codebook_size, self.image_grid = codebook_size, image_grid
        self.text_embed = nn.Embedding(text_vocab_size, dim)
        self.text_pos = LearnedPositions(text_len, dim)
        self.image_embed = ImageTokenEmbedding(codebook_size, image_grid, dim)
        self.drop = nn.Dropout(dropout)
        self.decoder = Decoder(dim, depth, num_heads, mlp_ratio, qkv_bias=True, norm_layer=layer_norm(norm_eps),
                               final_norm=True)
        # Untied: text and image tokens have separate input embeddings, so there is no one table to tie to.
        self.head = nn.Linear(dim, text_vocab_size + codebook_size)
        self.apply(init_normal_)

    @classmethod
    def check_config(cls, config: Any, where: str) -> None:
        """The fields' types and ranges (`PretrainedMixin.check_config`), then the sizes a named `size`
        fills in: an unknown name, or a width its heads cannot split (`size: dalle_tiny` with `num_heads: 5`),
        is refused naming `where` before anything is built."""
        super().check_config(config, where)
        try:
            sizes = _sizes(config.get("size"), {k: config.get(k) for k in _UNNAMED})
        except ValueError as e:
            raise WeightsError(f"{where}: field 'size' {e}") from None
        from_size = f" (dim {sizes['dim']} from size {config['size']!r})" if config.get("dim") is None and \
            config.get("size") is not None else ""
        if sizes["dim"] % sizes["num_heads"]:
            raise WeightsError(f"{where}: field 'dim' ({sizes['dim']}) is not divisible by 'num_heads' "
                               f"({sizes['num_heads']}){from_size}")

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "DALLE":
        """Build a named transformer size (see `mmkit.models.sizes.DALLE_SIZES`), e.g. "dalle_tiny";
        the vocabularies and grid come in `overrides`."""
        return cls(size=name, **overrides)

    @property
    def image_len(self) -> int:
        return self.image_grid * self.image_grid

    @property
    def max_len(self) -> int:
        """Tokens of a whole sequence; the model is fed at most max_len - 1 (the last is only predicted)."""
        return self.text_len + self.image_len

    def embed(self, tokens: Tensor, offset: int) -> Tensor:
        """Tokens (B, T) at positions offset .. offset + T - 1 → (B, T, dim)."""
        if tokens.shape[1] == 0:  # as `core.Attention` says it, before an empty concatenation would
            raise ValueError(f"empty sequence: attention needs at least one position, got shape {tuple(tokens.shape)}")
        n_text = max(0, min(self.text_len - offset, tokens.shape[1]))
        text, image = tokens[:, :n_text], tokens[:, n_text:] - self.text_vocab_size
        checked = not torch.compiler.is_compiling()  # eager only: the checks read values, which a graph cannot
        if checked and text.numel() and (int(text.min()) < 0 or int(text.max()) >= self.text_vocab_size):
            raise ValueError(f"text ids must be in [0, {self.text_vocab_size})")
        if checked and image.numel() and (int(image.min()) < 0 or int(image.max()) >= self.codebook_size):
            raise ValueError(f"image ids must be in [{self.text_vocab_size}, {self.text_vocab_size + self.codebook_size})")
        parts = []
        if n_text:
            parts.append(self.text_embed(text) + self.text_pos(n_text, offset))
        if image.shape[1]:
            parts.append(self.image_embed(image, max(0, offset - self.text_len)))
        return torch.cat(parts, dim=1)

    def forward(self, tokens: Tensor, context: Tensor | None = None, cache: KVCache | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        """
        Args:
            tokens: (B, T) ids; with a `cache`, only the tokens after the cached prefix.
            context, context_mask: must be None (decoder-only; arguments of the decoding contract).
            cache: KV cache for incremental decoding, updated in place.

        Returns:
            (B, T, text_vocab_size + codebook_size) logits, -inf outside the kind of token (text
            or image) that comes next.
        """
        if context is not None or context_mask is not None:
            raise ValueError("DALLE is decoder-only and takes no context")
        offset = cache.length if cache is not None else 0
        x = self.decoder(self.drop(self.embed(tokens, offset)), cache=cache)
        logits = self.head(x)  # (B, T, V)
        next_is_image = torch.arange(offset + 1, offset + 1 + tokens.shape[1], device=tokens.device) >= self.text_len
        text_ids = torch.arange(logits.shape[-1], device=tokens.device) < self.text_vocab_size
        return logits.masked_fill(next_is_image[:, None] == text_ids[None, :], float("-inf"))


class ClassifierFreeGuidance(nn.Module):
    """Wraps a `DALLE` for the decoding loop: each row runs twice in one batch, with its caption
    and with the null caption (all `pad_id`, what caption dropout trains), and the logits become
    uncond + scale · (cond − uncond). The KV cache therefore holds 2B rows."""

    def __init__(self, model: DALLE, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, tokens: Tensor, context: Tensor | None = None, cache: KVCache | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        offset = cache.length if cache is not None else 0
        null = tokens.clone()
        null[:, : max(0, self.model.text_len - offset)] = self.model.pad_id
        # -inf marks the other token kind in both halves: `guided` keeps it
        return guided(self.model(torch.cat([tokens, null]), context, cache, context_mask), self.scale)
