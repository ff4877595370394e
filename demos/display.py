"""Display helpers shared by the demo tabs: small inputs (a 32-px digit, a 64-px shape) and their
overlays are shown upscaled with nearest-neighbour, so pixels stay crisp instead of a 32-px strip."""
from __future__ import annotations

from PIL import Image

MIN_DISPLAY_SIDE = 256  # pixels; smaller images are upscaled by an integer factor up to this


def for_display(image: Image.Image, min_side: int = MIN_DISPLAY_SIDE) -> Image.Image:
    """`image` upscaled by the smallest integer factor that brings its shorter side to `min_side`
    (nearest-neighbour: every source pixel becomes a visible square); larger images unchanged."""
    short = min(image.size)
    if short >= min_side or short == 0:
        return image
    factor = -(-min_side // short)  # ceil
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)
