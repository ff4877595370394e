"""mmkit's shared transformer core.

Parameter naming, documented once: attention `qkv` (fused self-attention) or `q` + `kv`
(cross-attention) and `proj`; MLP `fc1`/`fc2` (SwiGLU `fc1_g`/`fc1_x`/`fc2`); blocks
`norm1`/`attn`/`ls1`, `norm_cross`/`cross_attn`/`ls_cross`, `norm2`/`mlp`/`ls2`; stacks
`blocks.{i}` and a final `norm`. These are timm's names, so vision checkpoints map 1:1.
"""
from mmkit.core.attention import Attention, attention_maps, causal_mask, key_padding_mask
from mmkit.core.blocks import DropPath, LayerScale, PostNormBlock, PreNormBlock, layer_norm
from mmkit.core.cache import AttentionCache, BlockCache, KVCache, left_padded, left_padding_mask
from mmkit.core.decoding import (
    BeamSearch, Generation, GenerationOptions, Greedy, RowSampling, Sampling, check_sampling, generate,
)
from mmkit.core.filters import (
    LogitFilter, LogitNormalization, MinNewTokens, NoRepeatNGram, RepetitionGuard, RepetitionPenalty,
    SourceNoRepeatNGram, SourceRepetitionPenalty, SourceTokens, SuppressAtBegin, SuppressTokens, Temperature, TopK,
    TopP,
)
from mmkit.core.execution import compile_stacks, set_grad_checkpointing
from mmkit.core.heads import output_logits, tied_logits
from mmkit.core.mlp import Mlp, QuickGELU, SwiGLU
from mmkit.core.norms import LayerNorm, RMSNorm
from mmkit.core.positions import (
    LearnedPositions, RelativePositionBias, RotaryEmbedding, resample_positions, sinusoidal_positions,
    sinusoidal_positions_concat, sinusoidal_positions_halves,
)
from mmkit.core.stack import Decoder, Encoder, TransformerStack

__all__ = [
    "Attention", "AttentionCache", "BeamSearch", "BlockCache", "Decoder", "DropPath", "Encoder", "Generation",
    "GenerationOptions", "Greedy", "KVCache", "LayerNorm", "LayerScale", "LearnedPositions", "LogitFilter",
    "LogitNormalization", "MinNewTokens", "Mlp", "NoRepeatNGram", "PostNormBlock", "PreNormBlock", "QuickGELU",
    "RMSNorm", "RelativePositionBias", "RepetitionGuard", "RepetitionPenalty", "RotaryEmbedding", "RowSampling",
    "Sampling", "SourceNoRepeatNGram", "SourceRepetitionPenalty", "SourceTokens", "SuppressAtBegin", "SuppressTokens",
    "SwiGLU", "Temperature", "TopK", "TopP", "TransformerStack", "attention_maps", "causal_mask", "check_sampling",
    "compile_stacks", "generate", "key_padding_mask", "layer_norm", "left_padded", "left_padding_mask", "output_logits",
    "resample_positions", "set_grad_checkpointing", "sinusoidal_positions", "sinusoidal_positions_concat",
    "sinusoidal_positions_halves", "tied_logits",
]
