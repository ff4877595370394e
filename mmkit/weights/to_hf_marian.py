"""Convert an `mmkit.models.Seq2Seq` ("Attention Is All You Need", Vaswani et al., 2017; MarianMT, Junczys-Dowmunt
et al., 2018) into the config.json document and state dict of a transformers `MarianMTModel`: the inverse of
`from_hf_marian.marian_from_hf` (its key map, read backwards). A pure converter: it never imports mmkit.models.

mmkit's fused `qkv` / `kv` projections are split into transformers' q/k/v. The recipe's Seq2Seq lays its sinusoids
out interleaved (the paper), MarianMT [sin | cos] (`positions="halves"`); the one table is a fixed permutation of the
other's channels, so such a model is written in the permuted channel basis (`to_halves`), which computes the same
function exactly. What MarianMT cannot build is refused by name before anything is written.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import torch
from torch import Tensor

from mmkit.weights.from_hf_marian import MARIAN_KEYS
from mmkit.weights.hf import refuse_inexpressible, split_projections
from mmkit.weights.keymap import remap
from mmkit.weights.native import WeightsError

# mmkit's activation -> MarianConfig's activation_function (the importer's table backwards; "swish" as opus-mt names
# SiLU, and as Seq2Seq also accepts it)
ACTIVATIONS = {"silu": "swish", "swish": "swish", "relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new"}
POSITIONS = ("halves", "interleaved")
# The Seq2Seq constructor arguments this converter reads; any other (a layout a later Seq2Seq adds, such as a pre-norm
# block) is refused by name rather than written as a model transformers would compute otherwise.
KNOWN_CONFIG = ("vocab_size", "max_len", "dim", "encoder_depth", "decoder_depth", "num_heads", "mlp_ratio", "dropout",
                "positions", "activation", "scale_embedding", "tie_output", "logits_bias", "attn_dropout",
                "activation_dropout", "pad_id", "encoder_layerdrop", "decoder_layerdrop")
_EMBED_COPIES = ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight")
# A fused projection of mmkit's core `Attention`: `<base>.<qkv|kv>.<weight|bias>`
# The tensors that read the residual stream (its channels on their last axis) and those that write it (first axis):
# the ones `to_halves` reorders. Every other tensor (q/k/v and fc1 biases, the logits bias) lies outside the stream.
_READS = re.compile(r"(tok_embed|head|.+\.(attn\.qkv|cross_attn\.q|cross_attn\.kv|mlp\.fc1))\.weight\Z")
_WRITES = re.compile(r".+\.((cross_)?attn\.proj|mlp\.fc2|norm1|norm2|norm_cross)\.(weight|bias)\Z")


def to_halves(state: dict[str, Tensor], dim: int) -> dict[str, Tensor]:
    """A Seq2Seq with interleaved sinusoids (sin, cos, sin, ...) as the same function with MarianMT's [sin | cos]
    table: channel j of the new residual stream is channel `perm[j]` of the old, where `perm` lists the even
    channels then the odd ones, the permutation that takes the one table to the other. Exact: LayerNorm, attention
    and the tied output projection (x·Eᵀ) are indifferent to the order of channels once every tensor that reads the
    stream (embeddings, q/k/v, fc1, the head: last axis) and every one that writes it (output projections, fc2,
    norms: first axis) is reordered alike."""
    perm = torch.cat([torch.arange(0, dim, 2), torch.arange(1, dim, 2)])
    out = {}
    for key, value in state.items():
        if _READS.match(key):
            value = value[:, perm]
        elif _WRITES.match(key):
            value = value[perm]
        out[key] = value
    return out


def check_expressible(config: dict[str, Any], state: dict[str, Tensor], where: str) -> None:
    """Refuse, by name, a Seq2Seq that MarianMTModel cannot build.

    Raises:
        WeightsError: a constructor argument this converter does not know (a later layout, a pre-norm block), an
            activation or position layout MarianMT lacks, or an output head the config and the weights disagree on.
    """
    act, positions = config.get("activation", "relu"), config.get("positions", "interleaved")
    unsupported = {
        f"activation={act!r} (MarianMT's: {', '.join(sorted(set(ACTIVATIONS) - {'swish'}))})": act not in ACTIVATIONS,
        f"positions={positions!r} (sinusoids {' or '.join(POSITIONS)})": positions not in POSITIONS,
        "an untied output head with tie_output=True, or none with tie_output=False":
            ("head.weight" in state) == bool(config.get("tie_output", True)),
    }
    refuse_inexpressible(config, KNOWN_CONFIG, unsupported, where, "MarianMTModel", "MarianMT")


def marian_from_mmkit(config: dict[str, Any], state: dict[str, Tensor], start_id: int, eos_id: int, pad_id: int,
                      forced_eos_id: Optional[int] = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """transformers' MarianConfig document (config.json) and `MarianMTModel` state dict for an mmkit Seq2Seq, the
    inverse of `from_hf_marian.marian_from_hf` (with `special_tokens`' ids).

    Args:
        config: the Seq2Seq's constructor arguments (`Seq2Seq.config`).
        state: its state dict (fp32 or another float dtype, not int8).
        start_id, eos_id, pad_id: the decoder's start token, the end of a sequence and padding (MarianConfig's
            decoder_start_token_id, eos_token_id and pad_token_id; opus-mt starts with <pad>).
        forced_eos_id: transformers' forced_eos_token_id (None: none, written out: MarianConfig's default is 0).

    Returns:
        The config (`architectures` ["MarianMTModel"], every field written out rather than left to MarianConfig's
        defaults, which a later transformers may change) and the state dict as `save_pretrained` writes it: the
        shared embedding once when the head is tied (transformers ties the copies), all three copies beside
        `lm_head.weight` when it is not (transformers 5 then holds them apart); `final_logits_bias` (1, vocab), zeros
        for a model without one; no sinusoid tables (transformers recomputes them).

    Raises:
        WeightsError: what MarianMT cannot build (`check_expressible`), token ids outside the vocabulary, or tensors
            the key map does not account for (names listed).
    """
    dim, vocab = config["dim"], config["vocab_size"]
    where = f"mmkit Seq2Seq (dim {dim}, {config['encoder_depth']}+{config['decoder_depth']} layers)"
    check_expressible(config, state, where)
    ids = {"start_id": start_id, "eos_id": eos_id, "pad_id": pad_id, "forced_eos_id": forced_eos_id}
    outside = [f"{k} {v}" for k, v in ids.items() if v is not None and not 0 <= v < vocab]
    if outside:
        raise WeightsError(f"{where}: token ids outside the vocabulary of {vocab}: {', '.join(outside)}")
    tie = bool(config.get("tie_output", True))
    if config.get("positions", "interleaved") == "interleaved":
        state = to_halves(state, dim)
    rules = [(dst, src) for src, dst in MARIAN_KEYS if dst is not None] + [("head.weight", "lm_head.weight")]
    mapped = remap(split_projections(state), rules, where)
    bias = mapped.get("final_logits_bias")
    mapped["final_logits_bias"] = (torch.zeros(vocab, dtype=mapped["model.shared.weight"].dtype) if bias is None
                                   else bias).reshape(1, vocab)
    if not tie:  # safetensors refuses shared storage: a copy each
        mapped.update({k: mapped["model.shared.weight"].clone() for k in _EMBED_COPIES})
    dropout = config.get("dropout", 0.1)
    ffn = int(dim * config.get("mlp_ratio", 4.0))  # as the blocks size it
    hf_config: dict[str, Any] = dict(
        architectures=["MarianMTModel"], model_type="marian", vocab_size=vocab, decoder_vocab_size=vocab,
        max_position_embeddings=config["max_len"], d_model=dim, encoder_layers=config["encoder_depth"],
        decoder_layers=config["decoder_depth"], encoder_attention_heads=config["num_heads"],
        decoder_attention_heads=config["num_heads"], encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
        activation_function=ACTIVATIONS[config.get("activation", "relu")], dropout=dropout,
        # None: the native recipe's rule, `dropout` there too (Seq2Seq's)
        attention_dropout=dropout if config.get("attn_dropout") is None else config["attn_dropout"],
        activation_dropout=dropout if config.get("activation_dropout") is None else config["activation_dropout"],
        encoder_layerdrop=config.get("encoder_layerdrop", 0.0), decoder_layerdrop=config.get("decoder_layerdrop", 0.0),
        scale_embedding=bool(config.get("scale_embedding", True)), share_encoder_decoder_embeddings=True,
        tie_word_embeddings=tie, init_std=0.02, is_encoder_decoder=True, is_decoder=False, use_cache=True,
        decoder_start_token_id=start_id, eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=eos_id,
        forced_eos_token_id=forced_eos_id, dtype=str(mapped["model.shared.weight"].dtype).removeprefix("torch."))
    return hf_config, mapped
