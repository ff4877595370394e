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
