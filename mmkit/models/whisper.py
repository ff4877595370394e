"""Whisper-style encoder-decoder speech recogniser (Radford et al., "Robust Speech Recognition
via Large-Scale Weak Supervision", 2022), laid out like openai/whisper `model.py`: a conv stem
over log-Mel frames with fixed sinusoidal positions and a pre-norm `Encoder`; a token decoder
with learned positions, a pre-norm `Decoder` with cross-attention, and a tied output projection.
Numerically identical to transformers' `WhisperForConditionalGeneration`
(import: `mmkit.weights.from_hf_whisper`).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mmkit.core import (
    Attention, Decoder, Encoder, KVCache, LearnedPositions, Mlp, output_logits,
)
from mmkit.core.blocks import layer_norm
from mmkit.core.init import init_normal_
from mmkit.stems.audio import AudioConvStem
from mmkit.weights.native import PretrainedMixin

NORM_EPS = 1e-5  # every Whisper LayerNorm (torch's default; openai/whisper and transformers agree)
# transformers' training rates (WhisperConfig's, 0 in the published checkpoints), saved in `config` only where set
TRAINING_RATES = ("attn_dropout", "resid_dropout", "activation_dropout", "encoder_layerdrop", "decoder_layerdrop")


class Whisper(PretrainedMixin, nn.Module):
    """Encoder-decoder ASR model; the decoder follows the decoding contract
    `forward(tokens, context, cache) -> logits` with `context = encode(mel)`.

    Args:
        n_mels: log-Mel bins of the input (80; 128 for large-v3).
        n_audio_ctx: encoder positions; the input has 2·n_audio_ctx frames (1500 <-> 30 s).
        n_text_ctx: longest token sequence, prompt + generated (448).
        vocab_size: token ids are in [0, vocab_size) (51865 multilingual, 51864 English-only,
            51866 large-v3).
        dim, num_heads, mlp_ratio: transformer sizes shared by encoder and decoder
            (tiny: 384 / 6 / 4.0).
        encoder_depth, decoder_depth: blocks per stack (tiny: 4 / 4).
        dropout: dropout on the summed input embeddings of both stacks (training only; WhisperConfig's
            `dropout`, which transformers also applies where `resid_dropout` does: `from_hf` sets both).
        drop_path_rate: stochastic depth in both stacks (not in Whisper; 0 keeps it exact).
        alignment_heads: [decoder layer, head] pairs whose cross-attention follows the speech, read for word
            timestamps (`mmkit.inference.word_timing`); published checkpoints name theirs (openai's
            `_ALIGNMENT_HEADS`, transformers' generation_config.json, CTranslate2's config.json). None:
            openai's default, every head of the last half of the decoder layers.
        attn_dropout: on the attention probabilities, self- and cross-attention (WhisperConfig's attention_dropout).
        resid_dropout: on each residual branch's output, after the attention's and the MLP's output projections
            (WhisperConfig's dropout there).
        activation_dropout: on the feed-forward hidden layer, after the activation (WhisperConfig's).
        encoder_layerdrop, decoder_layerdrop: LayerDrop (Fan et al., 2019): in training, each block of that stack
            is skipped with this probability, drawn as transformers' Whisper draws it (`core.stack`); cached
            decoding runs every block. The five are 0 in every published checkpoint and by default (nothing
            drawn), and are read by `from_hf`: an imported model fine-tunes as transformers' does.

    Self-attention uses a fused `qkv` with a bias on all three parts, where Whisper has no key
    bias: a key bias adds the same q·b to every score of a query, which softmax cancels, so the
    function class is identical and imported checkpoints load with that slice set to zero.
    """

    init_free_load = True  # every tensor is in its checkpoints: from_pretrained/from_converted skip the random init
    beams_share_context = True  # beams and best-of-N rows read one context row (`core.decoding.shares_context`)

    def __init__(
        self,
        n_mels: int = 80,
        n_audio_ctx: int = 1500,
        n_text_ctx: int = 448,
        vocab_size: int = 51865,
        dim: int = 384,
        encoder_depth: int = 4,
        decoder_depth: int = 4,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        drop_path_rate: float = 0.0,
        # pairs checked here, not by annotation: config_check reads a field ending in "heads" as a positive count
        alignment_heads: list[list] | None = None,
        attn_dropout: float = 0.0,
        resid_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        encoder_layerdrop: float = 0.0,
        decoder_layerdrop: float = 0.0,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        # saved only where set: configs without these fields load as before, and the exports of models that do
        # not set them (every native recipe, every inference checkpoint) stay as they were
        for name in ("alignment_heads", *TRAINING_RATES):
            if self.config[name] in (None, 0):
                del self.config[name]
        if alignment_heads is not None:  # lists, not tuples: the config round-trips through JSON unchanged
            alignment_heads = self.config["alignment_heads"] = [list(p) for p in alignment_heads]
            bad = [p for p in alignment_heads if len(p) != 2 or not all(type(x) is int for x in p)
                   or not (0 <= p[0] < decoder_depth and 0 <= p[1] < num_heads)]
            if bad or not alignment_heads:
                raise ValueError(f"alignment_heads must be [layer, head] pairs of the {decoder_depth} decoder layers "
                                 f"and {num_heads} heads (None: the default), got {bad or alignment_heads}")
        self.alignment_heads = alignment_heads
        self.n_mels, self.n_audio_ctx, self.n_text_ctx, self.vocab_size = n_mels, n_audio_ctx, n_text_ctx, vocab_size
        # exact (erf) GELU, as Whisper; at rates 0 the same modules as the core's defaults (no draws either)
        stack = dict(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, norm_layer=layer_norm(NORM_EPS),
                     mlp_layer=partial(Mlp, drop=(activation_dropout, resid_dropout)), drop_path_rate=drop_path_rate)
        self.stem = AudioConvStem(n_mels, dim, n_audio_ctx)
        self.encoder = Encoder(depth=encoder_depth, layerdrop=encoder_layerdrop, **stack)
        self.tok_embed = nn.Embedding(vocab_size, dim)
        self.head: nn.Module | None = None  # None: tied to tok_embed (core.heads.output_logits)
        self.pos_embed = LearnedPositions(n_text_ctx, dim)
        self.decoder = Decoder(depth=decoder_depth, cross_attention=True, layerdrop=decoder_layerdrop, **stack)
        for m in self.modules():  # the blocks build Attention without dropout; transformers' Whisper has both
            if isinstance(m, Attention):
                m.attn_drop, m.proj_drop.p = attn_dropout, resid_dropout
        self.drop = nn.Dropout(dropout)
        self.apply(partial(init_normal_, weighted=(nn.Linear, nn.Conv1d, nn.Embedding)))

    def encode(self, mel: Tensor, partial: bool = False) -> Tensor:
        """
        Args:
            mel: (B, n_mels, 2·n_audio_ctx) from `mmkit.audio.log_mel_spectrogram` of
                `pad_or_trim`-med audio ((B, 80, 3000) for 30 s).
            partial: also accept the first 2·k frames of such a window (k <= n_audio_ctx): the
                encoder then runs over k positions only (whisper.cpp's `audio_ctx`), an
                approximation that saves work on short audio (`DecodingOptions.audio_context`).

        Returns:
            (B, n_audio_ctx, dim) audio features ((B, k, dim) with `partial`), the `context` of `forward`.
        """
        return self.encoder(self.drop(self.stem(mel, partial)))

    def forward(self, tokens: Tensor, context: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """
        Args:
            tokens: (B, T) int64 ids; with a `cache`, only the tokens after the cached prefix.
            context: (B, n_audio_ctx, dim) `encode(mel)` output. May be None once `cache` holds
                the cross-attention keys/values (they are computed from it only once).
            cache: KV cache for incremental decoding, updated in place.

        Returns:
            (B, T, vocab_size) logits.
        """
        offset = cache.length if cache is not None else 0
        if context is None and offset == 0:
            raise ValueError("Whisper's decoder needs context=model.encode(mel) (or a filled cache)")
        # left-padded prompts of different lengths (`KVCache.padding`): each row positioned and attending as alone
        padding, mask = (cache.padding, cache.padding_mask(tokens.shape[1])) if cache is not None else (None, None)
        x = self.tok_embed(tokens) + self.pos_embed(tokens.shape[1], offset, padding)  # (B, T, dim)
        x = self.decoder(self.drop(x), context=context, mask=mask, cache=cache)
        return output_logits(x, self.tok_embed, self.head)  # (B, T, vocab_size)

    def adapt_state_dict(self, state: dict[str, Tensor], saved_config: dict[str, Any]) -> dict[str, Tensor]:
        """Load a checkpoint into shorter windows or a shorter text context (`from_pretrained(dir,
        n_audio_ctx=200)` to fine-tune on 4-s clips): the position tables keep their first rows,
        which is exact: position i means the same in both. Longer is refused for the learned text
        positions (nothing to copy) and fine for the fixed audio sinusoids (their rows are kept)."""
        state = dict(state)
        audio, text = state.get("stem.pos_embed"), state.get("pos_embed.weight")
        if audio is not None and audio.shape[0] != self.n_audio_ctx:
            table = self.stem.pos_embed.clone()
            keep = min(audio.shape[0], self.n_audio_ctx)
            table[:keep] = audio[:keep]
            state["stem.pos_embed"] = table
        if text is not None and text.shape[0] != self.n_text_ctx:
            if text.shape[0] < self.n_text_ctx:
                raise ValueError(f"n_text_ctx={self.n_text_ctx} exceeds the checkpoint's {text.shape[0]} learned "
                                 "text positions")
            state["pos_embed.weight"] = text[: self.n_text_ctx]
        return state

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "Whisper":
        """A named size (`mmkit.models.sizes.WHISPER_SIZES`: "tiny", "base.en", "large-v3", ...),
        random init, e.g. to train from scratch or to load weights into."""
        from mmkit.models.sizes import whisper_config

        return cls(**{**whisper_config(name), **overrides})

    @classmethod
    def from_hf(cls, model_or_dir: nn.Module | str | Path) -> "Whisper":
        """Import a transformers `WhisperForConditionalGeneration` instance, a local Hugging Face
        checkpoint directory (config.json + model.safetensors / pytorch_model.bin), or a Hub repo
        id such as "openai/whisper-tiny" (downloaded with huggingface_hub; needs a network or cache)."""
        from mmkit.weights.from_hf_whisper import whisper_from_hf

        return cls.from_converted(whisper_from_hf(model_or_dir))

    @classmethod
    def from_openai(cls, path: str | Path) -> "Whisper":
        """Import an openai-whisper checkpoint file (the `.pt` that `whisper.load_model` reads:
        {"dims": ..., "model_state_dict": ...}), read with torch.load(weights_only=True); eval mode."""
        from mmkit.models.sizes import WHISPER_SIZES
        from mmkit.weights.from_openai_whisper import whisper_from_openai

        return cls.from_converted(whisper_from_openai(path, WHISPER_SIZES))

    @classmethod
    def from_ctranslate2(cls, directory: str | Path) -> "Whisper":
        """Import a CTranslate2 Whisper folder (the `model.bin` faster-whisper reads; float32/16/bf16
        exports, upcast to fp32), read without ctranslate2 (`mmkit.weights.from_ctranslate2`); eval mode."""
        from mmkit.weights.from_ctranslate2 import whisper_from_ctranslate2

        return cls.from_converted(whisper_from_ctranslate2(directory))
