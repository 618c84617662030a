"""`colorize --model EXPORT_DIR --output DIR INPUT...` (also `python -m export.colorize`): colour photos.

    colorize [--model exports/cgan] [--version N] [--size S] [--temperature T] [--format png|jpg] [--output DIR] INPUT...

Without --model it uses the colorizer that ships with the project (export/pretrained/),
and without --output it writes into ./colorized.

INPUTs are files or folders (searched recursively for .jpg .jpeg .png .bmp .tif .tiff
.webp); any size and mode: gray, RGB (taken as gray), RGBA, 16-bit, palette, CMYK. Each
result keeps its input's size and file name (with the new extension); a folder's
subfolders are kept under DIR. Bad files are reported and skipped.

Exit codes: 0 when at least one photo was written, 1 when none could be, 2 for bad
arguments (no export, a missing INPUT, no photos found).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

from preprocess.console import quiet_tensorflow  # noqa: E402

quiet_tensorflow(sys.argv)  # before anything imports TensorFlow: its log lines only with --verbose

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from export import PRETRAINED  # noqa: E402
from preprocess import atomic  # noqa: E402
from export.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, UnusableImage, load_photo  # noqa: E402

# zlib level 1: on a 12-megapixel photo 5x faster than Pillow's default 6, files about as large.
FORMATS = {"png": ("PNG", {"compress_level": 1}), "jpg": ("JPEG", {"quality": 95})}


class Job(NamedTuple):
    source: Path
    target: Path


def plan(inputs: list[Path], output: Path, extension: str) -> tuple[list[Job], list[tuple[Path, str]]]:
    """Jobs for every photo under `inputs`, and the photos skipped while planning (with why).

    A file given by name is always tried; in folders only image suffixes count. A photo
    named twice is done once; two photos that would write the same output keep the first.
    """
    jobs: dict[Path, Job] = {}
    skipped = []
    seen = set()
    for item in inputs:
        if item.is_dir():
            found = sorted(path for path in item.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
            pairs = [(path, path.relative_to(item)) for path in found]
        else:
            pairs = [(item, Path(item.name))]
        for source, relative in pairs:
            if source.resolve() in seen:
                continue
            seen.add(source.resolve())
            target = output / relative.with_suffix("." + extension)
            if target in jobs:
                skipped.append((source, f"same output name as {jobs[target].source}"))
            else:
                jobs[target] = Job(source, target)
    return list(jobs.values()), skipped


# Photos decoded ahead of the graph, and what one graph call takes: up to BATCH_PHOTOS photos
# of one size, BATCH_PIXELS pixels in all (a 12-megapixel photo goes alone).
LOADERS = 2
BATCH_PHOTOS = 64
BATCH_PIXELS = 1 << 21


def read_ahead(pool: ThreadPoolExecutor, load: Callable, jobs: list[Job]) -> Iterator:
    """load(job) for each job in order, decoded in `pool`'s threads (Pillow releases the GIL)
    while the graph colorizes, at most 2 x LOADERS photos ahead so memory stays bounded."""
    pending: deque = deque()
    for job in jobs:
        pending.append(pool.submit(load, job))
        if len(pending) > 2 * LOADERS:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _load(job: Job, max_pixels: int) -> tuple[Job, np.ndarray | str]:
    """(job, its uint8 RGB photo), or (job, why it cannot be read)."""
    try:
        return job, load_photo(job.source, max_pixels)
    except UnusableImage as error:
        return job, error.reason


def same_size_batches(loaded: Iterable[tuple[Job, np.ndarray | str]],
                      skip: Callable[[Job, str], None]) -> Iterator[list[tuple[Job, np.ndarray]]]:  # fmt: skip
    """Consecutive readable photos of one shape, grouped (see BATCH_PHOTOS); the others go to `skip`."""
    batch: list[tuple[Job, np.ndarray]] = []
    for job, rgb in loaded:
        if isinstance(rgb, str):
            skip(job, rgb)
            continue
        if batch and (rgb.shape != batch[0][1].shape or len(batch) == BATCH_PHOTOS
                      or (len(batch) + 1) * rgb.shape[0] * rgb.shape[1] > BATCH_PIXELS):  # fmt: skip
            yield batch
            batch = []
        batch.append((job, rgb))
    if batch:
        yield batch


def save(rgb: np.ndarray, target: Path, extension: str) -> None:
    """Write uint8 RGB [H, W, 3] to `target` whole or not at all (preprocess/atomic.py)."""
    image_format, options = FORMATS[extension]
    with atomic.replacing(target) as temporary:
        Image.fromarray(rgb).save(temporary, format=image_format, **options)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="colorize", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("inputs", nargs="+", type=Path, metavar="INPUT", help="photos or folders of photos")
    add("--model", type=Path, default=PRETRAINED,
        help="exports/<name> (its newest version) or exports/<name>/<version> (default: the shipped colorizer)")
    add("--version", type=int, default=None, help="the export version (default: the newest)")
    add("--output", type=Path, default=Path("colorized"), help="folder for the results (default: colorized)")
    add(
        "--size",
        type=int,
        default=None,
        help="working size: the model sees about SIZE x SIZE pixels (default: the export's)",
    )
    add("--temperature", type=float, default=None, help="for models that decode with one (default: the export's)")
    add("--format", choices=sorted(FORMATS), default="png", help="output format (default: png)")
    add(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse larger photos (default: {DEFAULT_MAX_PIXELS:,})",
    )
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines")
    args = parser.parse_args(argv)
    if args.size is not None and args.size < 1 or args.temperature is not None and args.temperature <= 0:
        parser.error("--size and --temperature must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [str(path) for path in args.inputs if not path.exists()]
    if missing:
        print(f"colorize: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    jobs, skipped = plan(args.inputs, args.output, args.format)
    if not jobs:
        print(f"colorize: no photos in {', '.join(map(str, args.inputs))}", file=sys.stderr)
        return 2

    import tensorflow as tf  # after the cheap checks: importing it takes seconds

    from export.inference import Colorizer, ExportNotFound

    try:
        colorizer = Colorizer(args.model, args.version)
        if args.temperature is not None and colorizer.info["temperature"] is None:
            raise ExportNotFound(f"{colorizer.label} ({colorizer.info['model']}) does not take a --temperature")
    except (ExportNotFound, OSError) as error:
        print(f"colorize: {error}", file=sys.stderr)
        return 2

    started, written, pixels = time.perf_counter(), 0, 0
    for source, reason in skipped:
        print(f"skipped {source}: {reason}", file=sys.stderr)
    progress = tqdm(total=len(jobs), unit="photo", desc="colorize", file=sys.stderr, disable=None)

    def skip(job: Job, reason: str) -> None:
        skipped.append((job.source, reason))
        tqdm.write(f"skipped {job.source}: {reason}", file=sys.stderr)

    with ThreadPoolExecutor(LOADERS) as loaders:
        loaded = read_ahead(loaders, lambda job: _load(job, args.max_pixels), jobs)
        for batch in same_size_batches(loaded, skip):
            try:
                colorized = colorizer.colorize_batch(np.stack([rgb for _, rgb in batch]), args.size, args.temperature)
            except tf.errors.OpError as error:  # e.g. out of memory for these photos
                for job, _ in batch:
                    skip(job, f"colorization failed ({error.message.splitlines()[0]})")
                progress.update(len(batch))
                continue
            for (job, rgb), output in zip(batch, colorized):
                try:
                    save(output, job.target, args.format)
                except OSError as error:
                    skip(job, f"cannot write {job.target}: {error.strerror}")
                else:
                    written += 1
                    pixels += rgb.shape[0] * rgb.shape[1]
            progress.update(len(batch))
    progress.close()

    seconds = time.perf_counter() - started
    print(f"colorized {written} of {written + len(skipped)} photos ({pixels / 1e6:.1f} megapixels) with "
          f"{colorizer.label} into {args.output} in {seconds:.1f} s", file=sys.stderr)  # fmt: skip
    if skipped:
        print(f"skipped {len(skipped)}:", file=sys.stderr)
        for source, reason in skipped:
            print(f"  {source}: {reason}", file=sys.stderr)
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
