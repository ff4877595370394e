"""T5 (Raffel et al., "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer", 2020) and T5 v1.1 / Flan-T5: a shared token embedding, pre-norm RMSNorm stacks
without biases, a learned relative position bias (one per stack, from its first layer) added
to the scores of every self-attention layer, no 1/√d score scaling, ReLU or gated-GELU
feed-forward. Numerically identical to transformers' `T5ForConditionalGeneration`
(import: `mmkit.weights.from_hf_t5`).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from mmkit.core import Attention, Decoder, Encoder, KVCache, Mlp, PreNormBlock, RelativePositionBias, RMSNorm, SwiGLU
from mmkit.core import output_logits
from mmkit.core.mlp import activation
from mmkit.models.seq2seq import context_attention_mask
from mmkit.weights.native import PretrainedMixin

NORM_EPS = 1e-6  # T5's layer_norm_epsilon in every released checkpoint (`norm_eps`'s default)


def _feed_forward(kind: str, mlp_dim: int, dropout: float) -> Callable[..., nn.Module]:
    """"relu" (T5 v1.0) or "gated-<act>" (v1.1/Flan: "gated-gelu_tanh") -> an MLP factory with
    T5's hidden width (the block's dim * mlp_ratio would round 768 * 2048/768 down to 2047)."""
    gated = kind.startswith("gated-")
    act = activation(kind.removeprefix("gated-"))
    layer = SwiGLU if gated else Mlp

    def make(dim: int, _hidden: int, act_layer: Any = None) -> nn.Module:
        return layer(dim, mlp_dim, act_layer=act, bias=False, drop=dropout)

    return make


class T5(PretrainedMixin, nn.Module):
    """Encoder-decoder with the contract `encode(src, src_mask) -> memory` and
    `forward(tokens, context=memory, cache=None, context_mask=src_mask) -> logits`.

    Args:
        vocab_size: shared vocabulary (T5: 32128).
        dim, num_heads, head_dim, mlp_dim: d_model, heads, d_kv, d_ff (t5-small: 512/8/64/2048;
            num_heads * head_dim need not equal dim: flan-t5-small is 512 wide with 6 x 64).
        encoder_depth, decoder_depth: blocks per stack.
        num_buckets, max_distance: relative position buckets (32 / 128).
        dropout: on embeddings, sub-layer outputs, attention probabilities, FF hidden, outputs: T5Config's one
            dropout_rate where transformers applies it (`from_hf` reads it), so an import trains as it does.
        feed_forward: "relu" (v1.0) or "gated-gelu_tanh" (v1.1, Flan); any "gated-<activation>".
        tie_output: the output projection is the token embedding (else a separate `head`).
        scale_output: multiply decoder outputs by dim ** -0.5 before the projection (v1.0).
        norm_eps: the RMSNorms' epsilon (layer_norm_epsilon; 1e-6 in every released checkpoint).
    """

    beams_share_context = True  # beams and best-of-N rows read one context row (`core.decoding.shares_context`)

    def __init__(
        self,
        vocab_size: int = 32128,
        dim: int = 512,
        num_heads: int = 8,
        head_dim: int = 64,
        mlp_dim: int = 2048,
        encoder_depth: int = 6,
        decoder_depth: int = 6,
        num_buckets: int = 32,
        max_distance: int = 128,
        dropout: float = 0.1,
        feed_forward: str = "relu",
        tie_output: bool = True,
        scale_output: bool = True,
        norm_eps: float = NORM_EPS,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.vocab_size, self.dim, self.scale_output = vocab_size, dim, scale_output
        self.tok_embed = nn.Embedding(vocab_size, dim)
        # Stacks are built with one head (any dim divides) and their attention swapped for T5's:
        # bias-free, head_dim independent of dim, unscaled scores (T5 folds 1/√d into its init).
        stack = dict(dim=dim, num_heads=1, qkv_bias=False, block=PreNormBlock,
                     norm_layer=partial(RMSNorm, eps=norm_eps), mlp_layer=_feed_forward(feed_forward, mlp_dim, dropout),
                     final_norm=True)
        self.encoder = Encoder(depth=encoder_depth, **stack)
        self.decoder = Decoder(depth=decoder_depth, cross_attention=True, **stack)
        attn = partial(Attention, dim, num_heads, qkv_bias=False, proj_bias=False, attn_drop=dropout,
                       proj_drop=dropout, head_dim=head_dim, scale=1.0)
        for blk in [*self.encoder.blocks, *self.decoder.blocks]:
            blk.attn = attn()
            if blk.cross_attn is not None:
                blk.cross_attn = attn(cross=True)
        self.encoder_bias = RelativePositionBias(num_heads, num_buckets, max_distance, bidirectional=True)
        self.decoder_bias = RelativePositionBias(num_heads, num_buckets, max_distance, bidirectional=False)
        self.drop = nn.Dropout(dropout)
        self.head = None if tie_output else nn.Linear(dim, vocab_size, bias=False)
        self.apply(_init_weights)

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """
        Args:
            src: (B, S) int64 ids (T5: end with EOS, id 1).
            src_mask: (B, S) bool, True for real tokens (None: all real).

        Returns:
            (B, S, dim) memory, the `context` of `forward`.
        """
        S = src.shape[1]
        bias = self.encoder_bias(S, S)  # (1, nh, S, S), shared by every layer
        if src_mask is not None:
            bias = bias.masked_fill(~src_mask[:, None, None, :].bool(), torch.finfo(bias.dtype).min)
        return self.drop(self.encoder(self.drop(self.tok_embed(src)), mask=bias))

    def forward(
        self, tokens: Tensor, context: Tensor | None = None, cache: KVCache | None = None,
        context_mask: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            tokens: (B, T) target ids (start: pad, id 0); with a `cache`, only the new ones.
            context: (B, S, dim) `encode(src)` output (None once `cache` holds its keys/values).
            cache: KV cache for incremental decoding, updated in place.
            context_mask: (B, S) bool source validity (or a (B, 1, 1, S) attention mask).

        Returns:
            (B, T, vocab_size) logits.
        """
        offset = cache.length if cache is not None else 0
        if context is None and offset == 0:
            raise ValueError("the decoder needs context=model.encode(src) (or a filled cache)")
        T = tokens.shape[1]
        bias = self.decoder_bias(T, offset + T, offset)  # (1, nh, T, offset + T); the stack adds causality
        x = self.decoder(self.drop(self.tok_embed(tokens)), context=context, mask=bias,
                         context_mask=context_attention_mask(context_mask), cache=cache)
        x = self.drop(x)
        if self.scale_output:
            x = x * self.dim**-0.5
        return output_logits(x, self.tok_embed, self.head)  # (B, T, vocab)

    @classmethod
    def from_hf(cls, model_or_dir: nn.Module | str | Path) -> "T5":
        """Import a transformers `T5ForConditionalGeneration` (v1.0, v1.1, Flan-T5) instance or
        local directory (config.json + weights); never the network."""
        from mmkit.weights.from_hf_t5 import t5_from_hf

        return cls.from_converted(t5_from_hf(model_or_dir))


def _init_weights(module: nn.Module) -> None:
    # Mesh-TensorFlow's T5 init in spirit: N(0, fan_in^-1/2) projections (the missing 1/√d of the
    # scores lives here), unit-variance embeddings, unit norms.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=module.weight.shape[1] ** -0.5)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=1.0)
    elif isinstance(module, RMSNorm):
        nn.init.ones_(module.weight)
    elif isinstance(module, RelativePositionBias):
        nn.init.normal_(module.weight, std=0.02)
