"""`python -m evaluate` (what `make evaluate` runs): score runs and exports side by side.

    python -m evaluate --run=runs/cgan --run=runs/regression --data=data/cifar10 --name=cifar10
    python -m evaluate --run=runs/cgan --checkpoints=all --data=data/cifar10      # pick the best epoch
    python -m evaluate --export=exports/cgan --data=~/photos                       # a photo folder
    python -m evaluate --run=runs/zhang --temperatures=0.2,0.38,0.6,1 --data=data/tiny64  # decoding sweep

Every model colorizes each photo at its native size the way `colorize` does (the model at
its working size, ab upsampled, the photo's own L kept: export/savedmodel.py's
`colorize_pixels`), next to the grayscale baseline. Writes reports/<name>/ (see
evaluate/report.py). Exit codes: 0 done, 2 bad settings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from preprocess.console import quiet_tensorflow  # noqa: E402

quiet_tensorflow(sys.argv)  # before anything imports TensorFlow: its log lines only with --verbose

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tqdm import tqdm  # noqa: E402

import models  # noqa: E402
from evaluate import classifier as classifier_lib  # noqa: E402
from evaluate.report import Model, evaluate  # noqa: E402
from export import PRECISION_HELP, PRECISIONS  # noqa: E402
from export.inference import Colorizer, ExportNotFound  # noqa: E402
from export.savedmodel import colorize_pixels  # noqa: E402
from models.config import ConfigError, from_dict  # noqa: E402
from preprocess import dataset, schema, sources  # noqa: E402
from preprocess.images import UnusableImage, load_rgb  # noqa: E402
from train.config import TrainConfig, open_data  # noqa: E402


def shard_images(shards: dataset.Shards, split: str, limit: int = 0) -> Iterator[tuple[str, np.ndarray, int]]:
    """(source id, uint8 RGB tile, label) of one split in shard order; with `limit`, that many
    spread evenly over the split (shards are often in class order, so not the first ones),
    in a fixed shuffled order, so that the report's grid (its first photos) mixes classes."""
    records = shards.records(split, limit)
    if limit:
        records = records.shuffle(limit, seed=0, reshuffle_each_iteration=False)
    for record in records:
        yield record["source_id"].numpy().decode(), record["rgb"].numpy(), int(record["label"])


def folder_images(root: Path) -> Iterator[tuple[str, np.ndarray, int]]:
    """(path, uint8 RGB photo, -1) of every usable colour photo under root; others are reported."""
    skipped: list[dict] = []
    for path in sources.list_images(root, skipped):
        try:
            yield str(path.relative_to(root)), load_rgb(path), schema.NO_LABEL
        except UnusableImage as error:
            print(f"skipped {error}", file=sys.stderr)
    for skip in skipped:
        print(f"skipped {skip['source']}: {skip['reason']}", file=sys.stderr)


def checkpoint_models(run: Path, which: str, temperatures: list[float] = (), rebalances: list[float] = (),
                      gains: list[float] = ()) -> tuple[dict[str, Model], dict[str, float]]:  # fmt: skip
    """The run's checkpoints as models, and each one's epoch when `which` is "all".

    A model that decodes with a temperature (zhang) is evaluated at each of `temperatures`
    as "name@T=t", at each of `rebalances` (its --decode_rebalance) as "name@r=r,T=t", and
    at each of `gains` (its --chroma_gain) as "name@g=g,T=t" (or "name@r=r,g=g,T=t"); at
    its own settings when none are given.
    """
    saved = models.read_run_config(run)
    size = models.working_size(saved)
    stride = saved.model_config.stride
    if which == "all":
        paths = tf.train.get_checkpoint_state(run / models.CHECKPOINT_DIR)
        paths = list(paths.all_model_checkpoint_paths) if paths else []
        if not paths:
            raise FileNotFoundError(f"{run}: no checkpoints in {run / models.CHECKPOINT_DIR}")
    else:
        paths = [which]
    per_epoch = steps_per_epoch(saved)
    found, epochs = {}, {}
    for path in paths:
        generator = models.build_from_run(run, path)["generator"]
        name = run.name if which != "all" else f"{run.name}@{Path(path).name.split('-')[-1]}"
        if any(rebalances) and hasattr(generator, "log_rebalance"):
            models.require_decoding_weights(generator, run)
        if (temperatures or rebalances or gains) and hasattr(saved.model_config, "temperature"):
            decodings = {}
            for rebalance in rebalances or [None]:
                for gain in gains or [None]:
                    for t in temperatures or [saved.model_config.temperature]:
                        settings = [] if rebalance is None else [f"r={rebalance:g}"]
                        settings += [] if gain is None else [f"g={gain:g}"]
                        key = f"{name}@{','.join([*settings, f'T={t:g}'])}"
                        decodings[key] = (t, generator.decode_rebalance if rebalance is None else rebalance,
                                          generator.chroma_gain if gain is None else gain)  # fmt: skip
            sweep = DecodingSweep(generator, size, stride, list(decodings.values()))
            found.update({key: sweep.model(index) for index, key in enumerate(decodings)})
        else:
            found[name] = _colorizer(generator, size, stride)
        if which == "all" and per_epoch:
            epochs.update({key: int(Path(path).name.split("-")[-1]) / per_epoch for key in found
                           if key == name or key.startswith(f"{name}@")})  # fmt: skip
    return found, epochs


