"""Where colour photos come from: `--source=SPEC`, planned into chunks that workers read.

SPEC is one of
    samples                 the colour photos scikit-image and scikit-learn ship (no network)
    folder:PATH             every JPEG, PNG, BMP, TIFF or WebP under PATH, recursively; PATH
                            may be a URL TensorFlow's file systems read (gs://; s3:// and
                            hdfs:// with tensorflow-io), where a cluster's workers find it
    cifar10:PATH            CIFAR-10 as python-pickle batches (cifar-10-batches-py) or as
                            JPEG folders PATH/{train,test}/<class>/*.jpg; labels kept
    imagefolder:PATH        one sub-folder per class, PATH/<class>/... (torchvision's layout) or
                            PATH/<split>/<class>/... (TFDS's ImageFolder); the folder names are
                            the labels, or their names in PATH/words.txt (Tiny ImageNet's)
    tfds:NAME[:SPLIT]       any TFDS image dataset; downloaded when online (SPLIT: train)

Several sources joined by " + " (or --source given several times) become one data set:
their photos side by side, each source's labels numbered after the previous ones'.

Planning happens in the main process and only lists things; decoding happens in workers,
one `Chunk` each. A chunk's `group` says which splits its photos may land in: "trainval"
photos are hashed into train or val, "test" and "val" photos keep that split.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from preprocess.images import IMAGE_SUFFIXES, UnusableImage, load_rgb
from preprocess.schema import NO_LABEL

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# The natural colour photos among the data files of scikit-image and scikit-learn; their
# other files are drawings, microscopy in gray, or test patterns.
SKIMAGE_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png",
)  # fmt: skip
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
# The everyday scenes among them, which `make demo` colorizes (the others are a space telescope
# image, a retina and a stained tissue sample).
DEMO_PHOTOS = ("skimage/astronaut.png", "skimage/chelsea.png", "skimage/coffee.png", "skimage/rocket.jpg",
               "skimage/motorcycle_left.png", "sklearn/china.jpg", "sklearn/flower.jpg")  # fmt: skip


class SourceError(Exception):
    """A source that cannot be read at all (bad spec, missing folder, offline TFDS)."""


@dataclass(frozen=True)
class Chunk:
    """A slice of a source that one worker turns into one shard per split it reaches.

    `items` depend on `reader`: (source_id, path, label) for "files", (batch file, row) for
    "cifar_pickle", and one (name, split, start, stop, data_dir) for "tfds".
    """

    reader: str
    items: tuple
    group: str  # "trainval", "val" or "test"
    index: int  # this chunk's number within its group (its shards' names: shards.shard_names)
    # Added to the labels its reader finds: the classes of the sources listed before its own.
    label_offset: int = 0

    @property
    def photos(self) -> int:
        if self.reader == "tfds":
            ((_, _, start, stop, _),) = self.items
            return stop - start
        return len(self.items)


@dataclass
class Plan:
    chunks: list[Chunk]
    images: int
    label_names: list[str] | None = None
    skipped: list[dict] = field(default_factory=list)  # {"source", "reason"} found while listing


@dataclass(frozen=True)
class Record:
    """One photo read by a worker: the pixels, or why there are none."""

    source_id: str  # stable across machines: what the train/val hash is taken of
    origin: str  # where a person finds it: a path, or a dataset and index
    label: int
    rgb: np.ndarray | None = None
    error: str | None = None


# ---------------------------------------------------------------------------------------
# Planning


# Joins several source specs into one (`--source` given several times).
SOURCE_SEPARATOR = " + "


def plan(spec: str, images_per_chunk: int, tfds_dir: str | None = None) -> Plan:
    """Lists the photos of a source spec, or of several joined by SOURCE_SEPARATOR, and groups
    them into chunks of `images_per_chunk` (a chunk never mixes sources)."""
    specs = [part.strip() for part in spec.split(SOURCE_SEPARATOR)]
    if len(specs) == 1:
        return _plan_one(spec, images_per_chunk, tfds_dir)
    if "" in specs:
        raise SourceError(f"source {spec!r}: an empty source in the list (sources are joined by {SOURCE_SEPARATOR!r})")
    return _joined([_plan_one(part, images_per_chunk, tfds_dir) for part in specs])


def _joined(plans: list[Plan]) -> Plan:
    """One plan of several sources' photos: chunks numbered on within each group, labels
    offset past the classes of the sources before (a source without labels adds none)."""
    chunks: list[Chunk] = []
    names: list[str] = []
    next_index: dict[str, int] = {}
    for part in plans:
        for chunk in part.chunks:
            index = next_index.get(chunk.group, 0)
            next_index[chunk.group] = index + 1
            chunks.append(replace(chunk, index=index, label_offset=len(names)))
        names += part.label_names or []
    return Plan(chunks, sum(part.images for part in plans), names or None,
                [skipped for part in plans for skipped in part.skipped])  # fmt: skip


def _plan_one(spec: str, images_per_chunk: int, tfds_dir: str | None) -> Plan:
    kind, _, argument = spec.partition(":")
    planners = {"samples": _plan_samples, "folder": _plan_folder, "imagefolder": _plan_imagefolder,
                "cifar10": _plan_cifar10, "tfds": _plan_tfds}  # fmt: skip
    if kind not in planners:
        raise SourceError(f"unknown source {spec!r}; valid: samples, folder:PATH, imagefolder:PATH, "
                          "cifar10:PATH, tfds:NAME[:SPLIT]")  # fmt: skip
    if kind == "samples":
        return _plan_samples(images_per_chunk)
    if not argument:
        raise SourceError(f"source {spec!r} needs a value after ':', for example {kind}:PATH")
    if kind == "tfds":
        return _plan_tfds(argument, images_per_chunk, tfds_dir)
    if "://" in argument:
        if kind != "folder":
            raise SourceError(f"{spec}: only folder: reads from a URL (gs://, ...); {kind}: needs a local path")
        return _plan_url_folder(argument.rstrip("/"), images_per_chunk)
    return planners[kind](Path(argument).expanduser(), images_per_chunk)


def _chunked(reader: str, items: list, group: str, size: int) -> list[Chunk]:
    count = math.ceil(len(items) / size)
    return [Chunk(reader, tuple(items[i * size : (i + 1) * size]), group, i) for i in range(count)]


def sample_photos() -> dict[str, Path]:
    """The sample colour photos installed here, by source id ("skimage/chelsea.png", ...)."""
    import skimage.data
    import sklearn.datasets

    folders = {
        "skimage": (Path(skimage.data.__file__).parent, SKIMAGE_PHOTOS),
        "sklearn": (Path(sklearn.datasets.__file__).parent / "images", SKLEARN_PHOTOS),
    }
    return {f"{package}/{name}": folder / name for package, (folder, names) in folders.items() for name in names
            if (folder / name).is_file()}  # fmt: skip


def _plan_samples(images_per_chunk: int) -> Plan:
    items = [(source_id, str(path), NO_LABEL) for source_id, path in sample_photos().items()]
    if not items:
        raise SourceError("samples: neither scikit-image nor scikit-learn ships its sample photos here")
    return Plan(_chunked("files", items, "trainval", images_per_chunk), len(items))


def list_images(root: Path, skipped: list[dict]) -> list[Path]:
    """Image files under root, sorted; unreadable folders are recorded in `skipped`."""

    def unreadable(error: OSError) -> None:
        skipped.append({"source": str(error.filename), "reason": f"cannot read folder: {error.strerror}"})

    found = []
    for folder, subfolders, names in os.walk(root, onerror=unreadable, followlinks=True):
        subfolders.sort()
        found += [Path(folder) / name for name in sorted(names) if Path(name).suffix.lower() in IMAGE_SUFFIXES]
    return found


def _require_folder(path: Path, spec: str) -> None:
    if not path.exists():
        raise SourceError(f"{spec}: {path} does not exist")
    if not path.is_dir():
        raise SourceError(f"{spec}: {path} is not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise SourceError(f"{spec}: {path} cannot be read (permission denied)")


def _plan_folder(root: Path, images_per_chunk: int) -> Plan:
    _require_folder(root, f"folder:{root}")
    skipped: list[dict] = []
    paths = list_images(root, skipped)
    items = [(path.relative_to(root).as_posix(), str(path), NO_LABEL) for path in paths]
    return Plan(_chunked("files", items, "trainval", images_per_chunk), len(items), skipped=skipped)


def _plan_url_folder(root: str, images_per_chunk: int) -> Plan:
    """folder:gs://bucket/photos (or s3://, hdfs://, file://): the photos in object storage,
    where the workers of a cluster runner (Dataflow, ...) read them; listed and read through
    TensorFlow's file systems (`tf.io.gfile`), in sorted order of their paths."""
    import tensorflow as tf

    try:
        if not tf.io.gfile.isdir(root):
            raise SourceError(f"folder:{root}: not found, or not a folder")
        paths = sorted(tf.io.gfile.join(folder, name) for folder, _, names in tf.io.gfile.walk(root)
                       for name in names if Path(name).suffix.lower() in IMAGE_SUFFIXES)  # fmt: skip
    except tf.errors.OpError as error:
        raise SourceError(f"folder:{root}: cannot be listed: {error.message}") from None
    items = [(path[len(root) + 1 :], path, NO_LABEL) for path in paths]
    return Plan(_chunked("files", items, "trainval", images_per_chunk), len(items))


