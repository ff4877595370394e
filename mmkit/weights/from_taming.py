"""Import taming-transformers VQGAN checkpoints (Esser et al., 2021; `taming.models.vqgan.VQModel`).

The YAML config gives the architecture (`model.params.ddconfig`, `embed_dim`, `n_embed`); the
checkpoint's `encoder.*`, `decoder.*`, `quant_conv`, `quantize.embedding` and `post_quant_conv`
keep their names in mmkit; the training-only `loss.*` (discriminator, LPIPS) and an EMAVQ's codebook
statistics (`quantize.embedding.cluster_size`, `embed_avg`) are named drops.
Variants mmkit's `VQGAN` does not implement (Gumbel quantizer, index remapping, double_z) are
refused by name. Pure: config + state dict in, constructor config + state dict out.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from mmkit.weights.keymap import remap
from mmkit.weights.native import WeightsError

TAMING_VQGAN_KEYS = [
    ("encoder.{rest}", "encoder.{rest}"),
    ("decoder.{rest}", "decoder.{rest}"),
    ("quant_conv.{p}", "quant_conv.{p}"),
    ("post_quant_conv.{p}", "post_quant_conv.{p}"),
    ("quantize.embedding.weight", "quantize.embedding.weight"),
    # EMAVQ's EmbeddingEMA: the running code counts and sums its training updates the codebook from (training-only)
    ("quantize.embedding.cluster_size", None),
    ("quantize.embedding.embed_avg", None),
    ("loss.{rest}", None),  # VQLPIPSWithDiscriminator: training-only
]
_TARGETS = ("taming.models.vqgan.VQModel", "taming.models.vqgan.EMAVQ")
TAMING_GROUPNORM_EPS = 1e-6  # taming's Normalize()


def vqgan_config_from_taming(doc: dict[str, Any], source: str) -> dict[str, Any]:
    """`VQGAN` constructor arguments from a taming YAML config (parsed)."""
    try:
        model = doc["model"]
        params = model["params"]
        dd = params["ddconfig"]
        target = model.get("target", _TARGETS[0])
        n_embed, embed_dim = int(params["n_embed"]), int(params["embed_dim"])
        ch, ch_mult, res = int(dd["ch"]), [int(m) for m in dd["ch_mult"]], int(dd["resolution"])
        attn_res = {int(r) for r in dd.get("attn_resolutions", [])}
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{source}: not a taming VQModel config ({type(e).__name__}: {e})") from None
    refused = {
        f"target {target!r} (mmkit imports {', '.join(_TARGETS)})": target not in _TARGETS,
        "double_z: true (taming's default; VQGAN configs set false)": bool(dd.get("double_z", True)),
        "quantizer index remapping (remap)": params.get("remap") is not None,
        "in_channels != out_ch": dd.get("in_channels", 3) != dd.get("out_ch", 3),
    }
    bad = [name for name, hit in refused.items() if hit]
    if bad:
        raise WeightsError(f"{source}: unsupported taming variant: {'; '.join(bad)}")
    return {
        "in_channels": int(dd.get("in_channels", 3)), "ch": ch, "ch_mult": ch_mult,
        "num_res_blocks": int(dd["num_res_blocks"]),
        "attn_levels": [lvl for lvl in range(len(ch_mult)) if res // 2**lvl in attn_res],
        "z_channels": int(dd["z_channels"]), "codebook_size": n_embed, "code_dim": embed_dim,
        "norm_eps": TAMING_GROUPNORM_EPS, "value_range": "signed", "has_encoder": True,
        "dropout": float(dd.get("dropout", 0.0)),
    }


def vqgan_from_taming(doc: dict[str, Any], state: dict[str, Tensor], source: str,
                      config_source: str | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(VQGAN config, VQGAN state dict) from a taming config and checkpoint state dict; errors name
    `config_source` (the YAML file; default `source`) or `source` (the checkpoint)."""
    return vqgan_config_from_taming(doc, config_source or source), remap(state, TAMING_VQGAN_KEYS, source)
