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