# Sub-folders of an imagefolder source that name a split rather than a class, and the split
# group their photos go to: "train" photos are hashed into train and val like any others.
IMAGEFOLDER_SPLITS = {"train": "trainval", "val": "val", "validation": "val", "test": "test"}


def _plan_imagefolder(root: Path, images_per_chunk: int) -> Plan:
    """Class sub-folders as labels: PATH/<class>/** or PATH/{train,val,test}/<class>/**.

    Labels number the class folders in sorted order (as torchvision and TFDS do). A
    words.txt (lines "<folder>\t<name>, <synonym>, ...") beside the class folders, in PATH
    or in its parent (the official Tiny ImageNet zip, used as imagefolder:.../train) gives
    readable names; the first synonym is kept.
    """
    spec = f"imagefolder:{root}"
    _require_folder(root, spec)
    subfolders = sorted(path.name for path in root.iterdir() if path.is_dir())
    split_folders = [name for name in subfolders if name in IMAGEFOLDER_SPLITS]
    splits = [(root / name, IMAGEFOLDER_SPLITS[name]) for name in split_folders] or [(root, "trainval")]
    # The train split's folders define the classes when there is one: the official Tiny
    # ImageNet zip has val/images/, a folder of unlabelled photos, not a class.
    defining = [folder for folder, group in splits if group == "trainval"] or [folder for folder, _ in splits]
    classes = sorted({path.name for folder in defining for path in folder.iterdir() if path.is_dir()})
    if not classes:
        raise SourceError(f"{spec}: no class sub-folders; expected PATH/<class>/*.jpg or PATH/train/<class>/*.jpg "
                          "(use folder:PATH for photos without classes)")  # fmt: skip
    skipped: list[dict] = []
    chunks: list[Chunk] = []
    images = 0
    for folder, group in splits:
        items = []
        for class_index, class_name in enumerate(classes):
            if (folder / class_name).is_dir():
                items += [(path.relative_to(root).as_posix(), str(path), class_index)
                          for path in list_images(folder / class_name, skipped)]  # fmt: skip
        loose = [path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES]
        skipped += [{"source": str(path), "reason": "not inside a class folder: no label"} for path in sorted(loose)]
        strays = sorted(path for path in folder.iterdir() if path.is_dir() and path.name not in classes)
        skipped += [{"source": str(path), "reason": "not a class folder of the train split: no label"}
                    for path in strays]  # fmt: skip
        chunks += _chunked("files", items, group, images_per_chunk)
        images += len(items)
    places = [*(folder for folder, _ in splits), root, root.parent]
    return Plan(chunks, images, _class_names(classes, places), skipped)


