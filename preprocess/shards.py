"""Writes a source as sharded TFRecords plus `manifest.json`, in parallel, atomically, resumably.

Layout of OUT:
    {split}-{i:05d}-of-{n:05d}.tfrecord   shard i of a split (train, val, test)
    manifest.json                          written last: its presence means OUT is complete
    .parts/                                while running: the plan, and one JSON per finished chunk

Every chunk of the source becomes one shard per split it reaches. A worker writes its shards
under temporary names and renames them only when they are complete, then records the chunk
as done in `.parts/`, so a killed run leaves no partial shard behind and a re-run does only
the chunks that are missing.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from preprocess import atomic, color, schema, sources, tiles
from preprocess.dataset import DOMAINS, MANIFEST
from preprocess.images import DEFAULT_MAX_PIXELS

PARTS = ".parts"
GROUP_SPLITS = {"trainval": ("train", "val"), "val": ("val",), "test": ("test",)}  # in report order
# Shards of about this many bytes: large enough for fast sequential reads, small enough
# that the chunks spread over the cores and a killed run loses little.
TARGET_SHARD_BYTES = 32 * 2**20
TILE_MODE_TILES_PER_IMAGE = 16  # a guess for sizing shards; photos differ


class WriteError(Exception):
    """The run cannot start or finish (OUT in the way, no usable photo)."""


@dataclasses.dataclass(frozen=True)
class Options:
    """Everything that decides the contents of the shards (recorded in the manifest)."""

    source: str = "samples"
    size: int = 64
    mode: str = "center"
    crops: int = 4
    overlap: float = 0.25
    val_fraction: float = 0.25
    min_colorfulness: float = 5.0
    min_tile_std: float = 3.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    images_per_shard: int = 0  # 0: chosen from size and mode for shards of about 32 MiB
    compression: str | None = None  # None or "GZIP"
    seed: int = 0
    # "gray": gray-only tiles (schema.py) for cyclegan's GRAY_DATA: gray photos are wanted, not
    # skipped, and colour ones are stored as their lightness; no colour truth is kept
    domain: str = "color"

    def __post_init__(self) -> None:
        if self.mode not in tiles.MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {', '.join(tiles.MODES)}")
        if self.size < 8:
            raise ValueError(f"size {self.size} is too small; use 8 or more (32, 64, 256, ...)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val fraction {self.val_fraction} must be in [0, 1)")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap {self.overlap} must be in [0, 1)")
        if self.crops < 1:
            raise ValueError(f"crops {self.crops} must be at least 1")
        if self.compression not in (None, "GZIP"):
            raise ValueError(f"compression {self.compression!r} must be none or gzip")
        if self.domain not in DOMAINS:
            raise ValueError(f"domain {self.domain!r} is not one of {', '.join(DOMAINS)}")

    def chunk_images(self) -> int:
        if self.images_per_shard:
            return self.images_per_shard
        per_image = {"random": self.crops, "tile": TILE_MODE_TILES_PER_IMAGE}.get(self.mode, 1)
        channels = 1 if self.domain == "gray" else 3
        return max(16, TARGET_SHARD_BYTES // (self.size * self.size * channels * per_image))


def split_of(source_id: str, group: str, val_fraction: float) -> str:
    """train or val by a hash of the photo's id, so all tiles of a photo share a split."""
    if group != "trainval":
        return group
    fraction = int.from_bytes(hashlib.sha1(source_id.encode()).digest()[:8], "big") / 2**64
    return "val" if fraction < val_fraction else "train"


