"""`make bench`, data stage: photos per second through `make data` and batches per second
through the reader, at 32, 64 and 256 px. Writes its section of BENCHMARKS.md.

Uses the real photos in ../shared/data when they are there (CIFAR-10 JPEGs for 32 px, Tiny
ImageNet for 64 px, BSDS500 and DIV2K crops for 256 px), otherwise synthetic photos of the
same sizes, and says which.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from preprocess.console import quiet_tensorflow  # noqa: E402

quiet_tensorflow()  # before anything imports TensorFlow: a benchmark's report stays readable

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import preprocess  # noqa: E402
from preprocess import atomic, dataset, shards  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def machine() -> str:
    """One line naming the machine, for every table of BENCHMARKS.md."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
        flags = preprocess.cpu_flags()
        # the vector units TensorFlow's speed depends on here: bf16 ones, else AVX-512, else AVX2
        units = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags] or [f for f in ["avx2"] if f in flags]
        cpu += f" ({', '.join(units)})" if units else ""
    except (OSError, AttributeError):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import tensorflow as tf

    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, Python {platform.python_version()}, TensorFlow {tf.__version__}"


def write_section(name: str, markdown: str, path: Path = BENCHMARKS) -> None:
    """Replaces (or appends) the section between `<!-- name -->` markers, keeping the rest."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n\nMade by `make bench`; each stage writes its own section.\n"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic.write_text(path, text)


def synthetic_photos(folder: Path, count: int, height: int, width: int) -> Path:
    """Colourful JPEGs with structure, for machines without ../shared/data."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    for i in range(count):
        rgb = np.stack([x * 255 / width, y * 255 / height, 128 + 100 * np.sin((x + y) / (3 + i % 7))], -1)
        rgb = np.clip(rgb + rng.normal(0, 20, rgb.shape), 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def extracted(archive: Path, folder: Path) -> Path:
    """`folder`, made, with the .tar.gz `archive` unpacked into it: one folder per source, so
    that a source reading its folder sees its own photos only."""
    folder.mkdir(parents=True)
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(folder)], check=True)
    return folder


def photo_sets(work: Path) -> dict[int, tuple[str, str]]:
    """size -> (source spec, description)."""
    cifar = SHARED / "cifar10-jpg.tar.gz"
    if cifar.exists():
        small = (f"cifar10:{extracted(cifar, work / 'cifar10')}", "all of CIFAR-10, 60,000 JPEGs of 32x32")
    else:
        small = (f"folder:{synthetic_photos(work / 'small', 10000, 32, 32)}", "10,000 synthetic JPEGs of 32x32")
    tiny = SHARED / "tinyimagenet64.tar.gz"
    if tiny.exists():
        medium = (f"imagefolder:{extracted(tiny, work / 'tiny') / 'tinyimagenet64'}",
                  "Tiny ImageNet, 75,000 JPEGs of 64x64 in 200 class folders")  # fmt: skip
    else:
        medium = (f"folder:{synthetic_photos(work / 'medium', 5000, 64, 64)}", "5,000 synthetic JPEGs of 64x64")
    photos = SHARED / "photos"
    if photos.exists():
        large = (f"folder:{photos}", "BSDS500, DIV2K and Urban100 crops, 700 JPEG/PNG photos of 481x321 and 256x256")
    else:
        large = (f"folder:{synthetic_photos(work / 'large', 700, 321, 481)}", "700 synthetic JPEGs of 481x321")
    return {32: small, 64: medium, 256: large}


def time_make_data(spec: str, size: int, mode: str, out: Path, workers: int) -> tuple[float, dict]:
    started = time.perf_counter()
    manifest = shards.write(shards.Options(source=spec, size=size, mode=mode), out, workers, overwrite=True,
                            log=io.StringIO())  # fmt: skip
    return time.perf_counter() - started, manifest


def reader_batches_per_second(out: Path, batch_size: int, seconds: float = 3.0) -> tuple[float, float]:
    """Training pipeline (shuffle, flips, Lab conversion), repeated, after a warm-up: batches
    per second over at least `seconds` (a fixed count of small batches is over too soon to
    time), and the process's CPU seconds per wall second meanwhile."""
    pipeline = iter(dataset.load(out, "train", batch_size=batch_size, seed=0).repeat())
    for _ in range(10):
        next(pipeline)
    batches, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - started) < seconds:
        next(pipeline)
        batches += 1
    return batches / elapsed, (time.process_time() - cpu_started) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m preprocess.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=0, help="make data workers (default: one per core)")
    parser.add_argument("--output", type=Path, default=BENCHMARKS, help="the Markdown file to update")
    args = parser.parse_args(argv)
    rows, reader_rows = [], []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for size, (spec, description) in photo_sets(work).items():
            mode = "resize" if size <= 64 else "center"
            out = work / f"shards{size}"
            seconds, manifest = time_make_data(spec, size, mode, out, args.workers)
            photos = manifest["source"]["photos"]
            splits = ", ".join(f"{name} {info['tiles']:,}" for name, info in manifest["splits"].items())
            rows.append(
                f"| {size} | {mode} | {description} | {photos:,} | {splits} | {len(manifest['skipped_files']):,} "
                f"| {seconds:.1f} | {photos / seconds:,.0f} |"
            )
            # the presets' batches: 32 px at 64, the shipped recipe's 64 px at 32, 256 px at 1 to 16
            for batch_size in {32: (64,), 64: (32,)}.get(size, (4, 16)):
                rate, cpu_util = reader_batches_per_second(out, batch_size)
                reader_rows.append(f"| {size} | {batch_size} | {rate:,.1f} | {rate * batch_size:,.0f} | {cpu_util:.2f} |")
                print(f"reader {size} px, batch {batch_size}: {rate:.1f} batches/s", file=sys.stderr)
            shutil.rmtree(out)
    workers = args.workers or os.cpu_count()
    write_section(
        "preprocess",
        f"""## make data and the reader

Machine: {machine()}. Date: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}.
Command: `make bench` (`python -m preprocess.bench`), {workers} workers; the 32 px row is
`make data SOURCE=cifar10:PATH SIZE=32 MODE=resize`, the 64 px row `SOURCE=imagefolder:PATH SIZE=64
MODE=resize`, the 256 px row `SOURCE=folder:PATH SIZE=256`.
Seconds include starting the worker processes (TensorFlow import, a few seconds each).

| size | mode | photos | count | tiles written | photos skipped | seconds | photos/s |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Reader: `preprocess.dataset.load(..., "train")` with shuffling, flips and Lab conversion, repeated.

| size | batch | batches/s | tiles/s | CPU |
|---|---|---|---|---|
{chr(10).join(reader_rows)}
""",
        args.output,
    )
    print(f"updated {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
