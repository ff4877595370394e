"""Image helpers shared by the demo tabs. Small inputs (a 32-px digit, a 64-px shape) and their
overlays are shown upscaled with nearest-neighbour, so pixels stay crisp instead of a 32-px strip;
large or extreme-aspect inputs are shrunk, so what goes back to the browser stays small."""
from __future__ import annotations

from PIL import Image

MIN_DISPLAY_SIDE = 256  # pixels; smaller images are upscaled by an integer factor up to this
# Pixels; no displayed side exceeds this, so a display copy is at most 2048 x 2048 (12 MiB as RGB)
# whatever the input: a 30,000 x 4 strip is not zoomed to 1,920,000 x 256, an 80-megapixel photo
# goes back 2048 px wide. More than a browser panel shows.
MAX_DISPLAY_SIDE = 2048


def for_display(image: Image.Image, min_side: int = MIN_DISPLAY_SIDE,
                max_side: int = MAX_DISPLAY_SIDE) -> Image.Image:
    """`image` sized for showing: upscaled by the smallest integer factor that brings its shorter side
    to `min_side` (nearest-neighbour: every source pixel becomes a visible square) but never past
    `max_side` on its longer side; shrunk to fit `max_side` when larger; otherwise unchanged."""
    width, height = image.size
    short, long = min(image.size), max(image.size)
    if short == 0:
        return image
    if long > max_side:  # shrink, keeping the aspect (a side never below 1 px)
        scale = max_side / long
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        # reducing_gap: a cheap integer box reduction first, then the filter on a small image.
        return image.resize(size, Image.LANCZOS, reducing_gap=2.0)
    if short >= min_side:
        return image
    factor = min(-(-min_side // short), max_side // long)  # ceil, bounded by the longer side
    if factor <= 1:
        return image
    return image.resize((width * factor, height * factor), Image.NEAREST)