def _class_names(folders: list[str], places: list[Path]) -> list[str]:
    """Readable names of class folders from the first words.txt among `places`, else the folder names."""
    for place in places:
        words = place / "words.txt"
        if not words.is_file():
            continue
        names = {}
        for line in words.read_text(errors="replace").splitlines():
            folder, _, name = line.partition("\t")
            if name.strip():
                names[folder.strip()] = name.split(",")[0].strip()
        return [names.get(folder, folder) for folder in folders]
    return list(folders)


def _plan_cifar10(root: Path, images_per_chunk: int) -> Plan:
    _require_folder(root, f"cifar10:{root}")
    for batches in (root, root / "cifar-10-batches-py"):
        if (batches / "data_batch_1").is_file():
            return _plan_cifar10_pickles(batches, images_per_chunk)
    if (root / "train").is_dir():
        return _plan_cifar10_folders(root, images_per_chunk)
    raise SourceError(
        f"cifar10:{root}: found neither python batches (data_batch_1 ... test_batch) "
        "nor folders train/<class>/*.jpg and test/<class>/*.jpg"
    )


def _plan_cifar10_pickles(folder: Path, images_per_chunk: int) -> Plan:
    label_names = list(CIFAR10_CLASSES)
    if (folder / "batches.meta").is_file():
        with open(folder / "batches.meta", "rb") as meta:
            label_names = [name.decode() for name in pickle.load(meta, encoding="bytes")[b"label_names"]]
    groups: dict[str, list] = {"trainval": [], "test": []}
    skipped: list[dict] = []
    names = sorted(path.name for path in folder.glob("data_batch_*")) + ["test_batch"]
    for name in names:
        try:
            rows = len(_cifar_batch(str(folder / name))[b"labels"])
        except (OSError, pickle.UnpicklingError, KeyError, EOFError) as error:
            skipped.append({"source": str(folder / name), "reason": f"cannot read CIFAR-10 batch: {error}"})
            continue
        group = "test" if name == "test_batch" else "trainval"
        groups[group] += [(str(folder / name), row) for row in range(rows)]
    chunks = [chunk for group, rows in groups.items() for chunk in _chunked("cifar_pickle", rows, group, images_per_chunk)]
    return Plan(chunks, sum(len(rows) for rows in groups.values()), label_names, skipped)


