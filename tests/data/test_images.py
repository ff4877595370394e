"""Tests for mmkit.data.images: colour-mode conversion, refusal reasons, folder scanning.

Fixtures (good_files, bad_files, bomb_png) are generated in conftest.py.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from PIL import Image, ImageFile

from mmkit.data.images import ImageLoadError, check_image, load_image, scan_images


def pixels(path) -> np.ndarray:
    image = load_image(path)
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)  # (H, W, 3)


def test_rgb_jpeg_and_png(good_files):
    jpeg = pixels(good_files["rgb.jpg"])
    assert jpeg.shape == (24, 32, 3)
    np.testing.assert_allclose(jpeg.reshape(-1, 3).mean(0), (200, 30, 60), atol=3)
    png = np.asarray(Image.open(good_files["rgb.png"]))
    np.testing.assert_array_equal(pixels(good_files["rgb.png"]), png)


def test_cmyk_red_ink_becomes_rgb_red(good_files):
    np.testing.assert_allclose(pixels(good_files["cmyk.jpg"])[8, 8], (255, 0, 0), atol=6)


def test_16bit_gray_is_scaled_not_clipped(good_files):
    assert Image.open(good_files["gray16.png"]).mode.startswith("I")  # the case under test
    row = pixels(good_files["gray16.png"])[0]
    np.testing.assert_array_equal(row[:, 0], [0, 128, 255])
    assert (row == row[:, :1]).all()  # grey: equal channels
    assert (pixels(good_files["gray16_flat.png"]) == 128).all()


def test_float_image_in_unit_range(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(path)
    np.testing.assert_array_equal(pixels(path)[0, :, 0], [0, 128, 255])


def test_gif_first_frame_transparency_on_white(good_files):
    gif = pixels(good_files["palette.gif"])
    assert tuple(gif[0, 0]) == (255, 0, 0)  # frame 1, not frame 2's blue
    assert tuple(gif[0, 7]) == (255, 255, 255)  # transparent index -> white


def test_rgba_transparent_pixels_become_white(good_files):
    rgba = pixels(good_files["rgba.png"])
    assert tuple(rgba[0, 0]) == (0, 0, 255)
    assert tuple(rgba[0, 3]) == (255, 255, 255)


def test_premultiplied_alpha_is_undone_in_memory():
    """PIL's premultiplied modes (RGBa, La: what some image pipelines hand over in memory) composite as their
    straight-alpha twins; La was refused as "unsupported image mode" (PIL converts it only to LA)."""
    from mmkit.data.images import to_rgb

    for premultiplied, straight in [(Image.new("La", (1, 1), (64, 128)), Image.new("LA", (1, 1), (127, 128))),
                                    (Image.new("RGBa", (1, 1), (64, 32, 0, 128)),
                                     Image.new("RGBA", (1, 1), (127, 63, 0, 128)))]:
        assert to_rgb(premultiplied).getpixel((0, 0)) == to_rgb(straight).getpixel((0, 0))


def test_exif_orientation_is_applied(good_files):
    rotated = pixels(good_files["exif6.jpg"])
    assert rotated.shape == (40, 20, 3)  # stored 40 wide x 20 high
    assert rotated[3, 16, 0] > 200 and rotated[3, 16, 2] < 60  # red block now at top-right
    assert rotated[3, 3, 0] < 60 and rotated[3, 3, 2] > 200  # top-left is blue


def test_loaded_image_is_detached_from_file(good_files, tmp_path):
    path = tmp_path / "moved.png"
    path.write_bytes(good_files["rgb.png"].read_bytes())
    image = load_image(path)
    path.unlink()
    assert image.getpixel((0, 0)) is not None  # would fail on a lazily loaded image


def test_bad_files_are_refused_with_reasons(bad_files):
    for path, expected in bad_files.items():
        for check in (load_image, check_image):
            with pytest.raises(ImageLoadError) as caught:
                check(path)
            assert caught.value.reason.startswith(expected), (check.__name__, path.name, caught.value.reason)
            assert caught.value.path == str(path)


def test_corrupt_pixel_data_found_on_decode(tmp_path, corrupt_pixels_png):
    path = tmp_path / "garbled.png"
    path.write_bytes(corrupt_pixels_png)
    assert check_image(path) == (64, 64)  # the cheap check cannot see it...
    with pytest.raises(ImageLoadError, match="truncated or corrupt image data"):
        load_image(path)  # ...decoding does


def test_missing_file_reason(tmp_path):
    with pytest.raises(ImageLoadError, match="cannot read file"):
        load_image(tmp_path / "absent.png")


def test_bomb_header_refused_before_decoding(tmp_path, bomb_png):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png)
    with pytest.raises(ImageLoadError) as caught:
        check_image(path)
    assert caught.value.reason == "decompression bomb: 10000000000 pixels exceeds limit 89478485"


def test_max_pixels_refuses_real_image_without_decoding(tmp_path, monkeypatch):
    path = tmp_path / "black.png"
    Image.new("L", (200, 100)).save(path)

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageLoadError) as caught:
        load_image(path, max_pixels=19_999)
    assert caught.value.reason == "decompression bomb: 20000 pixels exceeds limit 19999"


def test_truncation_tolerance_is_refused(bad_files, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    truncated = next(path for path in bad_files if path.name == "truncated.jpg")
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        load_image(truncated)


def test_jpeg_with_appended_data_is_accepted(tmp_path, good_files):
    # Phone "motion photos" append a video after the JPEG's end marker.
    path = tmp_path / "motion.jpg"
    path.write_bytes(good_files["rgb.jpg"].read_bytes() + np.random.default_rng(3).bytes(10_000))
    assert check_image(path) == (32, 24)
    assert load_image(path).size == (32, 24)


def test_jpeg_end_marker_search_reads_a_chunk_at_a_time(tmp_path, good_files, monkeypatch):
    """Behind the tail, the end marker is searched for in chunks (a marker across a chunk boundary
    is found) and a large file with none is read within a chunk, not whole."""
    import tracemalloc

    from mmkit.data import images

    jpeg = good_files["rgb.jpg"].read_bytes()
    body, end = jpeg[:-2], jpeg[-2:]
    assert end == b"\xff\xd9"
    video = np.random.default_rng(3).bytes(10_000).replace(b"\xff\xd9", b"\x00\x00")
    (tmp_path / "motion.jpg").write_bytes(jpeg + video)
    (tmp_path / "cut.jpg").write_bytes(body + video)  # no end marker anywhere after the scan
    for chunk in (1 << 20, 2, 3, 7, 4096):
        monkeypatch.setattr(images, "_CHUNK_BYTES", chunk)
        assert check_image(tmp_path / "motion.jpg") == (32, 24)
        with pytest.raises(ImageLoadError, match="no JPEG end marker"):
            check_image(tmp_path / "cut.jpg")
    monkeypatch.setattr(images, "_CHUNK_BYTES", 1 << 20)
    with open(tmp_path / "big.jpg", "wb") as f:  # 48 MB after a JPEG without its end marker
        f.write(body)
        for _ in range(48):
            f.write(bytes(1 << 20))
    tracemalloc.start()
    with pytest.raises(ImageLoadError, match="no JPEG end marker"):
        check_image(tmp_path / "big.jpg")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20, peak  # was the whole file (48 MB)


def test_error_survives_pickling():
    error = pickle.loads(pickle.dumps(ImageLoadError("a.png", "zero-byte file")))
    assert (error.path, error.reason) == ("a.png", "zero-byte file")


def test_scan_images_filters_sorts_and_survives_symlink_loops(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    for name in ["b/deep/z.PNG", "b/a.JpEg", "a.webp", "notes.txt", "._resource.jpg", "b/c.tiff"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "b" / "deep" / "loop").symlink_to(tmp_path, target_is_directory=True)
    found = [p.relative_to(tmp_path).as_posix() for p in scan_images(tmp_path)]
    assert found == ["a.webp", "b/a.JpEg", "b/c.tiff", "b/deep/z.PNG"]
    assert [p.name for p in scan_images(tmp_path, recursive=False)] == ["a.webp"]


def test_min_side_decodes_jpeg_at_reduced_scale_keeping_the_size_needed(tmp_path):
    gradient = np.linspace(0, 255, 800 * 600 * 3).reshape(600, 800, 3).astype(np.uint8)
    Image.fromarray(gradient).save(tmp_path / "big.jpg", quality=95)
    Image.fromarray(gradient).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.jpg").size == (800, 600)
    assert load_image(tmp_path / "big.jpg", min_side=140).size == (200, 150)  # 1/4 scale, both sides >= 140
    assert load_image(tmp_path / "big.jpg", min_side=160).size == (400, 300)  # 1/4 would go below 160
    assert load_image(tmp_path / "big.png", min_side=140).size == (800, 600)  # only JPEG has DCT scaling
    full = np.asarray(load_image(tmp_path / "big.jpg").resize((200, 150), Image.BICUBIC)).astype(int)
    assert np.abs(np.asarray(load_image(tmp_path / "big.jpg", min_side=140)).astype(int) - full).mean() < 3


def test_min_side_applies_exif_orientation_after_the_reduced_decode(good_files):
    rotated = np.asarray(load_image(good_files["exif6.jpg"], min_side=10)).astype(int)
    assert rotated.shape == (20, 10, 3)  # stored 40x20, decoded at 1/2 (20x10), then turned upright
    assert rotated[1, 8, 0] > 180 and rotated[1, 8, 2] < 80  # the red block, top-right as at full size
