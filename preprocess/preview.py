"""A contact sheet of shard tiles, so a person sees what `make data` made: gray | colour pairs
(gray tiles alone for gray-only shards)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from preprocess import atomic, color, dataset


def pairs_grid(columns: list[np.ndarray], per_row: int = 4, gap: int = 4, min_side: int = 96) -> np.ndarray:
    """Lays out images side by side per example: `columns` are uint8 batches [N, H, W, 3]
    (for example gray, colorized, truth); each example becomes one cell, `per_row` cells a row.
    Tiles smaller than `min_side` are enlarged by pixel repetition, so 32 px tiles stay legible."""
    count, height, width, _ = columns[0].shape
    zoom = max(1, -(-min_side // height))
    cell = np.concatenate([np.repeat(np.repeat(c, zoom, 1), zoom, 2) for c in columns], axis=2)
    cell = np.pad(cell, ((0, 0), (gap, gap), (gap, gap), (0, 0)), constant_values=255)
    rows = -(-count // per_row)
    cell = np.concatenate([cell, np.full((rows * per_row - count, *cell.shape[1:]), 255, np.uint8)])
    grid = cell.reshape(rows, per_row, *cell.shape[1:]).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * cell.shape[1], per_row * cell.shape[2], 3)


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Writes a uint8 image under a temporary name first, so a reader never sees half a PNG."""
    with atomic.replacing(path) as temporary:
        Image.fromarray(image).save(temporary, format="PNG")


def contact_sheet(shards_dir: str | Path, path: str | Path, count: int = 16, scan: int = 4096) -> None:
    """PNG of `count` tiles spread evenly over the first `scan` tiles of the train split."""
    tiles = dataset.load(shards_dir, "train", batch_size=scan, training=False)
    batch = next(iter(tiles))
    pick = np.linspace(0, len(batch["gray"]) - 1, min(count, len(batch["gray"]))).round().astype(int)
    gray = tf.gather(batch["gray"], pick)
    gray_rgb = color.model_to_rgb(gray, tf.zeros_like(tf.concat([gray, gray], -1))).numpy()
    if "color" not in batch:  # gray-only shards (DOMAIN=gray): the gray tiles alone
        save_png(pairs_grid([gray_rgb]), path)
        return
    save_png(pairs_grid([gray_rgb, color.model_to_rgb(gray, tf.gather(batch["color"], pick)).numpy()]), path)
