"""Import min-dalle checkpoints (kuprel/min-dalle, a PyTorch port of Boris Dayma's dalle-mini).

`vqgan/detoker.pt` is `VQGanDetokenizer`: the decoder half of dalle-mini's f16/16384 VQGAN, with
taming's parameter names under `decoder.`, the codebook as a bare `embedding` and min-dalle's
default GroupNorm eps (1e-5, not taming's 1e-6). Its network works in [0, 1] (min-dalle clips the
decoder output to [0, 1] directly). Dimensions come from the tensors. Pure: state dict in,
`VQGAN` constructor config + state dict out.
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from mmkit.weights.keymap import remap
from mmkit.weights.native import WeightsError

MIN_DALLE_VQGAN_KEYS = [
    ("embedding.weight", "quantize.embedding.weight"),
    ("post_quant_conv.{p}", "post_quant_conv.{p}"),
    ("decoder.{rest}", "decoder.{rest}"),
]
MIN_DALLE_GROUPNORM_EPS = 1e-5  # torch's default, which min-dalle's nn.GroupNorm(32, n) keeps


def vqgan_config_from_min_dalle(state: dict[str, Tensor], source: str) -> dict[str, Any]:
    """`VQGAN` constructor arguments read off the detokenizer's tensor shapes."""
    try:
        codebook_size, code_dim = state["embedding.weight"].shape
        z_channels = state["decoder.conv_in.weight"].shape[1]
        levels = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"decoder\.up\.(\d+)\.", k)))
        blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"decoder\.up\.0\.block\.(\d+)\.", k)))
        widths = [state[f"decoder.up.{lvl}.block.0.conv2.weight"].shape[0] for lvl in range(levels)]
    except (KeyError, ValueError) as e:
        raise WeightsError(f"{source}: not a min-dalle VQGanDetokenizer state dict ({type(e).__name__}: {e})") from None
    ch = widths[0]
    if any(w % ch for w in widths):
        raise WeightsError(f"{source}: level widths {widths} are not multiples of the first")
    return {
        "in_channels": int(state["decoder.conv_out.weight"].shape[0]), "ch": int(ch),
        "ch_mult": [int(w // ch) for w in widths], "num_res_blocks": int(blocks - 1),
        "attn_levels": [lvl for lvl in range(levels) if f"decoder.up.{lvl}.attn.0.q.weight" in state],
        "z_channels": int(z_channels), "codebook_size": int(codebook_size), "code_dim": int(code_dim),
        "norm_eps": MIN_DALLE_GROUPNORM_EPS, "value_range": "unit", "has_encoder": False,
    }


def vqgan_from_min_dalle(state: dict[str, Tensor], source: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(VQGAN config, VQGAN state dict) from min-dalle's `detoker.pt` state dict."""
    return vqgan_config_from_min_dalle(state, source), remap(state, MIN_DALLE_VQGAN_KEYS, source)


# min-dalle's DalleBartEncoder / DalleBartDecoder (q/k/v projections are merged into mmkit's fused
# qkv, or q + kv for cross-attention, by `_merge_attention` before the table applies).
_SUBLAYER_KEYS = [
    ("layers.{i}.pre_self_attn_layer_norm.{p}", "blocks.{i}.norm1.{p}"),
    ("layers.{i}.self_attn.qkv.weight", "blocks.{i}.attn.qkv.weight"),
    ("layers.{i}.self_attn.out_proj.weight", "blocks.{i}.attn.proj.weight"),
    ("layers.{i}.self_attn_layer_norm.{p}", "blocks.{i}.norm1_post.{p}"),
    ("layers.{i}.pre_encoder_attn_layer_norm.{p}", "blocks.{i}.norm_cross.{p}"),
    ("layers.{i}.encoder_attn.q_proj.weight", "blocks.{i}.cross_attn.q.weight"),
    ("layers.{i}.encoder_attn.kv.weight", "blocks.{i}.cross_attn.kv.weight"),
    ("layers.{i}.encoder_attn.out_proj.weight", "blocks.{i}.cross_attn.proj.weight"),
    ("layers.{i}.encoder_attn_layer_norm.{p}", "blocks.{i}.norm_cross_post.{p}"),
    ("layers.{i}.glu.ln0.{p}", "blocks.{i}.mlp.norm_in.{p}"),
    ("layers.{i}.glu.fc0.weight", "blocks.{i}.mlp.fc1_g.weight"),
    ("layers.{i}.glu.fc1.weight", "blocks.{i}.mlp.fc1_x.weight"),
    ("layers.{i}.glu.ln1.{p}", "blocks.{i}.mlp.norm_mid.{p}"),
    ("layers.{i}.glu.fc2.weight", "blocks.{i}.mlp.fc2.weight"),
    ("final_ln.{p}", "norm.{p}"),
]
MIN_DALLE_ENCODER_KEYS = [("embed_tokens.weight", "text_embed.weight"), ("embed_positions.weight", "text_pos.weight"),
                          ("layernorm_embedding.{p}", "text_norm.{p}")] + \
    [(src, None if dst is None else f"encoder.{dst}") for src, dst in _SUBLAYER_KEYS]
MIN_DALLE_DECODER_KEYS = [("embed_tokens.weight", "image_embed.weight"), ("embed_positions.weight", "image_pos.weight"),
                          ("layernorm_embedding.{p}", "image_norm.{p}"), ("lm_head.weight", "head.weight")] + \
    [(src, f"decoder.{dst}") for src, dst in _SUBLAYER_KEYS]


def _merge_attention(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Named transform: self-attention q|k|v → one fused `qkv`; cross-attention k|v → `kv`."""
    out = dict(state)
    for key in [k for k in state if k.endswith("self_attn.q_proj.weight")]:
        base = key[: -len("q_proj.weight")]
        out[base + "qkv.weight"] = torch.cat([out.pop(base + n) for n in ("q_proj.weight", "k_proj.weight",
                                                                           "v_proj.weight")])
    for key in [k for k in state if k.endswith("encoder_attn.k_proj.weight")]:
        base = key[: -len("k_proj.weight")]
        out[base + "kv.weight"] = torch.cat([out.pop(base + "k_proj.weight"), out.pop(base + "v_proj.weight")])
    return out


def dalle_bart_from_min_dalle(encoder: dict[str, Tensor], decoder: dict[str, Tensor],
                              source: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(DalleBart config, state dict) from min-dalle's encoder.pt and decoder.pt state dicts."""
    try:
        text_vocab, dim = encoder["embed_tokens.weight"].shape
        image_vocab = decoder["embed_tokens.weight"].shape[0]
        glu_dim = encoder["layers.0.glu.fc0.weight"].shape[0]
        depth = 1 + max(int(m.group(1)) for k in encoder if (m := re.match(r"layers\.(\d+)\.", k)))
        dec_depth = 1 + max(int(m.group(1)) for k in decoder if (m := re.match(r"layers\.(\d+)\.", k)))
    except (KeyError, ValueError) as e:
        raise WeightsError(f"{source}: not min-dalle DalleBart encoder/decoder state dicts ({type(e).__name__}: {e})") \
            from None
    if dec_depth != depth:
        raise WeightsError(f"{source}: encoder has {depth} layers, decoder {dec_depth}; mmkit's DalleBart shares one depth")
    # min-dalle hard-codes the heads (mini 16, Mega 32), not recoverable from the tensors: 64-wide heads.
    config = {"text_vocab_size": int(text_vocab), "text_len": int(encoder["embed_positions.weight"].shape[0]),
              "codebook_size": min(2**14, int(image_vocab) - 1), "image_vocab_size": int(image_vocab),
              "image_len": int(decoder["embed_positions.weight"].shape[0]), "dim": int(dim), "depth": int(depth),
              "num_heads": max(1, int(dim) // 64), "glu_dim": int(glu_dim), "norm_eps": 1e-5, "bos_id": 2**14 - 1}
    state = remap(_merge_attention(encoder), MIN_DALLE_ENCODER_KEYS, source + "/encoder.pt")
    state.update(remap(_merge_attention(decoder), MIN_DALLE_DECODER_KEYS, source + "/decoder.pt"))
    return config, state
