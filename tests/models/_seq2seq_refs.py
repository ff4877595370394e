"""Tiny random-init transformers references (MarianMT, T5) shared by the seq2seq tests."""
from __future__ import annotations

import torch
from transformers import MarianConfig, MarianMTModel, T5Config, T5ForConditionalGeneration

PAD = 98  # Marian: pad = decoder start = last id; EOS = 0


def tiny_marian(eos_bias: float = 0.0, seed: int = 0, **overrides) -> MarianMTModel:
    """A 2+2-layer MarianMT; `eos_bias` on final_logits_bias makes EOS likely after a few steps."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
               activation_function="swish", scale_embedding=True, pad_token_id=PAD, decoder_start_token_id=PAD,
               eos_token_id=0, forced_eos_token_id=None, attn_implementation="eager")
    model = MarianMTModel(MarianConfig(**{**cfg, **overrides})).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_()
        model.final_logits_bias[0, 0] = eos_bias
    return model


def tiny_t5(feed_forward: str = "relu", tie: bool = True, seed: int = 0, decoder_layers: int = 3) -> T5ForConditionalGeneration:
    """A 2+3-layer T5 whose heads (3 x 8) do not span its width (30), like flan-t5-small.
    (transformers' generate() cache needs decoder_layers == 2, the encoder's.)"""
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=99, d_model=30, d_kv=8, d_ff=40, num_layers=2, num_decoder_layers=decoder_layers, num_heads=3,
                   relative_attention_num_buckets=8, relative_attention_max_distance=20,
                   feed_forward_proj=feed_forward, tie_word_embeddings=tie, decoder_start_token_id=0,
                   attn_implementation="eager")
    return T5ForConditionalGeneration(cfg).eval()


def padded_sources(pad: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(6, 9) source ids with three rows right-padded, and their validity mask."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(2, 98, (6, 9), generator=g)
    src[1, 6:], src[3, 2:], src[5, 8:] = pad, pad, pad
    return src, src != pad
