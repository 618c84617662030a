"""Load one colour photo from disk as uint8 RGB, or say in one line why it cannot be used.

User collections hold empty and half-copied files, CMYK scans, PNGs with transparency,
16-bit exports, rotated phone shots, grayscale originals and the odd decompression bomb.
`load_rgb` returns the photo as a viewer would show it, or raises `UnusableImage` with a
reason short enough for the preprocessing report.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import warnings
from collections.abc import Iterator

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


def load_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The photo at `path` as displayed: uint8 RGB [H, W, 3] in 0..255.

    EXIF orientation is applied; CMYK, YCbCr, LAB, HSV and palette images are converted;
    transparency is composited over white; 16-bit channels come back as 8 bits. Raises
    UnusableImage for files that cannot be read, are empty, are not images, are truncated
    or corrupt, are grayscale, or have more than `max_pixels` pixels (judged from the
    header, before anything is decoded).
    """
    path = os.fspath(path)
    try:
        file = open(path, "rb")
    except OSError as e:
        raise UnusableImage(path, f"cannot read: {e.strerror}") from None
    with file:
        if os.fstat(file.fileno()).st_size == 0:
            raise UnusableImage(path, "empty file")
        try:
            with pillow_guard(max_pixels):
                img = Image.open(file)  # refuses oversized images once the header is read
                # Pillow's base mode is "L" for every one-channel mode: 1, L, LA, I, I;16, F.
                if ImageMode.getmode(img.mode).basemode == "L":
                    raise UnusableImage(path, "grayscale image: no colour truth")
                img.load()
            ImageOps.exif_transpose(img, in_place=True)
            return np.array(_to_rgb(img), dtype=np.uint8)
        except UnusableImage:
            raise
        except UnidentifiedImageError:
            raise UnusableImage(path, "not an image (cannot identify image file)") from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise UnusableImage(path, _too_large(e, max_pixels)) from None
        except Exception as e:
            raise UnusableImage(path, f"truncated or corrupt image data ({e})") from None


def _too_large(bomb: Exception, max_pixels: int) -> str:
    """The reason for an image Pillow refused; it refuses before handing the image over,
    so the pixel count is only in its message."""
    found = re.search(r"\((\d+) pixels\)", str(bomb))
    pixels = f"{int(found[1]):,} pixels" if found else "the image"
    return (
        f"too large: {pixels} exceeds the limit of {max_pixels:,} "
        "(decompression-bomb guard; raise --max-pixels if you trust it)"
    )


def _to_rgb(img: Image.Image) -> Image.Image:
    """A loaded colour or palette image of any mode -> RGB, transparency over white."""
    if "transparency" in img.info or {"A", "a"} & set(img.getbands()):
        # Transparent regions carry no colour truth; white makes them flat, so the tiler
        # drops them rather than learning colours nobody chose.
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")
