"""Safe image decoding: every file becomes a fully loaded RGB PIL image or an ImageLoadError.

Follows torchvision's ``pil_loader`` and timm's dataset readers, hardened for untrusted
folders: size is checked from the header before decoding, truncated files are refused,
and colour modes (CMYK, 16-bit, float, palette, alpha) are converted explicitly.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Importing the accepted decoders registers them, so Image.open(formats=...) never falls
# back to PIL's import-every-plugin init(), possibly from several checking threads at once.
from PIL import (  # noqa: F401  (imported for their registration side effect)
    BmpImagePlugin,
    GifImagePlugin,
    JpegImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

log = logging.getLogger(__name__)

# PIL's own default limit, restated so it does not depend on whatever a caller set globally.
DEFAULT_MAX_PIXELS = 89_478_485

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)

# Only the decoders for IMAGE_EXTENSIONS (the JPEG one also opens multi-picture phone
# JPEGs as MPO). Not letting PIL try all its plugins keeps e.g. EPS, which shells out to
# Ghostscript, away from untrusted files.
_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "PPM")

# What PIL's plugins raise on malformed input; anything else is a bug and should propagate.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)

_WHITE = (255, 255, 255)
_TAIL_BYTES = 4096  # read to find end markers; allows a little padding after them
_PNG_END = b"IEND\xaeB`\x82"  # IEND chunk type + its fixed CRC; the PNG spec makes it last
_JPEG_END = b"\xff\xd9"  # EOI; byte stuffing keeps it out of entropy-coded data


class ImageLoadError(Exception):
    """A file that cannot be decoded into an image.

    Attributes:
        path: the offending file.
        reason: short human-readable cause, one of "zero-byte file", "cannot read file: ...",
            "not an image (cannot identify image file)", "truncated or corrupt image data: ...",
            "decompression bomb: N pixels exceeds limit M", "unsupported image mode ...".
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):
        # Default exception pickling replays args=(message,) and would lose `reason`
        # when the error crosses a DataLoader worker boundary.
        return (type(self), (self.path, self.reason))


def _bomb_reason(pixels: int | str, max_pixels: int) -> str:
    return f"decompression bomb: {pixels} pixels exceeds limit {max_pixels}"


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    """Open lazily (no pixel decoding); refuse empty, non-image, oversized or cut-off files."""
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):  # a FIFO or a device: reading could block for ever
            raise ImageLoadError(path, "not a regular file (a FIFO, socket or device)")
        if status.st_size == 0:
            raise ImageLoadError(path, "zero-byte file")
        im = Image.open(path, formats=_FORMATS)
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image (cannot identify image file)") from None
    except Image.DecompressionBombError as e:
        # PIL refuses at twice its global limit before we see the size; keep its count.
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageLoadError(path, _bomb_reason(found[1] if found else "too many", max_pixels)) from None
    except Image.DecompressionBombWarning:
        # Only reachable when warnings are errors (-W error); the size is past the limit anyway.
        raise ImageLoadError(path, _bomb_reason("too many", max_pixels)) from None
    except OSError as e:
        if e.errno is not None:  # the filesystem's error (missing, permission, a folder)
            raise ImageLoadError(path, f"cannot read file: {e.strerror}") from None
        raise ImageLoadError(path, f"truncated or corrupt image data: {e}") from None
    except _DECODE_ERRORS as e:
        raise ImageLoadError(path, f"truncated or corrupt image data: {e}") from None
    try:
        width, height = im.size
        if width * height > max_pixels:
            raise ImageLoadError(path, _bomb_reason(width * height, max_pixels))
        missing = _missing_end(path, im.format)
        if missing:
            raise ImageLoadError(path, f"truncated or corrupt image data: {missing}")
    except ImageLoadError:
        im.close()
        raise
    return im


