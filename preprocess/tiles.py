"""Cutting one photo into square training tiles, and the checks that drop useless ones.

Modes (`--mode`):
    resize  the whole photo scaled to SIZE x SIZE (aspect ratio not kept), one tile
    center  shorter side scaled to SIZE, the centre square cropped, one tile
    random  `crops` random SIZE x SIZE crops at native resolution
    tile    a grid of SIZE x SIZE tiles at native resolution overlapping by `overlap`
            (a fraction of SIZE); the last row and column are aligned to the borders
random and tile first scale a photo whose shorter side is below SIZE up to SIZE.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MODES = ("resize", "center", "random", "tile")


def _scale(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS))


def _shorter_side_to(rgb: np.ndarray, size: int, only_up: bool) -> np.ndarray:
    height, width = rgb.shape[:2]
    factor = size / min(height, width)
    if only_up and factor <= 1.0:
        return rgb
    return _scale(rgb, max(size, round(height * factor)), max(size, round(width * factor)))


def _grid_starts(length: int, size: int, stride: int) -> list[int]:
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def make_tiles(
    rgb: np.ndarray,
    size: int,
    mode: str,
    rng: np.random.Generator,
    crops: int = 4,
    overlap: float = 0.25,
) -> list[np.ndarray]:
    """One uint8 photo [H, W, 3] -> a list of uint8 tiles [size, size, 3], in a fixed order."""
    if mode == "resize":
        return [_scale(rgb, size, size)]
    if mode == "center":
        rgb = _shorter_side_to(rgb, size, only_up=False)
        top = (rgb.shape[0] - size) // 2
        left = (rgb.shape[1] - size) // 2
        return [rgb[top : top + size, left : left + size]]
    rgb = _shorter_side_to(rgb, size, only_up=True)
    height, width = rgb.shape[:2]
    if mode == "random":
        tops = rng.integers(0, height - size + 1, crops)
        lefts = rng.integers(0, width - size + 1, crops)
        return [rgb[top : top + size, left : left + size] for top, left in zip(tops, lefts)]
    if mode == "tile":
        stride = max(1, round(size * (1.0 - overlap)))
        return [
            rgb[top : top + size, left : left + size]
            for top in _grid_starts(height, size, stride)
            for left in _grid_starts(width, size, stride)
        ]
    raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")


def luma_std(rgb: np.ndarray) -> float:
    """Standard deviation of Rec. 601 luma (0..255) over a tile: how much structure it has."""
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return float(luma.std())
