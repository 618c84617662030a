"""Read any photo a person wants coloured: `preprocess.images.load_rgb` with what colorizing needs.

Training photos must have colour; colorizing starts from gray ones, so `load_photo` takes
every mode (gray, 16-bit gray, RGB taken as gray by the model, palette, transparency over
white, CMYK, EXIF rotation) under a higher pixel limit: a person's own large scans.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np

from preprocess.images import IMAGE_SUFFIXES, UnusableImage, load_rgb

DEFAULT_MAX_PIXELS = 2 * 89_478_485  # Pillow's hard limit: a person's own 100-megapixel scans pass

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_SUFFIXES", "UnusableImage", "load_photo"]


def load_photo(source: str | os.PathLike | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS,
               name: str | None = None) -> np.ndarray:  # fmt: skip
    """The photo in `source` (a path or a binary file) as displayed: uint8 RGB [H, W, 3]; gray
    comes back with three equal channels. Raises UnusableImage as `load_rgb` does."""
    return load_rgb(source, max_pixels, name=name, gray=True)