def _missing_end(path: Path, fmt: str | None) -> str | None:
    """Name the end marker a cut-off PNG or JPEG lacks, reading the file's tail (and, for a JPEG
    without the marker there, the rest a chunk at a time: memory stays bounded on any file).

    Interrupted copies and downloads are the common corruption; PIL would decode such a
    PNG without complaint when only the end chunk is gone.
    """
    if fmt not in ("PNG", "JPEG", "MPO"):
        return None  # other formats have no mandatory end marker worth the read
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - _TAIL_BYTES))
            tail = f.read()
            if fmt == "PNG":
                return None if _PNG_END in tail else "no PNG end chunk"
            if _JPEG_END in tail:
                return None
            # Data appended after the JPEG (phone "motion photos" carry a video) pushes
            # the end marker out of the tail: look for it after the first scan header.
            scan = _jpeg_scan_start(f)
            return None if scan >= 0 and _find_after(f, _JPEG_END, scan) else "no JPEG end marker"
    except OSError as e:
        raise ImageLoadError(path, f"cannot read file: {e.strerror}") from None


_CHUNK_BYTES = 1 << 20  # what a search through a file holds at a time


def _jpeg_scan_start(f: BinaryIO) -> int:
    """Offset of the first start-of-scan marker, walking segment lengths (4 bytes read per segment)
    so that an EXIF thumbnail (a whole JPEG inside APP1) is not mistaken for the image; -1: none."""
    pos = 2  # after SOI
    while True:
        f.seek(pos)
        head = f.read(4)
        if len(head) < 4 or head[0] != 0xFF:
            return -1
        if head[1] == 0xDA:
            return pos
        if head[1] == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        pos += 2 + int.from_bytes(head[2:4], "big")


def _find_after(f: BinaryIO, marker: bytes, start: int) -> bool:
    """Whether `marker` occurs in the file at or after `start`, read a chunk at a time (chunks
    overlap by len(marker) - 1 bytes, so a marker across a boundary is found)."""
    f.seek(start)
    carry = b""
    while chunk := f.read(_CHUNK_BYTES):
        if marker in carry + chunk:
            return True
        carry = chunk[-(len(marker) - 1):]
    return False


