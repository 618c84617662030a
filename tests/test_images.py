"""Tests for preprocess.images: every file is a tiny image written into tmp_path."""

from __future__ import annotations

import io
import os
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import PIL
import pytest
from PIL import Image, ImageFile

from preprocess.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, UnusableImage, _to_rgb, load_rgb

RED, BLUE = (220, 30, 40), (20, 40, 200)


def _save(path: Path, img: Image.Image, **params) -> Path:
    img.save(path, **params)
    return path


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """An RGB image [H, W] = size[::-1] of random colours, so compression cannot hide a cut."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _claim_size(png: bytes, width: int, height: int) -> bytes:
    """`png` with its IHDR rewritten to claim width x height; the pixel data stays tiny, so
    decoding it would fail as truncated rather than as too large."""
    at = png.index(b"IHDR")
    header = png[at : at + 4] + struct.pack(">II", width, height) + png[at + 12 : at + 17]
    return png[:at] + header + struct.pack(">I", zlib.crc32(header)) + png[at + 21 :]


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), RED).save(buf, "PNG")
    return buf.getvalue()


def _mode_on_disk(path: Path) -> str:
    with Image.open(path) as img:
        # Pillow 12 (the newest Apache Beam accepts, so the one `.[beam]` installs) opens a
        # YCbCr TIFF as RGB, converting as it reads; its PhotometricInterpretation tag (6)
        # still says what the file holds.
        if img.format == "TIFF" and img.tag_v2.get(262) == 6:
            return "YCbCr"
        return img.mode


def _reason(path: Path, **kwargs) -> str:
    with pytest.raises(UnusableImage) as caught:
        load_rgb(path, **kwargs)
    return caught.value.reason


def test_constants_match_pillow():
    assert DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS  # Pillow's default, untouched here
    assert IMAGE_SUFFIXES <= set(Image.registered_extensions())
    assert all(suffix == suffix.lower() for suffix in IMAGE_SUFFIXES)


def test_rgb_photo_loads_unchanged(tmp_path):
    img = _noise((5, 3))
    rgb = load_rgb(_save(tmp_path / "a.png", img))
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 5, 3)
    np.testing.assert_array_equal(rgb, np.asarray(img))


def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").touch()
    assert _reason(tmp_path / "empty.jpg") == "empty file"


def test_text_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a photo\n")
    assert _reason(tmp_path / "notes.jpg") == "not an image (cannot identify image file)"


@pytest.mark.parametrize("load_truncated_elsewhere", [False, True])
def test_truncated_jpeg(tmp_path, monkeypatch, load_truncated_elsewhere):
    # Another library in the process may have set the flag; a cut file must still fail.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated_elsewhere)
    data = _save(tmp_path / "full.jpg", _noise((64, 64))).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert _reason(tmp_path / "cut.jpg").startswith("truncated or corrupt image data")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated_elsewhere


def test_corrupt_png_data(tmp_path):
    data = bytearray(_save(tmp_path / "ok.png", _noise((32, 32))).read_bytes())
    at = data.index(b"IDAT") + 20
    data[at : at + 10] = b"\xff" * 10
    (tmp_path / "bad.png").write_bytes(bytes(data))
    assert _reason(tmp_path / "bad.png").startswith("truncated or corrupt image data")


def test_cmyk_jpeg_converts_to_rgb(tmp_path):
    # C=0 M=128 Y=255 K=64 is RGB (191, 95, 0): each channel is (255 - ink) * (255 - K) / 255.
    path = _save(tmp_path / "cmyk.jpg", Image.new("CMYK", (16, 16), (0, 128, 255, 64)), quality=95)
    assert _mode_on_disk(path) == "CMYK"
    np.testing.assert_allclose(load_rgb(path)[8, 8], (191, 95, 0), atol=4)


def test_palette_transparency_becomes_white(tmp_path):
    img = Image.new("P", (4, 2), 0)
    img.putpalette([0, 0, 0, *RED])  # index 0 black but transparent, index 1 red
    img.paste(1, (0, 0, 2, 2))
    path = _save(tmp_path / "p.png", img, transparency=0)
    assert _mode_on_disk(path) == "P"
    rgb = load_rgb(path)
    np.testing.assert_array_equal(rgb[:, :2], np.broadcast_to(RED, (2, 2, 3)))
    np.testing.assert_array_equal(rgb[:, 2:], np.full((2, 2, 3), 255))


def test_rgba_over_white(tmp_path):
    rgba = np.array([[[*RED, 255], [*BLUE, 0], [0, 0, 0, 128]]], np.uint8)
    rgb = load_rgb(_save(tmp_path / "rgba.png", Image.fromarray(rgba)))
    np.testing.assert_allclose(rgb[0], [RED, (255, 255, 255), (127, 127, 127)], atol=1)


def test_16_bit_grayscale_is_refused(tmp_path):
    path = _save(tmp_path / "g16.png", Image.fromarray(np.full((4, 4), 40000, np.uint16)))
    assert _mode_on_disk(path) == "I;16"
    assert _reason(path) == "grayscale image: no colour truth"


def test_16_bit_rgb_scales_to_8_bit(tmp_path):
    import tensorflow as tf  # Pillow cannot write 48-bit PNGs

    value16 = np.array([[[65535, 32896, 0], [1000, 257, 32767]]], np.uint16)
    (tmp_path / "rgb16.png").write_bytes(tf.io.encode_png(value16).numpy())
    rgb = load_rgb(tmp_path / "rgb16.png")
    np.testing.assert_array_equal(rgb[0, 0], (255, 128, 0))
    np.testing.assert_allclose(rgb, np.round(value16 / 257), atol=1)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), BLUE)  # stored 20 rows x 40 columns
    img.paste(RED, (0, 0, 10, 10))  # block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed after rotating 90 degrees clockwise
    rgb = load_rgb(_save(tmp_path / "rot.jpg", img, exif=exif, quality=95))
    assert rgb.shape == (40, 20, 3)
    np.testing.assert_allclose(rgb[4, 15], RED, atol=12)  # now the top-right corner
    np.testing.assert_allclose(rgb[4, 4], BLUE, atol=12)


@pytest.mark.parametrize(
    "mode, suffix",
    [("1", "png"), ("L", "png"), ("LA", "png"), ("I", "tif"), ("I;16", "png"), ("F", "tif")],
)
def test_grayscale_originals_are_refused(tmp_path, mode, suffix):
    path = _save(tmp_path / f"gray.{suffix}", _noise((8, 8)).convert("L").convert(mode))
    assert _mode_on_disk(path) == mode
    assert _reason(path) == "grayscale image: no colour truth"


def test_rgb_with_equal_channels_is_kept(tmp_path):
    gray = _noise((8, 8)).convert("L").convert("RGB")
    np.testing.assert_array_equal(load_rgb(_save(tmp_path / "g.png", gray)), np.asarray(gray))


def test_oversized_header_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_claim_size(_tiny_png(), 20_000, 20_000))
    # Decoding would report truncated data: "too large" shows the header decided.
    assert _reason(path) == (
        "too large: 400,000,000 pixels exceeds the limit of 89,478,485 "
        "(decompression-bomb guard; raise --max-pixels if you trust it)"
    )


def test_pillow_bomb_warning_becomes_the_error(tmp_path):
    # 100 pixels is between the limit and twice it, where Pillow only warns.
    path = _save(tmp_path / "a.png", _noise((10, 10)))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        reason = _reason(path, max_pixels=99)
    assert reason.startswith("too large: 100 pixels exceeds the limit of 99 ")
    assert not shown
    assert load_rgb(path, max_pixels=100).shape == (10, 10, 3)


def test_bomb_inside_a_container_is_refused(tmp_path):
    # ICO decodes its embedded PNG while opening, so only Pillow's own check sees its size.
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), RED).save(buf, "ICO", sizes=[(16, 16)])
    path = tmp_path / "bomb.ico"
    path.write_bytes(_claim_size(buf.getvalue(), 20_000, 20_000))
    assert _reason(path).startswith("too large: 400,000,000 pixels exceeds the limit of 89,478,485")


def test_limit_is_the_callers_and_global_state_is_restored(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # a stricter setting elsewhere
    filters = list(warnings.filters)
    big = tmp_path / "big.png"
    big.write_bytes(_claim_size(_tiny_png(), 20_000, 20_000))
    # TIFF checks the size a second time while loading, against the same limit.
    for name in ("a.png", "a.tif"):
        assert load_rgb(_save(tmp_path / name, _noise((40, 20)))).shape == (20, 40, 3)
    with pytest.raises(UnusableImage):
        load_rgb(big)
    assert Image.MAX_IMAGE_PIXELS == 10
    assert warnings.filters == filters


def test_unreadable_paths(tmp_path):
    assert _reason(tmp_path / "missing.jpg") == "cannot read: No such file or directory"
    assert _reason(tmp_path) == "cannot read: Is a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_unreadable_permissions(tmp_path):
    path = _save(tmp_path / "locked.png", _noise((4, 4)))
    path.chmod(0)
    assert _reason(path) == "cannot read: Permission denied"


# Apache Beam 2.77 caps Pillow below 13, so `.[beam]` installs Pillow 12, which reads an
# uncompressed YCbCr TIFF's pixels as RGBX and reports the file truncated (fixed in Pillow 13).
PILLOW_12_YCBCR = pytest.mark.xfail(
    int(PIL.__version__.split(".")[0]) < 13, strict=True,
    reason="Pillow 12 (what Apache Beam's extra installs) cannot read uncompressed YCbCr TIFFs",
)  # fmt: skip


@pytest.mark.parametrize(
    "mode, suffix",
    [pytest.param("YCbCr", "tif", marks=PILLOW_12_YCBCR), ("LAB", "tif"), ("P", "png"), ("PA", "tif")],
)
def test_other_file_modes_convert_to_rgb(tmp_path, mode, suffix):
    img = Image.new("RGB", (6, 6), RED)
    if mode.startswith("P"):
        img = img.convert("P", palette=Image.Palette.ADAPTIVE)  # holds RED exactly
    path = _save(tmp_path / f"x.{suffix}", img.convert(mode))
    assert _mode_on_disk(path) == mode
    np.testing.assert_allclose(load_rgb(path)[3, 3], RED, atol=6)


@pytest.mark.parametrize("mode", ["HSV", "RGBX"])
def test_in_memory_modes_convert_to_rgb(mode):
    # No format Pillow reads yields these modes from a file, so the conversion is tested alone.
    rgb = np.asarray(_to_rgb(Image.new("RGB", (6, 6), RED).convert(mode)))
    np.testing.assert_allclose(rgb[3, 3], RED, atol=6)  # HSV is 8-bit, so it rounds


def test_every_message_names_the_file(tmp_path):
    (tmp_path / "empty.png").touch()
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "big.png").write_bytes(_claim_size(_tiny_png(), 20_000, 20_000))
    data = _save(tmp_path / "full.jpg", _noise((64, 64))).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    _save(tmp_path / "gray.png", Image.new("L", (4, 4)))
    for name in ("empty.png", "text.png", "big.png", "cut.jpg", "gray.png", "missing.png"):
        path = str(tmp_path / name)
        with pytest.raises(UnusableImage) as caught:
            load_rgb(path)
        assert caught.value.path == path
        assert str(caught.value) == f"{path}: {caught.value.reason}"


def test_error_survives_pickling():
    error = pickle.loads(pickle.dumps(UnusableImage("a.jpg", "empty file")))
    assert (error.path, error.reason, str(error)) == ("a.jpg", "empty file", "a.jpg: empty file")