def _plan_cifar10_folders(root: Path, images_per_chunk: int) -> Plan:
    classes = sorted(path.name for path in (root / "train").iterdir() if path.is_dir())
    label_names = list(CIFAR10_CLASSES) if set(classes) <= set(CIFAR10_CLASSES) else classes
    chunks: list[Chunk] = []
    skipped: list[dict] = []
    images = 0
    for split, group in (("train", "trainval"), ("test", "test")):
        if not (root / split).is_dir():
            continue
        items = []
        for path in list_images(root / split, skipped):
            relative = path.relative_to(root)
            class_name = relative.parts[1] if len(relative.parts) > 2 else None
            label = label_names.index(class_name) if class_name in label_names else NO_LABEL
            items.append((relative.as_posix(), str(path), label))
        chunks += _chunked("files", items, group, images_per_chunk)
        images += len(items)
    return Plan(chunks, images, label_names, skipped)


def _plan_tfds(argument: str, images_per_chunk: int, data_dir: str | None) -> Plan:
    import tensorflow_datasets as tfds

    name, _, split = argument.partition(":")
    split = split or "train"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # TFDS raises its own types for unknown names and bad configs
        raise SourceError(f"tfds:{argument}: {error}") from None
    if not builder.is_prepared():
        hosts = _download_hosts(builder)
        if not any(reachable(host) for host in hosts):
            raise SourceError(
                f"tfds:{name}: not downloaded in {builder.data_dir_root} and its download hosts "
                f"({', '.join(hosts)}) cannot be reached: this machine looks offline. Download it "
                f"where you are online (same --tfds-dir), or use the local files with folder:PATH "
                f"or cifar10:PATH."
            )
        print(f"tfds:{name}: downloading and preparing into {builder.data_dir_root} ...", file=sys.stderr)
        builder.download_and_prepare()
    if split not in builder.info.splits:
        raise SourceError(f"tfds:{name}: no split {split!r}; it has {', '.join(builder.info.splits)}")
    features = builder.info.features
    label = features["label"] if "label" in features.keys() else None
    label_names = list(label.names) if isinstance(label, tfds.features.ClassLabel) else None
    total = builder.info.splits[split].num_examples
    group = "test" if split.startswith("test") else "val" if split.startswith(("val", "validation")) else "trainval"
    count = math.ceil(total / images_per_chunk)
    chunks = [
        Chunk("tfds", ((name, split, i * images_per_chunk, min(total, (i + 1) * images_per_chunk), data_dir),),
              group, i)
        for i in range(count)
    ]  # fmt: skip
    return Plan(chunks, total, label_names)


