"""`make bench`, training stage: training images per second (cgan by default, `--model`) at 32 px (batch 64) and
256 px (batch 1 and 4), float32 and mixed_bfloat16, with each configuration's peak memory;
and the reader's throughput at the same sizes, which must be at least 10 times what a
training step consumes. Writes its section of BENCHMARKS.md.

Each configuration runs in a fresh process, so that its peak resident memory is its own.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from preprocess.console import quiet_tensorflow  # noqa: E402

quiet_tensorflow()  # before anything imports TensorFlow: a benchmark's report stays readable

CONFIGS = [(32, 64), (256, 1), (256, 4)]  # (size, batch)
PRECISIONS = ("float32", "mixed_bfloat16")


@contextlib.contextmanager
def synthetic_training(model: str, size: int, batch: int, precision: str) -> Iterator[tuple[Any, dict]]:
    """`model` at its preset for `size`, built as `python -m train` builds it under `precision`,
    and a synthetic batch: yields (train.loop.Training, batch dict) inside the run's runtime."""
    import numpy as np
    import tensorflow as tf

    import models
    from models.config import from_dict
    from preprocess import color
    from preprocess.sources import CIFAR10_CLASSES
    from train import loop
    from train.config import TrainConfig

    # What CIFAR-10 shards would give (as preprocess.dataset.Shards): a prior (zhang's
    # rebalancing) and labels (iizuka's head).
    shards = types.SimpleNamespace(ab_prior=np.ones(len(color.ab_bins()), np.int64), label_names=CIFAR10_CLASSES)
    entry = models.get(model)
    from_data = entry.from_data(shards) if entry.from_data else {}
    config = from_dict(entry.config, {**entry.presets[size], **from_data})
    train = TrainConfig(batch_size=batch, precision=precision)
    with loop.runtime(train):
        training = loop.build(model, config, train, shards=shards)
        rng = tf.random.Generator.from_seed(0)
        yield training, {
            "gray": rng.uniform([batch, size, size, 1], -1, 1),
            "color": rng.uniform([batch, size, size, 2], -0.5, 0.5),
            "label": tf.zeros([batch], tf.int64),
        }


def wait(step_result: tuple[dict, object]) -> None:
    """Blocks until the step that returned `step_result` (losses, finite) has run."""
    float(next(iter(step_result[0].values())))


def time_steps(model: str, size: int, batch: int, precision: str, seconds: float, profile: Path | None = None) -> dict:
    """Builds `model` at its preset for `size` and times train steps for about `seconds`;
    with `profile`, then traces three more steps there for TensorBoard's profiler."""
    with synthetic_training(model, size, batch, precision) as (training, batch_data):
        for _ in range(2):  # trace, compile, warm the allocator
            wait(training.train_step(batch_data))
        steps, started, cpu_started = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds or steps < 3:
            losses, _ = training.train_step(batch_data)
            steps += 1
        wait((losses, None))  # the last step
        elapsed = time.perf_counter() - started
        cpu_util = (time.process_time() - cpu_started) / elapsed
        if profile:
            import tensorflow as tf

            tf.profiler.experimental.start(str(profile))
            for _ in range(3):
                wait(training.train_step(batch_data))
            tf.profiler.experimental.stop()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"images_per_second": steps * batch / elapsed, "peak_mib": peak_kib / 1024, "cpu_util": cpu_util}


def reader_images_per_second(size: int, batch: int) -> tuple[float, float]:
    """The training reader on synthetic photos of that size: tiles per second, CPU utilisation."""
    from preprocess import shards
    from preprocess.bench import reader_batches_per_second, synthetic_photos

    with tempfile.TemporaryDirectory() as scratch:
        photos = synthetic_photos(Path(scratch) / "photos", 400, max(size, 64), max(size, 64))
        options = shards.Options(source=f"folder:{photos}", size=size, mode="resize", val_fraction=0.0)
        shards.write(options, Path(scratch) / "shards", workers=1, log=io.StringIO())
        batches_per_second, cpu_util = reader_batches_per_second(Path(scratch) / "shards", batch)
        return batch * batches_per_second, cpu_util


def run_one(args: list[str], module: str = "train.bench") -> dict:
    """The JSON result of `python -m module --one ARGS` (a fresh process: its own memory and threads)."""
    command = [sys.executable, "-m", module, "--one", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timing per configuration")
    parser.add_argument("--model", default="cgan")
    parser.add_argument("--one", nargs=3, metavar=("SIZE", "BATCH", "PRECISION"),
                        help="time this one configuration (e.g. 32 64 mixed_bfloat16) and print it as JSON")
    parser.add_argument("--profile", type=Path, default=None,
                        help="with --one: trace three steps into this folder for TensorBoard's profiler "
                             "(tensorboard --logdir FOLDER, with the xprof package: op-level times, trace viewer)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.profile and not args.one:
        parser.error("--profile needs --one SIZE BATCH PRECISION")
    if args.one:
        size, batch, precision = int(args.one[0]), int(args.one[1]), args.one[2]
        print(json.dumps(time_steps(args.model, size, batch, precision, args.seconds, args.profile)))
        return 0

    from preprocess.bench import machine, write_section

    load_before = os.getloadavg()[0]
    rows, ratio_rows = [], []
    for size, batch in CONFIGS:
        measured = {}
        for precision in PRECISIONS:
            measured[precision] = run_one([str(size), str(batch), precision, f"--seconds={args.seconds}",
                                           f"--model={args.model}"])  # fmt: skip
            result = measured[precision]
            rows.append(f"| {size} | {batch} | {precision} | {result['images_per_second']:,.1f} | "
                        f"{result['cpu_util']:.2f} | {result['peak_mib']:,.0f} |")  # fmt: skip
            print(rows[-1], file=sys.stderr)
        reader, reader_cpu = reader_images_per_second(size, batch)
        fastest = max(result["images_per_second"] for result in measured.values())
        ratio_rows.append(f"| {size} | {batch} | {reader:,.0f} | {reader_cpu:.2f} | {fastest:,.1f} | {reader / fastest:,.0f}x |")
    write_section(
        "train" if args.model == "cgan" else f"train-{args.model}",
        f"""## make train ({args.model})

Machine: {machine()}. Date: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}.
Command: `make bench` (`python -m train.bench --seconds={args.seconds:g}`): the preset for each size,
synthetic batches, {args.seconds:g} s of steps after two warm-up steps, each configuration in its own
process (peak resident memory of that process). CPU: the process's CPU seconds per wall second
while timed (up to 2 here: less means the step left a core idle or other jobs took it); load
average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.

| size | batch | precision | training images/s | CPU | peak memory MiB |
|---|---|---|---|---|---|
{chr(10).join(rows)}

The reader (`preprocess.dataset.load`, training pipeline) against the faster training step at
the same size and batch: it must deliver at least 10 times what a step consumes.

| size | batch | reader tiles/s | reader CPU | training images/s | reader / step |
|---|---|---|---|---|---|
{chr(10).join(ratio_rows)}
""",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
