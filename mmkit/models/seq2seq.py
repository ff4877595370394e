"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017) and its
MarianMT descendant (Junczys-Dowmunt et al., 2018): token embeddings scaled by √dim plus fixed
sinusoidal positions, post-norm `Encoder` and `Decoder` (cross-attention), a shared vocabulary
whose embedding is also the output projection. Numerically identical to transformers'
`MarianMTModel` (import: `mmkit.weights.from_hf_marian`).
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmkit.core import (
    Attention, Decoder, Encoder, KVCache, LayerNorm, Mlp, PostNormBlock, key_padding_mask, sinusoidal_positions,
    sinusoidal_positions_halves, output_logits,
)
from mmkit.core.blocks import layer_norm
from mmkit.core.mlp import activation
from mmkit.weights.native import PretrainedMixin

NORM_EPS = 1e-5  # torch's default; Marian/transformers use it, the paper does not say
POSITION_LAYOUTS = {"interleaved": sinusoidal_positions, "halves": sinusoidal_positions_halves}


def context_attention_mask(context_mask: Tensor | None) -> Tensor | None:
    """(B, S) bool source validity -> (B, 1, 1, S) attention mask, or None when every position is
    valid (a batch without padding): SDPA's unmasked kernels are the faster ones (as transformers
    drops an all-ones mask); a 4-D mask passes through."""
    if context_mask is None or context_mask.ndim == 4:
        return context_mask
    if bool(context_mask.all()):
        return None
    return key_padding_mask(context_mask)


