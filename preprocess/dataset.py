"""Reads the shards written by `python -m preprocess`: `Shards(folder)` is the one handle on a
shard folder that training, evaluation and export ask, and its `batches` the `tf.data`
pipeline of training batches.

The batch format shared by every model, loop and report:
    gray   float32 [B, H, W, 1]  L / 50 - 1, in [-1, 1]
    color  float32 [B, H, W, 2]  ab / 110, in about [-1, 1]
    label  int64   [B]           class index, or -1 where the source has no labels
Gray-only shards (`make data DOMAIN=gray`: old scans, no colour truth) give "gray" and
"label" alone. Unpaired batches (`Shards.unpaired_batches`, cyclegan's --unpaired and
GRAY_DATA) take gray and colour from different photos, gray from disjoint halves of one
folder or from a gray-only folder, and add the colour photos' own lightness:
    color_gray  float32 [B, H, W, 1]  L / 50 - 1 of the photos in "color" (not those in "gray")
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from preprocess import color, schema

MANIFEST = "manifest.json"
# The two sides of unpaired training: the halves of a colour folder (--unpaired), and what a
# shard folder holds (make data DOMAIN=: colour photos, or gray-only ones)
DOMAINS = ("gray", "color")
READ_CYCLE = 8  # training reads this many shard files at once, interleaved


class GrayOnly(ValueError):
    """Gray-only shards (DOMAIN=gray) where colour truth is needed."""


def domain_of(source_id: tf.Tensor) -> tf.Tensor:
    """0 (gray) or 1 (color) per photo id (string tensor, any shape), from a hash of the id:
    every tile of a photo is on one side, and re-runs agree. FarmHash, not the SHA-1 that
    splits train from val (preprocess/shards.py), so the halves do not depend on that split."""
    return tf.strings.to_hash_bucket_fast(source_id, len(DOMAINS))


class Split(NamedTuple):
    files: tuple[str, ...]  # shard paths, checked to exist when the split is asked for
    tiles: int
    photos: int


class Shards:
    """A finished shard folder, opened once: its manifest read and checked here and nowhere else.

    What every stage asks of the folder: `tile_size`, `compression`, `domain` ("color", or
    "gray" for gray-only tiles), `splits` (and `split(name)`, checked), the train split's
    `ab_prior` (Zhang et al.'s rebalancing), `label_names`, the parsed `records` of a split and
    the training or evaluation `batches` of the module docstring. A missing manifest or one
    of another schema version is a clear error naming the file.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no manifest; make the shards first with `make data OUT={folder}`") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not a manifest ({error})") from None
        if manifest.get("schema_version") != schema.SCHEMA_VERSION:
            raise ValueError(
                f"{path}: schema version {manifest.get('schema_version')} is not the version this "
                f"code reads ({schema.SCHEMA_VERSION}); re-run `make data` with --overwrite"
            )
        self.manifest = manifest  # as written by preprocess/shards.py, for what has no property here
        self.tile_size = int(manifest["options"]["size"])
        self.compression = manifest["options"].get("compression") or ""
        self.domain = manifest["options"].get("domain", "color")  # shards from before DOMAIN=gray are colour
        self.splits = {
            name: Split(tuple(str(self.folder / shard) for shard in info["shards"]), int(info["tiles"]),
                        int(info.get("images", 0)))
            for name, info in manifest["splits"].items()
        }  # fmt: skip
        prior = (manifest.get("ab_prior") or {}).get("counts")
        # ab_prior: pixel counts [Q] of the train split over color.ab_bins(); None: unknown
        self.ab_prior = None if prior is None else np.asarray(prior, np.int64)
        names = manifest.get("label_names")
        self.label_names = None if names is None else tuple(names)  # label i is label_names[i]; None: no labels

    def __repr__(self) -> str:
        return f"Shards({str(self.folder)!r})"

    def require_color(self, remedy: str) -> None:
        """Raises GrayOnly, naming the folder and `remedy`, when the tiles have no colour truth."""
        if self.domain == "gray":
            raise GrayOnly(f"{self.folder} has only gray photos (DOMAIN=gray); {remedy}")

    def split(self, name: str) -> Split:
        """One split, its shard files checked to exist; an error naming the splits there are."""
        if name not in self.splits or not self.splits[name].files:
            available = sorted(split for split, info in self.splits.items() if info.files)
            raise ValueError(f"{self.folder}: no split {name!r}; it has {', '.join(available) or 'no shards'}")
        files = self.splits[name].files
        missing = [path for path in files if not Path(path).exists()]
        if missing:
            raise FileNotFoundError(f"{self.folder}: shard listed in the manifest is missing: {missing[0]}")
        return self.splits[name]

    def records(self, split: str, limit: int = 0) -> tf.data.Dataset:
        """The parsed tiles of a split in shard order (schema.parse: rgb, or gray for gray-only
        shards, source_id, label); with `limit`, that many spread evenly over the split (shards
        are often in class order)."""
        info = self.split(split)
        records = tf.data.TFRecordDataset(list(info.files), compression_type=self.compression)
        if limit:
            records = records.shard(max(1, info.tiles // limit), 0).take(limit)
        return records.map(functools.partial(schema.parse, domain=self.domain), num_parallel_calls=tf.data.AUTOTUNE)

    def batches(
        self,
        split: str = "train",
        batch_size: int = 64,
        training: bool | None = None,
        crop_size: int | None = None,
        shuffle_buffer: int = 4096,
        seed: int | None = None,
        drop_remainder: bool | None = None,
        domain: str | None = None,
        shard: tuple[int, int] = (1, 0),
        sizes: Sequence[int] = (),
        batches_per_size: int = 1,
    ) -> tf.data.Dataset:
        """One pass over a split as batches (see the module docstring); `.repeat()` it for more.

        training (default: split == "train") shuffles shard order and examples and applies
        random left-right flips and, with `crop_size`, random crops; evaluation takes the centre
        crop and keeps the order. Training batches drop the remainder so every step has the same
        shape; evaluation keeps every tile. `domain` ("gray" or "color"): only the tiles of
        the photos on that side of `domain_of`.

        shard=(count, index): one of `count` workers' part, the tiles at positions index,
        index + count, ... of the stream one worker would read, taken before decoding;
        `batch_size` is then this worker's share of the global batch. Every worker builds the
        same stream (seeded shuffles, an ordered read of READ_CYCLE shards at a time, so it
        needs `seed`) and each tile's flip and crop follow from its position in it, so the
        workers' batches of step s are the one-worker batch of step s, split without overlap.

        sizes: multi-scale training (TrainConfig.scales); batch b is resized to a side of
        sizes[(b // batches_per_size) mod n], antialiased, on its sRGB pixels (as a smaller
        photo would have been made), so the replicas that take consecutive batches for one
        step (`batches_per_size` of them) get one size.
        """
        count, index = shard
        if count > 1 and seed is None:
            raise ValueError(f"{self.folder}: shard={shard} needs a seed, or the workers' shuffles would differ")
        training = split == "train" if training is None else training
        drop_remainder = training if drop_remainder is None else drop_remainder
        files = tf.data.Dataset.from_tensor_slices(list(self.split(split).files))
        if training:
            files = files.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        records = files.interleave(
            lambda path: tf.data.TFRecordDataset(path, compression_type=self.compression),
            # fixed, not AUTOTUNE (the core count), so that workers on other machines read alike
            cycle_length=min(len(files), READ_CYCLE),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=not training or count > 1,
        )
        if domain is not None:
            side = DOMAINS.index(domain)
            source_id = {"source_id": schema.FEATURES["source_id"]}  # parses the id alone, not the pixels
            records = records.filter(lambda serialized: domain_of(tf.io.parse_single_example(serialized, source_id)
                                                                  ["source_id"]) == side)  # fmt: skip
        if training:
            records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        # (position in the stream, serialized tile); only this worker's tiles are decoded
        records = records.enumerate().shard(count, index)
        augment_seed = seed if seed is not None else int(np.random.default_rng().integers(2**31))

        # Whole batches are parsed and augmented with batched ops: per-tile maps cost more than
        # the decoding itself at 32 px (the reader is 1.3-1.7x faster, BENCHMARKS.md).
        def prepare(positions: tf.Tensor, serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            pixels, labels = schema.parse_batch(serialized, self.tile_size, self.domain)
            if training:
                # a tile's flip and crop depend on its position alone, on any worker
                draw = position_hash(augment_seed, positions)
                flip = tf.equal(tf.bitwise.bitwise_and(draw, 1), 1)
                pixels = tf.where(flip[:, None, None, None], tf.reverse(pixels, [2]), pixels)
                if crop_size:
                    pixels = random_crops(pixels, crop_size, draw)
            elif crop_size:
                pixels = tf.image.resize_with_crop_or_pad(pixels, crop_size, crop_size)
            return pixels, labels

        batched = records.batch(batch_size, drop_remainder=drop_remainder).map(
            prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)  # fmt: skip
        if sizes:
            batched = batched.enumerate().map(functools.partial(
                resize_batch, sizes=tuple(sizes), batches_per_size=batches_per_size, side=crop_size or self.tile_size))
        return (
            batched
            # Lab conversion on whole batches: one vectorised op instead of one per tile.
            .map(gray_batch if self.domain == "gray" else to_batch, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE)
        )


    def unpaired_batches(self, split: str = "train", batch_size: int = 64, gray_shards: Shards | None = None,
                         **options) -> tf.data.Dataset:  # fmt: skip
        """Endless batches whose gray comes from one half of the photos and colour from the other
        (`domain_of`), so that no photo is seen in both domains; with `gray_shards` (GRAY_DATA),
        gray from the train split of that folder and colour from all of this one. The module
        docstring's keys with color_gray; `options` as `batches`. Each side repeats on its own
        (with a fresh shuffle), since the two are not the same size; take an epoch's worth with
        `.take`."""
        self.require_color("its colour photos are the colour side of unpaired training")
        if gray_shards is None:
            gray, color = (self.batches(split, batch_size, domain=domain, **options).repeat() for domain in DOMAINS)
        else:
            gray = gray_shards.batches("train", batch_size, **options).repeat()
            color = self.batches(split, batch_size, **options).repeat()
        return tf.data.Dataset.zip(gray, color).map(
            lambda g, c: {"gray": g["gray"], "color": c["color"], "color_gray": c["gray"], "label": g["label"]})


# plain ints: a tf.constant at import would start TensorFlow's runtime before workers set its threads
_SPLITMIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def _splitmix64(value: tf.Tensor) -> tf.Tensor:
    """Steele et al.'s SplitMix64 finaliser: uint64 -> 64 well-mixed bits, element by element."""
    def shifted_xor(z: tf.Tensor, bits: int) -> tf.Tensor:
        return tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, tf.constant(bits, tf.uint64)))

    increment, first, second = (tf.constant(constant, tf.uint64) for constant in _SPLITMIX)
    z = value + increment
    z = shifted_xor(z, 30) * first
    z = shifted_xor(z, 27) * second
    return shifted_xor(z, 31)


def position_hash(seed: int, positions: tf.Tensor) -> tf.Tensor:
    """uint64 random bits [B] for the tiles at int64 `positions` of the stream: the same for a
    position on every worker, unrelated between neighbouring positions."""
    return _splitmix64(tf.bitwise.bitwise_xor(tf.cast(positions, tf.uint64), _splitmix64(tf.constant(seed, tf.uint64))))


def random_crops(pixels: tf.Tensor, crop_size: int, draw: tf.Tensor) -> tf.Tensor:
    """A crop_size square of each tile [B, side, side, C], at an offset drawn from bits 8.. and
    32.. of its `draw` (position_hash; bit 0 is the flip)."""
    span = tf.cast(tf.shape(pixels)[1] - crop_size + 1, tf.uint64)

    def offsets(bits: int) -> tf.Tensor:
        start = tf.cast(tf.bitwise.right_shift(draw, tf.constant(bits, tf.uint64)) % span, tf.int32)
        return start[:, None] + tf.range(crop_size)

    rows = tf.gather(pixels, offsets(8), axis=1, batch_dims=1)
    return tf.gather(rows, offsets(32), axis=2, batch_dims=1)


def resize_batch(index: tf.Tensor, batch: tuple[tf.Tensor, tf.Tensor], sizes: tuple[int, ...],
                 batches_per_size: int, side: int) -> tuple[tf.Tensor, tf.Tensor]:  # fmt: skip
    """Batch `index` of uint8 pixels [B, side, side, C] resized to its turn's side (Shards.batches'
    sizes). `side` is given because the parsed tiles' shape is only known when they are read."""
    pixels, label = batch

    def to_side(target: int) -> Callable[[], tf.Tensor]:
        def resized() -> tf.Tensor:
            if target == side:
                return pixels
            # as the export shrinks a photo to its working size
            small = tf.image.resize(tf.cast(pixels, tf.float32), [target, target], antialias=True)
            return tf.cast(tf.clip_by_value(tf.round(small), 0.0, 255.0), tf.uint8)

        return resized

    turn = tf.cast((index // batches_per_size) % len(sizes), tf.int32)
    return tf.switch_case(turn, [to_side(size) for size in sizes]), label


def to_batch(rgb: tf.Tensor, label: tf.Tensor) -> dict[str, tf.Tensor]:
    """uint8 RGB [B, H, W, 3] and labels [B] -> the batch dict above."""
    gray, ab = color.rgb_to_model(rgb)
    return {"gray": gray, "color": ab, "label": label}


def gray_batch(levels: tf.Tensor, label: tf.Tensor) -> dict[str, tf.Tensor]:
    """uint8 gray levels [B, H, W, 1] of gray-only shards and labels [B] -> {"gray", "label"}:
    L of the neutral gray (v, v, v), the conversion colour tiles take, so a gray photo gives
    the same "gray" from gray-only shards as from colour ones."""
    gray, _ = color.rgb_to_model(tf.repeat(levels, 3, axis=-1))
    return {"gray": gray, "label": label}


def load(shards_dir: str | Path, split: str = "train", batch_size: int = 64, **options) -> tf.data.Dataset:
    """`Shards(shards_dir).batches(split, batch_size, ...)`, for a one-off read of a folder."""
    return Shards(shards_dir).batches(split, batch_size, **options)
