"""Fixtures for mmkit.data tests: folders of good and deliberately broken image files.

Every file is generated in tmp_path, so the tests need no network and no assets.
Expected pixel values are documented next to each generated file.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import _images
import numpy as np
import pytest
from PIL import Image

def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@pytest.fixture
def bomb_png() -> bytes:
    """A valid PNG signature and header claiming 100,000 x 100,000 pixels, and no pixel data."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b"")


@pytest.fixture
def corrupt_pixels_png() -> bytes:
    """A PNG whose header and end chunk are intact but whose compressed pixels are garbled."""
    return _images.corrupt_pixels_png()


@pytest.fixture
def good_files(tmp_path: Path) -> dict[str, Path]:
    """Readable files, one per colour mode that load_image must convert.

    - rgb.jpg: 32x24 of (200, 30, 60); rgb.png: 16x12 random, saved losslessly.
    - cmyk.jpg: pure red ink (C=0, M=255, Y=255, K=0) -> about (255, 0, 0).
    - gray16.png: one row [0, 32768, 65535] -> 0, 128, 255; gray16_flat.png: all 32768
      -> 128 (the nominal 16-bit range, not the image's own min..max).
    - palette.gif: frame 1 red, right half transparent; frame 2 all blue.
    - rgba.png: 4x4, left half opaque blue, right half transparent green -> white.
    - exif6.jpg: stored 40x20 with a red 8x8 block at top-left, EXIF orientation 6
      ("rotate 90 degrees clockwise"): displayed 20x40, red block at top-right.
    """
    folder = tmp_path / "good"
    folder.mkdir()
    Image.new("RGB", (32, 24), (200, 30, 60)).save(folder / "rgb.jpg", quality=95)
    Image.fromarray(_random_rgb(seed=0)).save(folder / "rgb.png")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=95)
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16)).save(folder / "gray16.png")
    Image.fromarray(np.full((2, 2), 32768, dtype=np.uint16)).save(folder / "gray16_flat.png")
    _save_gif(folder / "palette.gif")
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:, :2] = (0, 0, 255, 255)
    rgba[:, 2:] = (0, 255, 0, 0)
    Image.fromarray(rgba).save(folder / "rgba.png")
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    stored.save(folder / "exif6.jpg", quality=95, exif=exif.tobytes())
    return {path.name: path for path in folder.iterdir()}


@pytest.fixture
def bad_files(tmp_path: Path, bomb_png: bytes) -> dict[Path, str]:
    """Unreadable files, mapped to the start of the reason they must be refused with."""
    folder = tmp_path / "bad"
    folder.mkdir()
    photo = Image.fromarray(_random_rgb(seed=1, size=64))
    jpeg, png = io.BytesIO(), io.BytesIO()
    photo.save(jpeg, "JPEG")
    photo.save(png, "PNG")
    contents = {
        "garbage.jpg": (np.random.default_rng(2).bytes(2048), "not an image"),
        "truncated.jpg": (jpeg.getvalue()[: jpeg.tell() // 2], "truncated or corrupt"),
        "truncated.png": (png.getvalue()[: png.tell() // 2], "truncated or corrupt"),
        "empty.jpg": (b"", "zero-byte file"),
        "notes.png": (b"these are not pixels\n", "not an image"),
        "bomb.png": (bomb_png, "decompression bomb"),
    }
    for name, (data, _) in contents.items():
        (folder / name).write_bytes(data)
    return {folder / name: reason for name, (_, reason) in contents.items()}


def _random_rgb(seed: int, size: int = 0) -> np.ndarray:
    shape = (size, size, 3) if size else (12, 16, 3)  # (H, W, 3)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _save_gif(path: Path) -> None:
    first = Image.new("P", (8, 8), 0)
    first.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0, 0, 0] * 253)  # 0 red, 1 green, 2 blue
    first.paste(1, (4, 0, 8, 8))
    second = Image.new("P", (8, 8), 2)
    second.putpalette(first.getpalette())
    first.save(path, save_all=True, append_images=[second], transparency=1, disposal=2)


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One digits folder shared by the digits tests (writing it takes about a second)."""
    from mmkit.data import write_digits_folder

    return write_digits_folder(tmp_path_factory.mktemp("cache") / "digits", image_size=16)