def _gray_photo(rgb: np.ndarray, rows: int = 256) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> uint8 [H, W, 3] with three equal channels (color.gray_levels),
    a band of rows at a time: float64 of a whole 24 MP photo would be half a gigabyte."""
    if (rgb[..., :1] == rgb[..., 1:]).all():  # a gray photo already: nothing to convert
        return rgb
    gray = np.concatenate([color.gray_levels(rgb[top : top + rows]) for top in range(0, len(rgb), rows)])
    return np.repeat(gray, 3, axis=-1)


def _preview(rgb: np.ndarray, side: int = 256) -> np.ndarray:
    """A cheap downscale (by striding) so a colourfulness check costs the same for any photo."""
    step = max(1, max(rgb.shape[:2]) // side)
    return rgb[::step, ::step]


class _Histograms:
    """ab histograms per split, computed on batches of kept tiles (one TF call per batch)."""

    def __init__(self, splits: tuple[str, ...]) -> None:
        self.counts = {split: np.zeros(len(color.ab_bins()), np.int64) for split in splits}
        self.pending: dict[str, list[np.ndarray]] = {split: [] for split in splits}

    def add(self, split: str, tile: np.ndarray) -> None:
        self.pending[split].append(tile)
        if len(self.pending[split]) >= 256:
            self.flush(split)

    def flush(self, split: str) -> None:
        if self.pending[split]:
            self.counts[split] += ab_counts(self.pending[split])
            self.pending[split] = []


def ab_counts(tiles: list[np.ndarray]) -> np.ndarray:
    """Pixel counts [Q] (int64) over the in-gamut ab bins of uint8 RGB tiles, each [S, S, 3].

    One TF call for the whole list: callers gather a few hundred tiles, since a call per tile
    would cost more than the conversion itself.
    """
    ab = color.rgb_to_lab(np.stack(tiles))[..., 1:].numpy()
    return color.ab_histogram(ab)


@dataclasses.dataclass(frozen=True)
class PhotoTiles:
    """What one photo becomes: the kept tiles of its split, or why it was skipped.

    The one per-photo step of `make data`: the local writer (`write_chunk`) and the Beam
    pipeline (`preprocess/beam.py`) both call `photo_tiles`, so they keep and skip the same.
    """

    source_id: str
    label: int
    split: str | None  # None when the photo is skipped
    tiles: tuple[np.ndarray, ...] = ()  # kept uint8 tiles [size, size, 3] (DOMAIN=gray: [.., 1]), in tiling order
    skipped_file: dict | None = None  # {"source", "reason"} when the whole photo is skipped
    skipped_tiles: tuple[dict, ...] = ()  # {"source", "tile", "reason"} of its flat tiles
    converted_to_gray: str | None = None  # DOMAIN=gray: the origin of a colour photo stored as its lightness

    def examples(self) -> list[bytes]:
        """The kept tiles as serialized records of `schema`."""
        return [schema.encode(tile, self.source_id, self.label) for tile in self.tiles]


def photo_tiles(record: sources.Record, group: str, options: Options) -> PhotoTiles:
    """One photo read by `sources.read` -> its split and kept tiles, or the reason it is skipped.

    DOMAIN=gray keeps gray photos (colour ones become their lightness) and gray tiles [S, S, 1];
    colour tiles are only kept from photos at least `min_colorfulness` colourful."""

    def skipped(reason: str, flat: tuple[dict, ...] = ()) -> PhotoTiles:
        return PhotoTiles(record.source_id, record.label, None, (), {"source": record.origin, "reason": reason}, flat)

    if record.error is not None:
        return skipped(record.error)
    gray = options.domain == "gray"
    score = color.colorfulness(_preview(record.rgb))
    if not gray and score < options.min_colorfulness:
        reason = f"near-gray photo: colourfulness {score:.1f} < {options.min_colorfulness}: no colour truth"
        return skipped(reason)
    converted = record.origin if gray and score >= options.min_colorfulness else None
    split = split_of(record.source_id, group, options.val_fraction)
    rng = np.random.default_rng([options.seed, int(hashlib.sha1(record.source_id.encode()).hexdigest()[:8], 16)])
    rgb = _gray_photo(record.rgb) if gray else record.rgb
    candidates = tiles.make_tiles(rgb, options.size, options.mode, rng, options.crops, options.overlap)
    kept, flat = [], []
    for number, tile in enumerate(candidates):
        structure = tiles.luma_std(tile)
        if structure < options.min_tile_std:
            reason = f"flat tile: luma std {structure:.2f} < {options.min_tile_std}"
            flat.append({"source": record.origin, "tile": number, "reason": reason})
        else:
            kept.append(tile[..., :1] if gray else tile)
    if not kept:
        reason = f"no tile with structure: all {len(candidates)} tiles are flat"
        return skipped(reason, tuple(flat))
    return PhotoTiles(record.source_id, record.label, split, tuple(kept), skipped_tiles=tuple(flat),
                      converted_to_gray=converted)  # fmt: skip


def shard_names(chunks: Sequence[sources.Chunk]) -> dict[tuple[str, int], dict[str, str]]:
    """(group, chunk index) -> {split: shard file} for every chunk of a plan.

    A split's shards are numbered through every group that feeds it (in GROUP_SPLITS order),
    as Beam's writer numbers them: the val shards of photos hashed out of train/ and those
    of a val/ folder must not share a name when both groups have as many chunks."""
    feeding: dict[str, list[tuple[str, int]]] = {}
    for group, splits in GROUP_SPLITS.items():
        for index in sorted(chunk.index for chunk in chunks if chunk.group == group):
            for split in splits:
                feeding.setdefault(split, []).append((group, index))
    names: dict[tuple[str, int], dict[str, str]] = {}
    for split, keys in feeding.items():
        for number, key in enumerate(keys):
            names.setdefault(key, {})[split] = schema.shard_name(split, number, len(keys))
    return names


def write_chunk(chunk: sources.Chunk, options: Options, out: Path, names: dict[str, str]) -> dict:
    """Turns one chunk into its shards (`names`: {split: file}, from `shard_names`); returns the
    chunk's part of the manifest."""
    splits = GROUP_SPLITS[chunk.group]
    final = {split: out / names[split] for split in splits}
    temporary = {split: path.with_name(f".{path.name}.tmp-{os.getpid()}") for split, path in final.items()}
    tf_options = tf.io.TFRecordOptions(compression_type=options.compression or "")
    part = {
        "group": chunk.group,
        "index": chunk.index,
        "images": dict.fromkeys(splits, 0),
        "tiles": dict.fromkeys(splits, 0),
        "skipped_files": [],
        "skipped_tiles": [],
        "converted_to_gray": [],
    }
    gray = options.domain == "gray"
    histograms = _Histograms(splits)
    try:
        writers = {split: tf.io.TFRecordWriter(str(path), tf_options) for split, path in temporary.items()}
        for record in sources.read(chunk, options.max_pixels, gray=gray):
            photo = photo_tiles(record, chunk.group, options)
            part["skipped_tiles"] += photo.skipped_tiles
            if photo.skipped_file is not None:
                part["skipped_files"].append(photo.skipped_file)
                continue
            if photo.converted_to_gray:
                part["converted_to_gray"].append(photo.converted_to_gray)
            for tile, example in zip(photo.tiles, photo.examples()):
                writers[photo.split].write(example)
                if not gray:  # gray tiles have no colour to count
                    histograms.add(photo.split, tile)
            part["images"][photo.split] += 1
            part["tiles"][photo.split] += len(photo.tiles)
        for writer in writers.values():
            writer.close()
        for split in splits:
            histograms.flush(split)
        part["histogram"] = {split: counts.tolist() for split, counts in histograms.counts.items()}
        for split in splits:
            os.replace(temporary[split], final[split])
        _write_json(out / PARTS / f"{chunk.group}-{chunk.index:05d}.json", part)
        return part
    finally:
        for path in temporary.values():
            path.unlink(missing_ok=True)