class Seq2Seq(PretrainedMixin, nn.Module):
    """Encoder-decoder translation model with the contract `encode(src, src_mask) -> memory`,
    `forward(tokens, context=memory, cache=None, context_mask=src_mask) -> logits`.

    Args:
        vocab_size: shared source/target vocabulary (ids in [0, vocab_size)).
        max_len: longest source or target sequence (rows of the position table).
        dim, num_heads, mlp_ratio: sizes shared by both stacks (base: 512 / 8 / 4.0).
        encoder_depth, decoder_depth: blocks per stack (base: 6 / 6).
        dropout: the paper's P_drop: on embeddings + positions and every sub-layer output before its
            residual add (base: 0.1; MarianConfig's dropout).
        attn_dropout: on the attention probabilities (MarianConfig's attention_dropout, 0 in opus-mt);
            None: `dropout`, the native recipe's setting (its measured results were trained with it).
        activation_dropout: on the feed-forward hidden layer, after the activation (MarianConfig's
            activation_dropout, 0 in opus-mt); None: `dropout`, as attn_dropout.
        pad_id: a token whose embedding row its lookups leave untrained (transformers' `padding_idx`, MarianMT's
            pad, which is also its decoder start; the tied output projection still trains it); None: every row.
        positions: sinusoid layout, "interleaved" (the paper: sin, cos, sin, ...) or "halves"
            (Marian: all sines, then all cosines).
        activation: feed-forward activation (`mmkit.core.mlp.ACTIVATIONS`: "relu" in the paper,
            "silu" = swish in the opus-mt models).
        scale_embedding: multiply token embeddings by √dim (the paper, §3.4; opus-mt models too).
        tie_output: the output projection is the token embedding (paper §3.4); False adds `head`.
        logits_bias: a fixed per-token logit bias buffer (MarianMT's `final_logits_bias`).
        encoder_layerdrop, decoder_layerdrop: LayerDrop (Fan et al., 2019) rates: in training, each block of that
            stack is skipped with this probability, drawn as transformers' MarianMT draws it (MarianConfig's
            fields; 0, the paper's model and the opus-mt ones: nothing drawn). Cached decoding runs every block.
    """

    beams_share_context = True  # beams and best-of-N rows read one context row (`core.decoding.shares_context`)

    def __init__(
        self,
        vocab_size: int = 32000,
        max_len: int = 512,
        dim: int = 512,
        encoder_depth: int = 6,
        decoder_depth: int = 6,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        positions: str = "interleaved",
        activation: str = "relu",
        scale_embedding: bool = True,
        tie_output: bool = True,
        logits_bias: bool = False,
        attn_dropout: float | None = None,
        activation_dropout: float | None = None,
        pad_id: int | None = None,
        encoder_layerdrop: float = 0.0,
        decoder_layerdrop: float = 0.0,
    ) -> None:
        super().__init__()
        if positions not in POSITION_LAYOUTS:
            raise ValueError(f"positions must be one of {sorted(POSITION_LAYOUTS)}, got {positions!r}")
        self.config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.vocab_size, self.max_len, self.dim = vocab_size, max_len, dim
        self.embed_scale = math.sqrt(dim) if scale_embedding else 1.0
        self.tok_embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)  # a gradient rule only: init below
        # Fixed table, not saved: it is a function of (max_len, dim, layout), like transformers'.
        self.register_buffer("pos_embed", POSITION_LAYOUTS[positions](max_len, dim), persistent=False)
        mlp_drop = (dropout if activation_dropout is None else activation_dropout, dropout)
        stack = dict(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, block=PostNormBlock,
                     norm_layer=layer_norm(NORM_EPS), mlp_layer=partial(Mlp, drop=mlp_drop),
                     act_layer=_activation(activation), final_norm=False)
        self.encoder = Encoder(depth=encoder_depth, layerdrop=encoder_layerdrop, **stack)
        self.decoder = Decoder(depth=decoder_depth, cross_attention=True, layerdrop=decoder_layerdrop, **stack)
        for m in self.modules():  # residual dropout on each sub-layer output (paper §5.4)
            if isinstance(m, Attention):
                m.attn_drop = dropout if attn_dropout is None else attn_dropout
                m.proj_drop = nn.Dropout(dropout)
        self.drop = nn.Dropout(dropout)
        self.head = None if tie_output else nn.Linear(dim, vocab_size, bias=False)
        if logits_bias:
            self.register_buffer("logits_bias", torch.zeros(vocab_size))
        else:
            self.logits_bias = None
        self.apply(_init_weights)

    def _embed(self, tokens: Tensor, offset: int = 0) -> Tensor:
        T = tokens.shape[1]
        if offset + T > self.max_len:
            raise ValueError(f"sequence of {offset + T} tokens exceeds max_len {self.max_len}")
        return self.drop(self.tok_embed(tokens) * self.embed_scale + self.pos_embed[offset : offset + T])

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """
        Args:
            src: (B, S) int64 source ids.
            src_mask: (B, S) bool, True for real tokens (None: all real).

        Returns:
            (B, S, dim) memory, the `context` of `forward`.
        """
        return self.encoder(self._embed(src), mask=context_attention_mask(src_mask))

    def forward(
        self, tokens: Tensor, context: Tensor | None = None, cache: KVCache | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            tokens: (B, T) target ids; with a `cache`, only the tokens after the cached prefix.
            context: (B, S, dim) `encode(src)` output; may be None once `cache` holds the
                cross-attention keys/values (computed from it once).
            cache: KV cache for incremental decoding, updated in place.
            context_mask: (B, S) bool source validity (or a (B, 1, 1, S) attention mask).

        Returns:
            (B, T, vocab_size) logits.
        """
        offset = cache.length if cache is not None else 0
        if context is None and offset == 0:
            raise ValueError("the decoder needs context=model.encode(src) (or a filled cache)")
        x = self.decoder(self._embed(tokens, offset), context=context,
                         context_mask=context_attention_mask(context_mask), cache=cache)
        logits = output_logits(x, self.tok_embed, self.head)  # (B, T, vocab)
        # in place: one (B, T, vocab) tensor fewer per decoding step (the projection's output is fresh)
        return logits if self.logits_bias is None else logits.add_(self.logits_bias)

    @classmethod
    def from_hf(cls, model_or_dir: nn.Module | str | Path) -> "Seq2Seq":
        """Import a transformers `MarianMTModel` instance or a local directory (config.json +
        model.safetensors / pytorch_model.bin); never the network. Returns eval mode for a
        directory, the instance's mode otherwise."""
        from mmkit.weights.from_hf_marian import marian_from_hf

        return cls.from_converted(marian_from_hf(model_or_dir))


def _activation(name: str) -> Any:
    return activation("silu" if name == "swish" else name)


def _init_weights(module: nn.Module) -> None:
    # Xavier-uniform projections (the tensor2tensor/fairseq choice for this model), N(0, dim^-1/2)
    # embeddings so that embedding·√dim starts at unit scale, zero biases.
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=module.weight.shape[1] ** -0.5)
    elif isinstance(module, LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