def steps_per_epoch(saved: models.SavedRun) -> int:
    """The run's own epoch length, as its config.json records it (a run from before that: from
    its training data), or 0 when it cannot be told."""
    if "steps_per_epoch" in saved.data:
        return int(saved.data["steps_per_epoch"])
    try:
        return open_data(from_dict(TrainConfig, saved.train_config))[1]
    except (ConfigError, OSError, KeyError, ValueError):
        return 0


# Pixels of the images one call of a model colorizes (photos, times a sweep's decodings), each
# counted at least at the working size: the network's temporaries grow with them.
CALL_PIXELS = 1 << 21


def in_calls(colorize: Model, size: int, copies: int = 1, max_pixels: int = CALL_PIXELS) -> Model:
    """`colorize` of photos [N, H, W, 3] -> [N, ...], over as few photos per call as keep each
    call's `copies` x N images of at least size x size pixels within `max_pixels`."""

    def colorize_all(rgb: np.ndarray) -> np.ndarray:
        step = max(1, max_pixels // (copies * max(rgb[0, ..., 0].size, size * size)))
        return np.concatenate([colorize(rgb[start:start + step]) for start in range(0, len(rgb), step)])

    return colorize_all


def _colorizer(generator, size: int, stride: int) -> Model:
    # One trace per photo shape; CIFAR-style tiles all share one.
    run = tf.function(lambda pixels: colorize_pixels(generator, pixels, size, stride), reduce_retracing=True)
    return in_calls(lambda rgb: run(tf.constant(rgb)).numpy(), size)


class DecodingSweep:
    """A zhang generator at D decodings, (temperature, decode_rebalance, chroma_gain) each, as D
    models that share one pass of its network per photo.

    `evaluate` gives every model the same photos in turn: the first of these models to see
    them colorizes them all D ways at once (the network once, then D decodings, each upsampled
    as `colorize` does), the others take their copy. A sweep of 21 decodings costs about
    what one model does instead of 21.
    """

    def __init__(self, generator, size: int, stride: int, decodings: list[tuple[float, float, float]],
                 max_pixels: int = CALL_PIXELS) -> None:  # fmt: skip
        temperatures, rebalances, gains = (tf.constant(values, tf.float32) for values in zip(*decodings))
        count = len(decodings)

        def every_decoding(inputs, training=False):
            gray, _ = inputs  # each photo D times in a row
            return generator.decode_each(gray[::count], temperatures, rebalances, gains)

        def colorize(pixels):
            photos = tf.shape(pixels)[0]
            colorized = colorize_pixels(every_decoding, tf.repeat(pixels, count, axis=0), size, stride,
                                        tf.tile(temperatures, [photos]))  # fmt: skip
            return tf.reshape(colorized, tf.concat([[photos, count], tf.shape(pixels)[1:]], 0))

        run = tf.function(colorize, reduce_retracing=True)
        self._colorize_all = in_calls(lambda rgb: run(tf.constant(rgb)).numpy(), size, count, max_pixels)
        self._photos: np.ndarray | None = None
        self._colorized: np.ndarray | None = None

    def model(self, index: int) -> Model:
        """The colorizer at decodings[index]."""

        def colorize(rgb: np.ndarray) -> np.ndarray:
            # Compared by content, not identity: a caller may refill one buffer with the next photos.
            if self._photos is None or self._photos.shape != rgb.shape or not np.array_equal(self._photos, rgb):
                self._colorized = self._colorize_all(rgb)
                self._photos = np.array(rgb)
            return self._colorized[:, index]

        return colorize


def parse_values(key: str, text: str, minimum: float, inclusive: bool) -> list[float]:
    """"0.2,0.38,1" -> [0.2, 0.38, 1.0]; each must be > minimum (>= when `inclusive`)."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--{key}={text}: expected numbers separated by commas, e.g. 0.2,0.38,1") from None
    if any(value < minimum or value == minimum and not inclusive for value in values):
        raise ConfigError(f"--{key}={text}: values must be {'>=' if inclusive else '>'} {minimum:g}")
    return values


def prior_of(shards: dataset.Shards | None, runs: list[Path]) -> np.ndarray | None:
    """The ab prior for the rebalanced AuC: of the evaluated shards, else of a run's training data."""
    if shards is not None and shards.ab_prior is not None:
        return shards.ab_prior.astype(np.float64)
    for run in runs:
        prior = models.training_prior(models.read_run_config(run))
        if prior is not None:
            return prior.astype(np.float64)
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evaluate", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--run", action="append", default=[], type=Path, help="a run folder (repeat for several)")
    add("--export", action="append", default=[], type=Path, help="an export folder (repeat for several)")
    add("--checkpoints", default="best", help="best | latest | all (every kept checkpoint: metrics by epoch)")
    add("--data", required=True, type=Path, help="a shards folder or a folder of colour photos")
    add("--split", default=None, help="shard split (default: test, else val)")
    add("--limit", type=int, default=0, help="evaluate N images, spread over the split (default: all)")
    add("--classifier", type=Path, default=None, help="folder of `make classifier` for semantic accuracy")
    add("--name", default=None, help="report name (default: from the data folder)")
    add("--out", type=Path, default=Path("reports"), help="where reports go (default: reports)")
    add("--grid", type=int, default=8, help="photos in grid.png (default: 8)")
    add("--temperatures", default="", help="decode models that take a temperature (zhang) at each of these, "
        "e.g. 0.2,0.38,0.6,1: the PSNR / colourfulness trade-off in tradeoff.png")  # fmt: skip
    add("--decode-rebalance", default="", help="zhang: also sweep its rebalancing at decoding, e.g. 0,0.5,1")
    add("--chroma-gains", default="", help="zhang: also sweep its chroma gain at decoding, e.g. 1,1.2,1.4")
    add("--precision", choices=PRECISIONS, default="auto", help=f"--export only: {PRECISION_HELP}")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.run and not args.export:
        print("make evaluate: give at least one RUN=<run folder> or EXPORT=<export folder>", file=sys.stderr)
        return 2
    try:
        evaluated: dict[str, Model] = {}
        epochs: dict[str, float] = {}
        temperatures = parse_values("temperatures", args.temperatures, 0.0, inclusive=False)
        rebalances = parse_values("decode-rebalance", args.decode_rebalance, 0.0, inclusive=True)
        gains = parse_values("chroma-gains", args.chroma_gains, 0.0, inclusive=False)
        for run in args.run:
            found, found_epochs = checkpoint_models(run, args.checkpoints, temperatures, rebalances, gains)
            evaluated.update(found)
            epochs.update(found_epochs)
        for export in args.export:
            colorizer = Colorizer(export, precision=args.precision)
            evaluated[colorizer.label] = in_calls(colorizer.colorize_batch, colorizer.info["working_size"])
        shards = dataset.Shards(args.data) if (args.data / dataset.MANIFEST).exists() else None
        if shards is not None:
            shards.require_color("evaluate on colour shards or a folder of colour photos: the scores need the true colour")
            split = args.split or ("test" if "test" in shards.splits and shards.splits["test"].tiles else "val")
            images = shard_images(shards, split, args.limit)
        elif args.data.is_dir():
            images = islice(folder_images(args.data), args.limit or None)
        else:
            raise FileNotFoundError(f"{args.data}: neither a shards folder nor a folder of photos")
        classifier = classifier_lib.load(args.classifier) if args.classifier else None
        prior = prior_of(shards, args.run)
    except (ConfigError, ExportNotFound, FileNotFoundError, ValueError) as error:
        print(f"make evaluate: {error}", file=sys.stderr)
        return 2
    out = args.out / (args.name or args.data.name)
    images = tqdm(images, desc="make evaluate", unit="photo", total=args.limit or None, disable=None)  # a terminal only
    results = evaluate(evaluated, images, out, prior, classifier, args.grid, epochs or None)
    print((out / "metrics.md").read_text(), file=sys.stderr)
    print(f"report: {out} ({len(results['images'])} photos)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