def _write_json(path: Path, value: dict) -> None:
    atomic.write_text(path, json.dumps(value, indent=1))


def _init_worker() -> None:
    # Each worker is one of the parallel streams: TF's own thread pools would oversubscribe.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def _clear(out: Path) -> None:
    """Removes what earlier runs wrote into OUT, and nothing else."""
    for path in out.glob("*.tfrecord"):
        path.unlink()
    for path in out.glob(".*.tmp-*"):
        path.unlink()
    (out / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(out / PARTS, ignore_errors=True)


def _with_defaults(saved: dict | None) -> dict | None:
    """Saved options with the defaults of options added since (`domain`): shards made before
    an option existed were made as its default makes them."""
    if saved is None:
        return None
    return {**{field.name: field.default for field in dataclasses.fields(Options)}, **saved}


def _prepare_out(out: Path, options: Options, overwrite: bool) -> dict | None:
    """Returns the existing manifest when OUT is already complete for these options."""
    settings = dataclasses.asdict(options)
    if overwrite:
        _clear(out)
    elif (out / MANIFEST).exists():
        manifest = json.loads((out / MANIFEST).read_text())
        if _with_defaults(manifest.get("options")) == settings:
            return manifest
        raise WriteError(f"{out} already holds shards made with other options; add --overwrite to replace them")
    elif (out / PARTS / "plan.json").exists():
        if _with_defaults(json.loads((out / PARTS / "plan.json").read_text())) != settings:
            raise WriteError(
                f"{out} holds an unfinished run with other options; re-run with those options to "
                "finish it, or add --overwrite to start again"
            )
    elif any(out.glob("*.tfrecord")):
        raise WriteError(f"{out} holds .tfrecord files without a manifest; add --overwrite to replace them")
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    for path in out.glob(".*.tmp-*"):  # temporaries of a killed run
        path.unlink()
    _write_json(out / PARTS / "plan.json", settings)
    return None


def write(options: Options, out: str | Path, workers: int = 0, overwrite: bool = False,
          tfds_dir: str | None = None, log=sys.stderr) -> dict:  # fmt: skip
    """Runs the whole job; returns the manifest. `workers` 0 means one per core."""
    out = Path(out)
    done = _prepare_out(out, options, overwrite)
    if done is not None:
        print(f"{out} is already complete for these options: nothing to do (--overwrite rebuilds it)", file=log)
        return done
    started = time.perf_counter()
    plan = sources.plan(options.source, options.chunk_images(), tfds_dir)
    for skipped in plan.skipped:
        print(f"skipped {skipped['source']}: {skipped['reason']}", file=log)
    parts_dir = out / PARTS
    pending = [c for c in plan.chunks if not (parts_dir / f"{c.group}-{c.index:05d}.json").exists()]
    if len(pending) < len(plan.chunks):
        print(f"resuming: {len(plan.chunks) - len(pending)} of {len(plan.chunks)} chunks already done", file=log)
    workers = min(workers or os.cpu_count() or 1, len(pending)) or 1
    names = shard_names(plan.chunks)

    progress = tqdm(total=sum(c.photos for c in pending), unit="photo", desc="make data", file=log, disable=None)

    def finished(chunk: sources.Chunk, part: dict) -> None:
        for skipped in part["skipped_files"]:
            progress.write(f"skipped {skipped['source']}: {skipped['reason']}", file=log)
        progress.update(chunk.photos)

    if workers == 1:
        for chunk in pending:
            finished(chunk, write_chunk(chunk, options, out, names[chunk.group, chunk.index]))
    else:
        context = multiprocessing.get_context("spawn")  # TF is not fork-safe
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
            futures = {pool.submit(write_chunk, chunk, options, out, names[chunk.group, chunk.index]): chunk
                       for chunk in pending}  # fmt: skip
            try:
                for future in concurrent.futures.as_completed(futures):
                    finished(futures[future], future.result())
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    progress.close()

    manifest = _manifest(options, plan, out)
    if not any(info["tiles"] for info in manifest["splits"].values()):
        raise WriteError(f"{options.source}: no usable photo; nothing was written (see the reasons above)")
    _write_json(out / MANIFEST, manifest)
    shutil.rmtree(parts_dir, ignore_errors=True)
    print(summary(manifest, out, time.perf_counter() - started), file=log)
    return manifest


def _manifest(options: Options, plan: sources.Plan, out: Path) -> dict:
    parts = [json.loads((out / PARTS / f"{c.group}-{c.index:05d}.json").read_text()) for c in plan.chunks]
    names = shard_names(plan.chunks)
    splits: dict[str, dict] = {}
    histogram = np.zeros(len(color.ab_bins()), np.int64)
    group_order = list(GROUP_SPLITS)
    for part in sorted(parts, key=lambda part: (group_order.index(part["group"]), part["index"])):
        for split in GROUP_SPLITS[part["group"]]:
            info = splits.setdefault(split, {"shards": [], "tiles": 0, "images": 0})
            info["shards"].append(names[part["group"], part["index"]][split])
            info["tiles"] += part["tiles"][split]
            info["images"] += part["images"][split]
            if split == "train":
                histogram += np.asarray(part["histogram"][split], np.int64)
    converted = [origin for part in parts for origin in part.get("converted_to_gray", [])]
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "options": dataclasses.asdict(options),
        "source": {"spec": options.source, "photos": plan.images},
        "label_names": plan.label_names,
        "splits": splits,
        "skipped_files": plan.skipped + [skip for part in parts for skip in part["skipped_files"]],
        "skipped_tiles": [skip for part in parts for skip in part["skipped_tiles"]],
        **domain_fields(options, converted, histogram),
    }


