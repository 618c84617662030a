"""Reads the shards written by `python -m preprocess` as a `tf.data` pipeline of training batches.

The batch format shared by every model, loop and report:
    gray   float32 [B, H, W, 1]  L / 50 - 1, in [-1, 1]
    color  float32 [B, H, W, 2]  ab / 110, in about [-1, 1]
    label  int64   [B]           class index, or -1 where the source has no labels
"""

from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf

from preprocess import color, schema

MANIFEST = "manifest.json"


def read_manifest(shards_dir: str | Path) -> dict:
    """The manifest of a finished shard folder; a clear error when there is none."""
    path = Path(shards_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no manifest; make the shards first with `make data OUT={shards_dir}`"
        ) from None
    if manifest.get("schema_version") != schema.SCHEMA_VERSION:
        raise ValueError(
            f"{path}: schema version {manifest.get('schema_version')} is not the version this "
            f"code reads ({schema.SCHEMA_VERSION}); re-run `make data` with --overwrite"
        )
    return manifest


def shard_paths(shards_dir: str | Path, split: str) -> list[str]:
    """The shard files of one split, checked to exist."""
    manifest = read_manifest(shards_dir)
    splits = manifest["splits"]
    if split not in splits or not splits[split]["shards"]:
        available = sorted(name for name, info in splits.items() if info["shards"])
        raise ValueError(f"{shards_dir}: no split {split!r}; it has {', '.join(available) or 'no shards'}")
    paths = [str(Path(shards_dir) / name) for name in splits[split]["shards"]]
    missing = [path for path in paths if not Path(path).exists()]
    if missing:
        raise FileNotFoundError(f"{shards_dir}: shard listed in the manifest is missing: {missing[0]}")
    return paths


def to_batch(rgb: tf.Tensor, label: tf.Tensor) -> dict[str, tf.Tensor]:
    """uint8 RGB [B, H, W, 3] and labels [B] -> the batch dict above."""
    gray, ab = color.rgb_to_model(rgb)
    return {"gray": gray, "color": ab, "label": label}


def load(
    shards_dir: str | Path,
    split: str = "train",
    batch_size: int = 64,
    training: bool | None = None,
    crop_size: int | None = None,
    shuffle_buffer: int = 4096,
    seed: int | None = None,
    drop_remainder: bool | None = None,
) -> tf.data.Dataset:
    """One pass over a split as batches (see the module docstring); `.repeat()` it for more.

    training (default: split == "train") shuffles shard order and examples and applies
    random left-right flips and, with `crop_size`, random crops; evaluation takes the centre
    crop and keeps the order. Training batches drop the remainder so every step has the same
    shape; evaluation keeps every tile.
    """
    training = split == "train" if training is None else training
    drop_remainder = training if drop_remainder is None else drop_remainder
    compression = read_manifest(shards_dir)["options"].get("compression") or ""
    files = tf.data.Dataset.from_tensor_slices(shard_paths(shards_dir, split))
    if training:
        files = files.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    records = files.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=compression),
        cycle_length=tf.data.AUTOTUNE,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=not training,
    )
    if training:
        records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def prepare(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        example = schema.parse(serialized)
        rgb = example["rgb"]
        if training:
            rgb = tf.image.random_flip_left_right(rgb, seed=seed)
            if crop_size:
                rgb = tf.image.random_crop(rgb, [crop_size, crop_size, 3], seed=seed)
        elif crop_size:
            rgb = tf.image.resize_with_crop_or_pad(rgb, crop_size, crop_size)
        return rgb, example["label"]

    return (
        records.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
        .batch(batch_size, drop_remainder=drop_remainder)
        # Lab conversion on whole batches: one vectorised op instead of one per tile.
        .map(to_batch, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
