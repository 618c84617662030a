"""The TFRecord schema of a shard: the one module both the writer and the reader import.

One `tf.train.Example` per tile:
    rgb        bytes   raw uint8 RGB, row-major [height, width, 3]
    height     int64
    width      int64
    source_id  bytes   which photo the tile came from (a path, a dataset index, ...)
    label      int64   class index, or NO_LABEL (-1) when the source has none

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
    "rgb": tf.io.FixedLenFeature([], tf.string),
    "height": tf.io.FixedLenFeature([], tf.int64),
    "width": tf.io.FixedLenFeature([], tf.int64),
    "source_id": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64, default_value=NO_LABEL),
}


def encode(rgb: np.ndarray, source_id: str, label: int = NO_LABEL) -> bytes:
    """One uint8 tile [H, W, 3] -> a serialized `tf.train.Example`."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width, channels = rgb.shape
    if channels != 3:
        raise ValueError(f"expected an RGB tile [H, W, 3], got shape {rgb.shape}")

    def int64(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    def data(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    feature = {
        "rgb": data(rgb.tobytes()),
        "height": int64(height),
        "width": int64(width),
        "source_id": data(source_id.encode("utf-8")),
        "label": int64(label),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    # deterministic: map entries in a fixed order, so the same photos give byte-identical shards
    return example.SerializeToString(deterministic=True)


def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """A serialized example (scalar string tensor) -> {"rgb": uint8 [H, W, 3], "source_id", "label"}."""
    example = tf.io.parse_single_example(serialized, FEATURES)
    shape = tf.stack([example["height"], example["width"], 3])
    rgb = tf.reshape(tf.io.decode_raw(example["rgb"], tf.uint8), shape)
    return {"rgb": rgb, "source_id": example["source_id"], "label": example["label"]}


def shard_name(split: str, index: int, count: int) -> str:
    """`train-00000-of-00004.tfrecord`: the file name of shard `index` of `count` in a split."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"
