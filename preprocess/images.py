"""Load one photo as uint8 RGB, or say in one line why it cannot be used: the project's one photo loader.

User collections hold empty and half-copied files, CMYK scans, PNGs with transparency,
16-bit exports, rotated phone shots, grayscale originals and the odd decompression bomb.
`load_rgb` returns the photo as a viewer would show it, or raises `UnusableImage` with a
reason short enough for a report. Training photos (`make data`, `make evaluate`) must
have colour, so grayscale ones are refused; photos to colorize (`colorize`, the web app,
through export/images.py) are often gray, and `gray=True` takes them.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import warnings
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageMode, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's default Image.MAX_IMAGE_PIXELS
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

# `pillow_guard` sets process-wide Pillow and warnings state, so loads take turns.
_PILLOW_STATE = threading.Lock()


class UnusableImage(Exception):
    """A file that cannot become training data: `.path` names it, `.reason` says why."""

    def __init__(self, path: str, reason: str) -> None:
        # Both go to Exception so the error pickles across worker processes.
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@contextlib.contextmanager
def pillow_guard(max_pixels: int) -> Iterator[None]:
    """Hand Pillow this call's pixel limit and strict truncation handling, then restore both.

    Pillow applies its decompression-bomb check itself, wherever a format needs it: after
    the header, inside ICO and WebP containers, again when TIFF strips are allocated. It
    reads the limit from the global Image.MAX_IMAGE_PIXELS (a warning above it, an error
    above twice it), and pads truncated files with gray if anything in the process set
    LOAD_TRUNCATED_IMAGES; so both are set for the call, and the warning made an error.
    """
    with _PILLOW_STATE, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = max_pixels, False
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def load_rgb(source: str | os.PathLike | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS, *,
             name: str | None = None, gray: bool = False) -> np.ndarray:  # fmt: skip
    """The photo in `source` (a path, or a binary file such as an upload) as displayed:
    uint8 RGB [H, W, 3] in 0..255.

    EXIF orientation is applied; CMYK, YCbCr, LAB, HSV and palette images are converted;
    transparency is composited over white; 16-bit channels come back as 8 bits. With
    `gray`, gray images come back with three equal channels; without, they are refused.
    Raises UnusableImage naming `name` (default: the path, else "upload") for files that
    cannot be read, are empty, are not images, are truncated or corrupt, or have more
    than `max_pixels` pixels (judged from the header, before anything is decoded).
    """
    if isinstance(source, (str, os.PathLike)):
        name = name or os.fspath(source)
        try:
            file = open(source, "rb")
        except OSError as e:
            raise UnusableImage(name, f"cannot read: {e.strerror}") from None
    else:
        name, file = name or "upload", source
    with file:
        file.seek(0, os.SEEK_END)
        if file.tell() == 0:
            raise UnusableImage(name, "empty file")
        file.seek(0)
        try:
            with pillow_guard(max_pixels):
                img = Image.open(file)  # refuses oversized images once the header is read
                # Pillow's base mode is "L" for every one-channel mode: 1, L, LA, I, I;16, F.
                if not gray and ImageMode.getmode(img.mode).basemode == "L":
                    raise UnusableImage(name, "grayscale image: no colour truth")
                img.load()
            ImageOps.exif_transpose(img, in_place=True)
            return _to_rgb(img)
        except UnusableImage:
            raise
        except UnidentifiedImageError:
            raise UnusableImage(name, "not an image (cannot identify image file)") from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise UnusableImage(name, _too_large(e, max_pixels)) from None
        except Exception as e:
            raise UnusableImage(name, f"truncated or corrupt image data ({e})") from None


def _too_large(bomb: Exception, max_pixels: int) -> str:
    """The reason for an image Pillow refused; it refuses before handing the image over,
    so the pixel count is only in its message."""
    found = re.search(r"\((\d+) pixels\)", str(bomb))
    pixels = f"{int(found[1]):,} pixels" if found else "the image"
    return (
        f"too large: {pixels} exceeds the limit of {max_pixels:,} "
        "(decompression-bomb guard; raise --max-pixels if you trust it)"
    )


def _to_rgb(img: Image.Image) -> np.ndarray:
    """A loaded image of any mode -> uint8 RGB [H, W, 3], transparency over white."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I"):
        # Pillow's convert() would clip 16-bit values at 255 rather than scale them.
        levels = np.clip(np.round(np.asarray(img, np.float64) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(levels[..., None], 3, axis=-1)
    if "transparency" in img.info or {"A", "a"} & set(img.getbands()):
        # Transparent regions carry no colour truth; white makes them flat, so the tiler
        # drops them rather than learning colours nobody chose.
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img.convert("RGBA"))
    return np.array(img.convert("RGB"), dtype=np.uint8)
