"""`colorize --model EXPORT_DIR --output DIR INPUT...` (also `python -m export.colorize`): colour photos.

    colorize [--model exports/cgan] [--version N] [--size S] [--temperature T] [--format png|jpg] [--output DIR] INPUT...
    colorize --model exports/guided [--reference REF.jpg] [--hints hints.json] [--sequence] [--steady S] INPUT...

Without --model it uses the colorizer that ships with the project (export/pretrained/), or
with --reference or --hints the guided colorizer that ships beside it, and without
--output it writes into ./colorized.

A model that takes hints (MODEL=guided) follows a reference photo's colours (--reference)
and colour hints at pixels of the photo (--hints, export/guidance.py), or both; every
photo gets the same ones. A video file (mp4, mov, ...) or, with --sequence, a folder of
frames is one sequence: every frame gets the reference and the hints at the same
positions (nothing tracks moving objects), and it comes out as an mp4 at the video's
frame rate or as a folder of frames (export/sequence.py). A sequence's colours are carried
from frame to frame where the picture holds still (--steady, export/steady.py; 0 turns it
off), with any model.

INPUTs are files or folders (searched recursively for .jpg .jpeg .png .bmp .tif .tiff
.webp); any size and mode: gray, RGB (taken as gray), RGBA, 16-bit, palette, CMYK. Each
result keeps its input's size and file name (with the new extension); a folder's
subfolders are kept under DIR. Bad files are reported and skipped.

Exit codes: 0 when at least one photo was written, 1 when none could be, 2 for bad
arguments (no export, a missing INPUT, no photos found, a hints file or reference that
cannot be used, hints for a model that takes none).
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

from export import PRECISION_HELP, PRECISIONS, PRETRAINED, PRETRAINED_GUIDED  # noqa: E402
from preprocess import atomic  # noqa: E402
from export.guidance import GuidanceError, Hint, outside, png_bytes, read_hints, read_reference  # noqa: E402
from export.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, UnusableImage, load_photo  # noqa: E402
from export.sequence import FramesOut, SequenceError, VideoOut, is_video, read_sequence  # noqa: E402
from export.steady import DEFAULT_STRENGTH, Steadier, strength_argument  # noqa: E402

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
    add("inputs", nargs="+", type=Path, metavar="INPUT",
        help="photos, folders of photos, videos (mp4, mov, ...), or with --sequence folders of frames")
    add("--model", type=Path, default=None,
        help="exports/<name> (its newest version) or exports/<name>/<version> (default: the shipped colorizer; "
        "with --reference or --hints the shipped guided colorizer)")
    add("--version", type=int, default=None, help="the export version (default: the newest)")
    add("--output", type=Path, default=Path("colorized"), help="folder for the results (default: colorized)")
    add(
        "--size",
        type=int,
        default=None,
        help="working size: the model sees about SIZE x SIZE pixels (default: the export's)",
    )
    add("--temperature", type=float, default=None, help="for models that decode with one (default: the export's)")
    add("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    add("--format", choices=sorted(FORMATS), default="png", help="output format (default: png)")
    add(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse larger photos (default: {DEFAULT_MAX_PIXELS:,})",
    )
    add("--reference", type=Path, default=None,
        help="a colour photo whose colours to follow (its ab distribution: models that take hints)")
    add("--hints", type=Path, default=None,
        help='JSON list of {"x": int, "y": int, "colour": "#rrggbb"}, x and y in the photo\'s pixels: only the '
             "colour's hue and saturation count (its Lab ab; its lightness L is ignored, the photo keeps its own)")
    add("--sequence", action="store_true",
        help="each INPUT folder is one sequence of frames (in name order) -> OUTPUT/<folder>/; videos always are")
    add("--steady", type=strength_argument, default=None,
        help="sequences: share of the previous frame's colour kept where the picture held still, 0 to below 1 "
             f"(0 turns it off; default: {DEFAULT_STRENGTH:g})")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines")
    args = parser.parse_args(argv)
    if args.size is not None and args.size < 1 or args.temperature is not None and args.temperature <= 0:
        parser.error("--size and --temperature must be positive")
    return args


class Guidance(NamedTuple):
    """What every photo and frame gets from --hints and --reference (empty: automatic)."""

    hints: list[Hint]
    reference: bytes  # PNG of the reference, shrunk; b"" for none

    def __bool__(self) -> bool:
        return bool(self.hints or self.reference)


def colorize_sequence(colorizer, source: Path, output: Path, args: argparse.Namespace,
                      guidance: Guidance) -> tuple[Path, int, int]:  # fmt: skip
    """Colorize one sequence (a video, or a folder of frames) into OUTPUT: (what was written, frames,
    pixels per frame). Whole or not at all; SequenceError or GuidanceError say why not."""
    sequence = read_sequence(source, args.max_pixels)
    name = source.resolve().name
    progress = tqdm(total=sequence.count, unit="frame", desc=name, file=sys.stderr, disable=None, leave=False)
    frames = sequence.frames()
    first_name, first = next(frames, (None, None))
    if first is None:
        raise SequenceError(f"{source}: no frames")
    why = outside(guidance.hints, *first.shape[:2], what="the frames")
    if why:
        raise GuidanceError(f"{args.hints}: {why}")
    per_batch = max(1, min(BATCH_PHOTOS, BATCH_PIXELS // (first.shape[0] * first.shape[1])))

    def batches() -> Iterator[list[tuple[str, np.ndarray]]]:
        batch = [(first_name, first)]
        for item in frames:
            if len(batch) == per_batch:
                yield batch
                batch = []
            batch.append(item)
        yield batch

    steady = Steadier(DEFAULT_STRENGTH if args.steady is None else args.steady)

    def colorized() -> Iterator[tuple[str, np.ndarray]]:
        for batch in batches():
            outputs = colorizer.colorize_batch(np.stack([frame for _, frame in batch]), args.size, args.temperature,
                                               guidance.hints, guidance.reference)  # fmt: skip
            for (frame_name, frame), output in zip(batch, outputs):
                yield frame_name, steady(frame, output)
            progress.update(len(batch))

    try:
        if sequence.is_video:
            target = output / f"{Path(name).stem}.mp4"
            with VideoOut(target, sequence.fps) as video:
                for _, frame in colorized():
                    video.write(frame)
            count = video.frames
        else:
            target = output / name
            image_format, options = FORMATS[args.format]
            with FramesOut(target) as folder:
                for frame_name, frame in colorized():
                    Image.fromarray(frame).save(folder.file(str(Path(frame_name).with_suffix("." + args.format))),
                                                format=image_format, **options)  # fmt: skip
            count = folder.frames
    finally:
        progress.close()
    return target, count, first.shape[0] * first.shape[1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [str(path) for path in args.inputs if not path.exists()]
    if missing:
        print(f"colorize: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    sequences = [path for path in args.inputs if (path.is_file() and is_video(path)) or (args.sequence and path.is_dir())]
    photos = [path for path in args.inputs if path not in sequences]
    if args.sequence and photos:
        print(f"colorize: --sequence takes folders of frames or videos; {', '.join(map(str, photos))} "
              "is neither", file=sys.stderr)  # fmt: skip
        return 2
    if args.steady is not None and not sequences:
        print("colorize: --steady carries colours between the frames of a sequence (a video, or a folder with "
              "--sequence); there is none here", file=sys.stderr)  # fmt: skip
        return 2
    jobs, skipped = plan(photos, args.output, args.format) if photos else ([], [])
    if not jobs and not sequences:
        print(f"colorize: no photos in {', '.join(map(str, args.inputs))}", file=sys.stderr)
        return 2
    try:
        hints = read_hints(args.hints) if args.hints else []  # before TensorFlow: a typo fails fast
    except GuidanceError as error:
        print(f"colorize: {error}", file=sys.stderr)
        return 2

    import tensorflow as tf  # after the cheap checks: importing it takes seconds

    from export.inference import Colorizer, ExportNotFound, error_message

    try:
        guidance = Guidance(hints, png_bytes(read_reference(args.reference, args.max_pixels)) if args.reference else b"")
        model = args.model or (PRETRAINED_GUIDED if guidance else PRETRAINED)
        colorizer = Colorizer(model, args.version, args.precision)
        if args.temperature is not None and colorizer.info["temperature"] is None:
            raise ExportNotFound(f"{colorizer.label} ({colorizer.info['model']}) does not take a --temperature")
        if guidance and not colorizer.takes_hints:
            raise ExportNotFound(f"{colorizer.label} ({colorizer.info['model']}) takes no --hints or --reference: "
                                 "only a model trained with them does (MODEL=guided: make train MODEL=guided, "
                                 "then make export)")  # fmt: skip
    except (ExportNotFound, GuidanceError, OSError) as error:
        print(f"colorize: {error}", file=sys.stderr)
        return 2

    started, written, pixels = time.perf_counter(), 0, 0
    for source, reason in skipped:
        print(f"skipped {source}: {reason}", file=sys.stderr)

    for source in sequences:
        try:
            target, frames, frame_pixels = colorize_sequence(colorizer, source, args.output, args, guidance)
        except (SequenceError, GuidanceError) as error:
            skipped.append((source, str(error)))
            print(f"skipped {source}: {error}", file=sys.stderr)
        except tf.errors.OpError as error:
            skipped.append((source, f"colorization failed ({error_message(error)})"))
            print(f"skipped {source}: {skipped[-1][1]}", file=sys.stderr)
        else:
            written += 1
            pixels += frames * frame_pixels
            print(f"colorized {source}: {frames} frames into {target}", file=sys.stderr)

    progress = tqdm(total=len(jobs), unit="photo", desc="colorize", file=sys.stderr, disable=None)

    def skip(job: Job, reason: str) -> None:
        skipped.append((job.source, reason))
        tqdm.write(f"skipped {job.source}: {reason}", file=sys.stderr)

    def hinted(job: Job, rgb: np.ndarray | str) -> tuple[Job, np.ndarray | str]:
        """A photo that a hint falls outside of becomes the reason it cannot be colorized."""
        why = None if isinstance(rgb, str) else outside(guidance.hints, *rgb.shape[:2])
        return (job, f"{args.hints}: {why}") if why else (job, rgb)

    with ThreadPoolExecutor(LOADERS) as loaders:
        loaded = read_ahead(loaders, lambda job: hinted(*_load(job, args.max_pixels)), jobs)
        for batch in same_size_batches(loaded, skip):
            try:
                colorized = colorizer.colorize_batch(np.stack([rgb for _, rgb in batch]), args.size, args.temperature,
                                                     guidance.hints, guidance.reference)  # fmt: skip
            except tf.errors.OpError as error:  # e.g. out of memory for these photos
                for job, _ in batch:
                    skip(job, f"colorization failed ({error_message(error)})")
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
    kinds = "sequences" if not jobs else "photos and sequences" if sequences else "photos"
    print(f"colorized {written} of {written + len(skipped)} {kinds} ({pixels / 1e6:.1f} megapixels) with "
          f"{colorizer.label} into {args.output} in {seconds:.1f} s", file=sys.stderr)  # fmt: skip
    if skipped:
        print(f"skipped {len(skipped)}:", file=sys.stderr)
        for source, reason in skipped:
            print(f"  {source}: {reason}", file=sys.stderr)
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