def check_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Cheap check without decoding pixels; returns ``(width, height)``.

    Reads the header, and the tail of PNG/JPEG files for their end marker. Damage in the
    middle of a file (or a truncated BMP/GIF/TIFF/WebP) only shows when decoding, where
    :func:`load_image` reports it.

    Raises:
        ImageLoadError: zero-byte, unreadable, not an image, truncated PNG/JPEG, or more
            than ``max_pixels``.
    """
    with _open_checked(Path(path), max_pixels) as im:
        return im.size


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_side: int | None = None) -> Image.Image:
    """Decode a file into a fully loaded RGB image, detached from the file.

    EXIF orientation is applied; transparency is composited onto white; 16-bit and
    float grayscale are rescaled to 8 bits; GIFs and multi-page TIFFs give their first frame.

    With `min_side`, a JPEG whose sides both exceed it is decoded straight at a reduced DCT scale
    (1/2, 1/4 or 1/8; PIL's `draft`) that keeps both sides >= `min_side`: for callers that resize
    to that size anyway (measured, decode + resize CPU time: 4 vs 15 ms for 0.3-3 megapixel
    JPEGs, 18 vs 163 ms for 12 megapixels). The pixels differ slightly from a full decode then
    resize. Decompression bombs are judged on the full size.

    Raises:
        ImageLoadError: for any file that cannot be decoded safely (see its ``reason``).
    """
    path = Path(path)
    # Truncation tolerance would hand back half-grey images as if they were data.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; mmkit refuses to decode with it")
    with _open_checked(path, max_pixels) as im:
        if min_side and im.format in ("JPEG", "MPO"):
            im.draft(None, (min_side, min_side))
        try:
            im.load()
        except _DECODE_ERRORS as e:
            raise ImageLoadError(path, f"truncated or corrupt image data: {e}") from None
        _apply_exif_orientation(im, path)
        return to_rgb(im, path)  # always a new image, so closing the file is safe


def _apply_exif_orientation(im: Image.Image, path: Path) -> None:
    try:
        # In place: the opened image is ours, and a copy of a large photo is not free.
        ImageOps.exif_transpose(im, in_place=True)
    except (*_DECODE_ERRORS, KeyError, TypeError) as e:
        # A malformed EXIF block should not cost an otherwise good image.
        log.debug("ignoring unreadable EXIF orientation in %s: %s", path, e)


def to_rgb(im: Image.Image | np.ndarray, path: str | os.PathLike = "<image>") -> Image.Image:
    """`load_image`'s colour conversion for an image already in memory: a new RGB image, with
    transparency composited onto white and 16-bit/float grayscale rescaled to 8 bits (PIL's own
    convert("RGB") would clip those to white). An HxW, HxWx1, HxWx3 or HxWx4 uint8 array (numpy's,
    OpenCV's after BGR->RGB, what HF pipelines take) is read as L, RGB or RGBA; anything else is a
    TypeError. `path` only names the image in errors."""
    if isinstance(im, np.ndarray):
        im = _from_array(im)
    elif not isinstance(im, Image.Image):
        raise TypeError(f"expected PIL images (or HxWxC uint8 arrays), got {type(im).__name__}")
    if 0 in im.size:  # a ZeroDivisionError in the resize otherwise
        raise ImageLoadError(path, f"an empty image ({im.width}x{im.height} pixels)")
    try:
        if im.mode.startswith("I") or im.mode == "F":
            return Image.fromarray(_scale_to_uint8(np.asarray(im))).convert("RGB")
        if im.has_transparency_data:  # an alpha band, or a palette/colour key marked transparent
            # also undoes premultiplied alpha (RGBa; La only through LA: PIL has no La -> RGBA)
            rgba = (im.convert("LA") if im.mode == "La" else im).convert("RGBA")
            background = Image.new("RGB", rgba.size, _WHITE)
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        # PIL's CMYK->RGB is (255-C)(255-K)/255 per channel; Adobe-inverted CMYK JPEGs
        # are already un-inverted by the decoder.
        return im.convert("RGB")
    except ValueError:  # PIL has no conversion for this mode
        raise ImageLoadError(path, f"unsupported image mode {im.mode}") from None


def _from_array(arr: np.ndarray) -> Image.Image:
    # Only uint8 HxW(xC): a float array's range (0..1 or 0..255) and a CxHxW tensor layout are guesses.
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))):
        raise TypeError(f"expected PIL images (or HxWxC uint8 arrays), got a {arr.dtype} array of shape {arr.shape}")
    return Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Rescale integer or float grayscale to 0..255 by its nominal range, never by clipping.

    Integer data in 0..65535 is treated as 16-bit (65535 → 255), so 8-bit values stored
    in mode "I" come out dark; floats in 0..1 as unit range. Anything else (negative,
    larger, or floats past 1) is stretched from its min..max.
    """
    is_float = arr.dtype.kind == "f"
    # Non-finite pixels carry no intensity; zero keeps them from poisoning the range.
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if is_float and lo >= 0 and hi <= 1:
        scaled = arr * 255.0
    elif not is_float and lo >= 0 and hi <= 65535:
        scaled = arr / 257.0  # 65535 / 257 == 255 exactly
    else:
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def scan_images(root: str | os.PathLike, recursive: bool = True, follow_links: bool = True) -> list[Path]:
    """List image files under ``root`` by extension (case-insensitive), sorted.

    Symlinked folders are followed once each (loops are cut by device/inode); names
    starting with "." are skipped, which drops macOS ``._x.jpg`` resource forks and
    ``.ipynb_checkpoints``. An entry whose type cannot be read (a symlink to itself, a
    permission error) is listed anyway, so that loading it reports why, instead of ending
    the scan. With ``follow_links=False``, symlinks (to folders or files) that lead outside
    ``root`` are left out, so a folder cannot pull in files from elsewhere.
    """
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    pending = [Path(root)]
    inside = Path(root).resolve() if not follow_links else None
    while pending:
        folder = pending.pop()
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            # Sorted so that which path reaches a twice-linked folder does not depend on
            # the filesystem's listing order.
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as e:
            log.warning("cannot list %s: %s", folder, e)
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if inside is not None and entry.is_symlink() and not _leads_inside(entry.path, inside):
                log.info("not following %s: it leads outside %s (follow_links to allow)", entry.path, root)
                continue
            try:
                is_dir = entry.is_dir()
                is_image = (not is_dir and entry.is_file()
                            and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS)
            except OSError:  # e.g. a symlink loop: listed, and loading it says why it is unreadable
                found.append(Path(entry.path))
                continue
            if is_dir:
                subfolders.append(Path(entry.path))
            elif is_image:
                found.append(Path(entry.path))
        if recursive:
            pending.extend(reversed(subfolders))  # depth-first, in name order
    return sorted(found)


def _leads_inside(path: str, root: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a loop: it leads nowhere, and loading it reports that
        return True