def domain_fields(options: Options, converted_to_gray: list[str], train_ab_counts: np.ndarray) -> dict:
    """The manifest's colour facts: the train split's ab prior for colour tiles; for gray-only
    ones (DOMAIN=gray) none, and which colour photos were stored as their lightness."""
    if options.domain == "gray":
        return {
            "ab_prior": None,
            "converted_to_gray": {
                "about": f"colour photos (colourfulness >= {options.min_colorfulness}) given to DOMAIN=gray, stored as "
                         "their lightness (the gray of the same CIE L); their colour is not kept",
                "photos": converted_to_gray,
            },
        }  # fmt: skip
    return {
        "ab_prior": {
            "about": "pixel counts of the train split over the in-gamut ab bins (Lab units, grid 10)",
            "bins": color.ab_bins().tolist(),
            "counts": train_ab_counts.tolist(),
        },
    }


def summary(manifest: dict, out: Path, seconds: float) -> str:
    """The closing lines a person reads: what was written and what was skipped, and why."""
    splits = manifest["splits"]
    tiles_total = sum(info["tiles"] for info in splits.values())
    gray = manifest["options"].get("domain") == "gray"
    lines = [
        f"wrote {tiles_total:,} {'gray-only ' if gray else ''}tiles of {manifest['options']['size']} px from "
        f"{sum(info['images'] for info in splits.values()):,} photos into {out} in {seconds:.1f} s"
    ]
    for split, info in splits.items():
        lines.append(f"  {split:5s} {info['tiles']:>9,} tiles  {info['images']:>7,} photos  {len(info['shards'])} shards")
    kinds = Counter(skip["reason"].split(":")[0] for skip in manifest["skipped_files"])
    if kinds:
        detail = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
        lines.append(f"skipped {sum(kinds.values())} files: {detail} (reasons in manifest.json)")
    if manifest["skipped_tiles"]:
        lines.append(f"skipped {len(manifest['skipped_tiles']):,} flat tiles")
    converted = (manifest.get("converted_to_gray") or {}).get("photos")
    if converted:
        lines.append(f"{len(converted):,} colour photo{'s' if len(converted) > 1 else ''} among them stored as "
                     f"lightness, without colour (DOMAIN=gray; listed in manifest.json)")  # fmt: skip
    return "\n".join(lines)