def _download_hosts(builder) -> list[str]:
    # TFDS first tries its own bucket for a prepared copy, then the dataset's original URLs.
    hosts = ["storage.googleapis.com"]
    for url in builder.url_infos or {}:
        host = urlparse(url).hostname
        if host and host not in hosts:
            hosts.append(host)
    return hosts


def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------
# Reading (in the workers)


def read(chunk: Chunk, max_pixels: int, gray: bool = False) -> Iterator[Record]:
    """The photos of one chunk, in a fixed order, as RGB; unusable ones carry their error.
    `gray`: gray photos are wanted too (DOMAIN=gray), as three equal channels."""
    readers = {"files": _read_files, "cifar_pickle": _read_cifar_pickle, "tfds": _read_tfds}
    records = readers[chunk.reader](chunk.items, max_pixels, gray)
    if not chunk.label_offset:
        return records
    return (record if record.label == NO_LABEL else replace(record, label=record.label + chunk.label_offset)
            for record in records)  # fmt: skip


def _read_files(items: tuple, max_pixels: int, gray: bool) -> Iterator[Record]:
    for source_id, path, label in items:
        try:
            photo = _from_url(path) if "://" in path else path
            yield Record(source_id, path, label, rgb=load_rgb(photo, max_pixels, name=path, gray=gray))
        except UnusableImage as error:
            yield Record(source_id, path, label, error=error.reason)


def _from_url(url: str) -> io.BytesIO:
    """The bytes of a photo in object storage (`_plan_url_folder`), read whole: Pillow seeks."""
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(url, "rb") as file:
            return io.BytesIO(file.read())
    except tf.errors.OpError as error:
        raise UnusableImage(url, f"cannot read: {error.message.rpartition('; ')[2] or error.message}") from None


_cifar_cache: dict[str, dict] = {}


def _cifar_batch(path: str) -> dict:
    # A chunk's rows are consecutive, from one or two batch files: keep the last one unpickled.
    if path not in _cifar_cache:
        _cifar_cache.clear()
        with open(path, "rb") as batch:
            _cifar_cache[path] = pickle.load(batch, encoding="bytes")
    return _cifar_cache[path]


def _read_cifar_pickle(items: tuple, max_pixels: int, gray: bool) -> Iterator[Record]:
    for path, row in items:
        batch = _cifar_batch(path)
        # a row is 3072 bytes: the 32x32 red plane, then green, then blue
        rgb = np.asarray(batch[b"data"][row]).reshape(3, 32, 32).transpose(1, 2, 0)
        filename = batch[b"filenames"][row].decode() if b"filenames" in batch else str(row)
        yield Record(f"{Path(path).name}/{filename}", f"{path}[{row}]", int(batch[b"labels"][row]), rgb=rgb)


def _read_tfds(items: tuple, max_pixels: int, gray: bool) -> Iterator[Record]:
    import tensorflow_datasets as tfds

    ((name, split, start, stop, data_dir),) = items
    builder = tfds.builder(name, data_dir=data_dir)
    image_key = next(key for key, feature in builder.info.features.items() if isinstance(feature, tfds.features.Image))
    dataset = builder.as_dataset(split=f"{split}[{start}:{stop}]", shuffle_files=False)
    for index, example in enumerate(tfds.as_numpy(dataset), start=start):
        source_id = f"{name}/{split}/{index}"
        label = int(example["label"]) if "label" in example else NO_LABEL
        rgb = example[image_key]
        if gray and rgb.ndim == 3 and rgb.shape[-1] == 1:
            rgb = np.repeat(rgb, 3, axis=-1)
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            yield Record(source_id, source_id, label, error="grayscale image: no colour truth")
        elif rgb.shape[0] * rgb.shape[1] > max_pixels:
            pixels = rgb.shape[0] * rgb.shape[1]
            yield Record(source_id, source_id, label, error=f"too large: {pixels:,} pixels exceeds {max_pixels:,}")
        else:
            yield Record(source_id, source_id, label, rgb=rgb.astype(np.uint8))
