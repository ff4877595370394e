"""Convert an `mmkit.models.Whisper` (Radford et al., "Robust Speech Recognition via Large-Scale Weak Supervision",
2022) into the config.json document and state dict of a transformers `WhisperForConditionalGeneration`: the inverse
of `from_hf_whisper.whisper_from_hf` (its key map, read backwards). A pure converter: it never imports mmkit.models.

mmkit's fused `qkv` / `kv` projections are split into transformers' q/k/v (`hf.split_projections`). Whisper's k_proj
has no bias; mmkit's fused projection has one, which is dropped (an explicit entry of the key map): a key bias adds
the same q·b to every score of a query, which softmax cancels, so the function is the same exactly. What
transformers' Whisper cannot build is refused by name before anything is written.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from mmkit.weights.from_hf_whisper import WHISPER_KEYS
from mmkit.weights.hf import refuse_inexpressible, split_projections
from mmkit.weights.keymap import remap
from mmkit.weights.native import WeightsError

# The Whisper constructor arguments this converter reads; any other (a layout a later Whisper adds) is refused by
# name rather than written as a model transformers would compute otherwise.
KNOWN_CONFIG = ("n_mels", "n_audio_ctx", "n_text_ctx", "vocab_size", "dim", "encoder_depth", "decoder_depth",
                "num_heads", "mlp_ratio", "dropout", "drop_path_rate", "alignment_heads", "attn_dropout",
                "resid_dropout", "activation_dropout", "encoder_layerdrop", "decoder_layerdrop")
# mmkit's training rates -> WhisperConfig's (`dropout` is both mmkit's `dropout` and `resid_dropout`: checked equal)
_RATES = {"attn_dropout": "attention_dropout", "activation_dropout": "activation_dropout",
          "encoder_layerdrop": "encoder_layerdrop", "decoder_layerdrop": "decoder_layerdrop"}
# The key biases of mmkit's fused projections, which Whisper's k_proj lacks: dropped (softmax cancels them)
_KEY_BIAS_RULES = [("encoder.blocks.{i}.attn.qkv.k.bias", None), ("decoder.blocks.{i}.attn.qkv.k.bias", None),
                   ("decoder.blocks.{i}.cross_attn.kv.k.bias", None)]


def check_expressible(config: dict[str, Any], state: dict[str, Tensor], where: str) -> None:
    """Refuse, by name, a Whisper that transformers' `WhisperForConditionalGeneration` cannot build.

    Raises:
        WeightsError: a constructor argument this converter does not know, stochastic depth (transformers' Whisper
            has none), an embedding dropout apart from the residual one (WhisperConfig's one `dropout` is both), or
            an untied output head (transformers ties proj_out to the token embedding).
    """
    drop_path, dropout = config.get("drop_path_rate", 0.0), config.get("dropout", 0.0)
    resid = config.get("resid_dropout", 0.0)
    unsupported = {
        f"drop_path_rate={drop_path} (stochastic depth; inference is the same without it: load the model with "
        "drop_path_rate=0 to export it)": bool(drop_path),
        f"dropout={dropout} beside resid_dropout={resid} (WhisperConfig's one dropout is both)": dropout != resid,
        "an untied output head (transformers ties proj_out to the token embedding)":
            any(k.startswith("head.") for k in state),
    }
    refuse_inexpressible(config, KNOWN_CONFIG, unsupported, where, "transformers' Whisper", "WhisperConfig")


def whisper_to_hf(config: dict[str, Any], state: dict[str, Tensor], start_id: int, eos_id: int,
                  pad_id: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """transformers' WhisperConfig document (config.json) and `WhisperForConditionalGeneration` state dict for an
    mmkit Whisper, the inverse of `from_hf_whisper.whisper_from_hf`.

    Args:
        config: the Whisper's constructor arguments (`Whisper.config`).
        state: its state dict (fp32 or another float dtype, not int8).
        start_id, eos_id, pad_id: <|startoftranscript|>, <|endoftext|> and padding (WhisperConfig's
            decoder_start_token_id, eos_token_id and bos/pad_token_id; Whisper pads with <|endoftext|>).

    Returns:
        The config (`architectures` ["WhisperForConditionalGeneration"], every field written out rather than left to
        WhisperConfig's defaults, which a later transformers may change; no suppressed tokens: those are the
        generation config's) and the state dict as `save_pretrained` writes it: the token embedding once (proj_out
        is tied to it), the encoder's sinusoids as `embed_positions.weight`, no key biases.

    Raises:
        WeightsError: what transformers' Whisper cannot build (`check_expressible`), token ids outside the
            vocabulary, or tensors the key map does not account for (names listed).
    """
    dim, vocab = config["dim"], config["vocab_size"]
    where = f"mmkit Whisper (dim {dim}, {config['encoder_depth']}+{config['decoder_depth']} layers)"
    check_expressible(config, state, where)
    ids = {"start_id": start_id, "eos_id": eos_id, "pad_id": pad_id}
    outside = [f"{k} {v}" for k, v in ids.items() if not 0 <= v < vocab]
    if outside:
        raise WeightsError(f"{where}: token ids outside the vocabulary of {vocab}: {', '.join(outside)}")
    rules = [(dst, src) for src, dst in WHISPER_KEYS if dst is not None and src.startswith("model.")]
    mapped = remap(split_projections(state), rules + _KEY_BIAS_RULES, where)
    heads, ffn = config["num_heads"], int(dim * config.get("mlp_ratio", 4.0))  # as the blocks size it
    hf_config: dict[str, Any] = dict(
        architectures=["WhisperForConditionalGeneration"], model_type="whisper", vocab_size=vocab,
        num_mel_bins=config["n_mels"], max_source_positions=config["n_audio_ctx"],
        max_target_positions=config["n_text_ctx"], d_model=dim, encoder_layers=config["encoder_depth"],
        decoder_layers=config["decoder_depth"], encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, activation_function="gelu", scale_embedding=False,
        tie_word_embeddings=True, dropout=config.get("dropout", 0.0),
        **{theirs: config.get(ours, 0.0) for ours, theirs in _RATES.items()},
        init_std=0.02, use_cache=True, is_encoder_decoder=True, use_weighted_layer_sum=False,
        apply_spec_augment=False, decoder_start_token_id=start_id, eos_token_id=eos_id, bos_token_id=eos_id,
        pad_token_id=pad_id, suppress_tokens=None, begin_suppress_tokens=None,
        dtype=str(mapped["model.decoder.embed_tokens.weight"].dtype).removeprefix("torch."))
    return hf_config, mapped
