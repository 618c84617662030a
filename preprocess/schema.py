"""The TFRecord schema of a shard: the one module both the writer and the reader import.

One `tf.train.Example` per tile:
    rgb        bytes   raw uint8 RGB, row-major [height, width, 3]   (colour shards)
    gray       bytes   raw uint8 gray, row-major [height, width]     (gray-only shards, DOMAIN=gray)
    height     int64
    width      int64
    source_id  bytes   which photo the tile came from (a path, a dataset index, ...)
    label      int64   class index, or NO_LABEL (-1) when the source has none
A shard folder holds one kind (its manifest's options say which `domain`), so the reader
knows which key to parse. A gray value v is the sRGB level of the neutral gray (v, v, v)
with the photo's lightness: for a gray photo its own pixels, for a colour photo given to
the gray domain round(255 * sRGB(Y)) of its luminance Y (`color.gray_levels`), whose CIE L is
the photo's L within 8-bit rounding. One byte a pixel, as a gray scan is; the reader
turns v into L with the same conversion as colour tiles (gray shards hold no a and b).

Why raw RGB and not Lab or PNG: raw uint8 RGB is the exact source pixels in 3 bytes per
pixel, and `tf.io.decode_raw` costs next to nothing. Lab would need float16 (6 bytes per
pixel, twice the disk and I/O) or a lossy 8-bit quantisation of ab; PNG saves about a third
on photos but its decode is the slowest step of the reader. RGB -> Lab is a few element-wise
ops on a whole batch (see `dataset.py`), far cheaper than a training step. GZIP is an option
for archiving.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

SCHEMA_VERSION = 1
NO_LABEL = -1

FEATURES = {
    # a record carries one of the two; shards from before gray-only ones all carry rgb
    "rgb": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "gray": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "height": tf.io.FixedLenFeature([], tf.int64),
    "width": tf.io.FixedLenFeature([], tf.int64),
    "source_id": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64, default_value=NO_LABEL),
}


def encode(pixels: np.ndarray, source_id: str, label: int = NO_LABEL) -> bytes:
    """One uint8 tile, RGB [H, W, 3] or gray [H, W, 1], -> a serialized `tf.train.Example`."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3):
        raise ValueError(f"expected an RGB tile [H, W, 3] or a gray one [H, W, 1], got shape {pixels.shape}")
    height, width, channels = pixels.shape

    def int64(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    def data(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    feature = {
        "rgb" if channels == 3 else "gray": data(pixels.tobytes()),
        "height": int64(height),
        "width": int64(width),
        "source_id": data(source_id.encode("utf-8")),
        "label": int64(label),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    # deterministic: map entries in a fixed order, so the same photos give byte-identical shards
    return example.SerializeToString(deterministic=True)


def _pixel_layout(domain: str) -> tuple[str, int]:
    """The feature that holds a tile's pixels in a shard folder of `domain`, and their channels."""
    return ("gray", 1) if domain == "gray" else ("rgb", 3)


def parse(serialized: tf.Tensor, domain: str = "color") -> dict[str, tf.Tensor]:
    """A serialized example (scalar string tensor) of a shard folder of `domain` ->
    {"rgb": uint8 [H, W, 3]} ("color") or {"gray": uint8 [H, W, 1]} ("gray"), with "source_id" and "label"."""
    example = tf.io.parse_single_example(serialized, FEATURES)
    key, channels = _pixel_layout(domain)
    shape = tf.stack([example["height"], example["width"], channels])
    pixels = tf.reshape(tf.io.decode_raw(example[key], tf.uint8), shape)
    return {key: pixels, "source_id": example["source_id"], "label": example["label"]}


def parse_batch(serialized: tf.Tensor, side: int, domain: str = "color") -> tuple[tf.Tensor, tf.Tensor]:
    """A batch of serialized examples [B] whose tiles are all side x side (a shard folder's
    tiles are) -> (uint8 pixels [B, side, side, 3], or 1 channel for "gray", labels int64 [B]):
    one parse and one decode for the whole batch, where `parse` takes one example at a time."""
    key, channels = _pixel_layout(domain)
    example = tf.io.parse_example(serialized, {key: FEATURES[key], "label": FEATURES["label"]})
    pixels = tf.reshape(tf.io.decode_raw(example[key], tf.uint8), [-1, side, side, channels])
    return pixels, example["label"]


def shard_name(split: str, index: int, count: int) -> str:
    """`train-00000-of-00004.tfrecord`: the file name of shard `index` of `count` in a split."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"
