"""Read any photo a person wants coloured as uint8 RGB, or say in one line why it cannot be read.

`preprocess.images.load_rgb` reads training photos and therefore refuses grayscale ones
(no colour truth); colorizing starts from exactly those. This loader applies the same
guards (empty files, non-images, truncated data, the decompression-bomb limit judged
from the header) and accepts every mode: gray, 16-bit gray, RGB (taken as gray by the
model), palette, transparency (over white), CMYK, with EXIF rotation applied.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from preprocess.images import IMAGE_SUFFIXES, UnusableImage, pillow_guard

DEFAULT_MAX_PIXELS = 2 * 89_478_485  # Pillow's hard limit: a person's own 100-megapixel scans pass

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES", "UnusableImage", "load_photo"]


def load_photo(source: str | os.PathLike | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS,
               name: str | None = None) -> np.ndarray:  # fmt: skip
    """The photo in `source` (a path or a binary file) as displayed: uint8 RGB [H, W, 3] in 0..255.

    Gray images come back with three equal channels. Raises UnusableImage naming `name`
    (default: the path) for files that cannot be read, are empty, are not images, are
    truncated or corrupt, or have more than `max_pixels` pixels.
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
                img.load()
            ImageOps.exif_transpose(img, in_place=True)
            return _to_rgb(img)
        except UnidentifiedImageError:
            raise UnusableImage(name, "not an image (cannot identify image file)") from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise UnusableImage(
                name, f"too large: more than {max_pixels:,} pixels (decompression-bomb guard; raise --max-pixels)"
            ) from None
        except Exception as e:
            raise UnusableImage(name, f"truncated or corrupt image data ({e})") from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    """A loaded image of any mode -> uint8 RGB [H, W, 3]."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I"):
        # Pillow's convert() would clip 16-bit values at 255 rather than scale them.
        gray = np.clip(np.round(np.asarray(img, np.float64) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if "transparency" in img.info or {"A", "a"} & set(img.getbands()):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img.convert("RGBA"))
    return np.asarray(img.convert("RGB"), dtype=np.uint8)
