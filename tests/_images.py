"""Image files for the bad-input tests, made on the fly."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def corrupt_pixels_png() -> bytes:
    """A PNG whose header and end chunk are intact but whose compressed pixels are garbled:
    only decoding can tell (PIL: "broken data stream")."""
    ramp = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))  # compressible, so not stored raw
    buffer = io.BytesIO()
    Image.fromarray(np.stack([ramp, ramp.T, ramp // 2], axis=-1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = data.find(b"IDAT") + 20
    data[start : start + 40] = b"\x00" * 40
    return bytes(data)
