"""Named model sizes, one explicit table (no registry decorators, no import-time side effects).

Numbers follow timm's model names (ViT paper Table 1; DeiT for tiny/small).
"""
from __future__ import annotations

from typing import Any

_VIT_WIDTHS = {  # family: (dim, depth, num_heads)
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}

VIT_SIZES: dict[str, dict[str, Any]] = {
    f"vit_{family}_patch{patch}_{size}": dict(dim=d, depth=n, num_heads=h, patch_size=patch, image_size=size)
    for family, (d, n, h) in _VIT_WIDTHS.items()
    for patch in (16, 32)
    for size in (224, 384)
}


def vit_config(name: str) -> dict[str, Any]:
    """Constructor arguments of a named ViT; raises with the known names on a typo."""
    try:
        return dict(VIT_SIZES[name])
    except KeyError:
        known = ", ".join(sorted(VIT_SIZES))
        raise ValueError(f"unknown ViT size {name!r}; known sizes: {known}") from None


def _clip_b(patch_size: int, act_layer: str = "gelu") -> dict[str, Any]:
    # open_clip's ViT-B configs: a ViT-B image tower (heads = width / 64) and a 12-layer,
    # 512-wide text tower over CLIP's 49408-token BPE with 77 positions; 512-d joint space.
    return dict(
        visual=dict(embed_dim=512, image_size=224, patch_size=patch_size, dim=768, depth=12, num_heads=12,
                    act_layer=act_layer),
        text=dict(embed_dim=512, vocab_size=49408, max_len=77, dim=512, depth=12, num_heads=8, act_layer=act_layer),
    )


# CLIP configs named as open_clip's architectures; "-quickgelu" = OpenAI's activation.
CLIP_CONFIGS: dict[str, dict[str, Any]] = {
    "ViT-B-32": _clip_b(32),
    "ViT-B-32-quickgelu": _clip_b(32, "quick_gelu"),
    "ViT-B-16": _clip_b(16),
}


def clip_config(name: str) -> dict[str, Any]:
    """`CLIP.from_config` input of a named architecture; raises with the known names on a typo."""
    try:
        cfg = CLIP_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown CLIP config {name!r}; known: {', '.join(sorted(CLIP_CONFIGS))}") from None
    return {k: dict(v) if isinstance(v, dict) else v for k, v in cfg.items()}


# Whisper sizes (Radford et al., 2022, Table 1; openai/whisper `_MODELS`): (dim, encoder depth,
# decoder depth, heads). Multilingual vocabularies have 51865 ids (51866 from large-v3, which
# also has 128 mel bins); English-only ".en" ones 51864. Windows are 30 s: 1500 audio positions.
_WHISPER_WIDTHS = {
    "tiny": (384, 4, 4, 6),
    "base": (512, 6, 6, 8),
    "small": (768, 12, 12, 12),
    "medium": (1024, 24, 24, 16),
    "large-v2": (1280, 32, 32, 20),
    "large-v3": (1280, 32, 32, 20),
    "large-v3-turbo": (1280, 32, 4, 20),
}


def _whisper(name: str, dim: int, enc: int, dec: int, heads: int) -> dict[str, Any]:
    v3 = name.startswith("large-v3")
    vocab = 51864 if name.endswith(".en") else (51866 if v3 else 51865)
    return dict(n_mels=128 if v3 else 80, n_audio_ctx=1500, n_text_ctx=448, vocab_size=vocab, dim=dim,
                encoder_depth=enc, decoder_depth=dec, num_heads=heads)


WHISPER_SIZES: dict[str, dict[str, Any]] = {
    **{name: _whisper(name, *w) for name, w in _WHISPER_WIDTHS.items()},
    **{f"{name}.en": _whisper(f"{name}.en", *_WHISPER_WIDTHS[name]) for name in ("tiny", "base", "small", "medium")},
}


def whisper_config(name: str) -> dict[str, Any]:
    """Constructor arguments of a named Whisper size ("tiny", "base.en", "large-v3", ...)."""
    try:
        return dict(WHISPER_SIZES[name])
    except KeyError:
        raise ValueError(f"unknown Whisper size {name!r}; known sizes: {', '.join(WHISPER_SIZES)}") from None


# DALL·E-style generators (mmkit.models.DALLE): transformer sizes only, (dim, depth, num_heads);
# vocabularies, text length and code grid are the data's and the tokenizer's. The original DALL·E is
# 3,968 wide, 64 deep, 62 heads (Ramesh et al., 2021, §2.2); these are CPU-recipe sizes.
_DALLE_WIDTHS = {
    "dalle_nano": (64, 2, 2),
    "dalle_tiny": (128, 4, 4),
    "dalle_small": (256, 6, 8),
}

DALLE_SIZES: dict[str, dict[str, Any]] = {
    name: dict(dim=d, depth=n, num_heads=h, mlp_ratio=4.0) for name, (d, n, h) in _DALLE_WIDTHS.items()
}


def dalle_config(name: str) -> dict[str, Any]:
    """Transformer arguments of a named DALLE size ("dalle_tiny", ...); raises with the known names on a typo."""
    try:
        return dict(DALLE_SIZES[name])
    except KeyError:
        raise ValueError(f"unknown DALLE size {name!r}; known sizes: {', '.join(DALLE_SIZES)}") from None
