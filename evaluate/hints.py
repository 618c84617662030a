"""`python -m evaluate.hints`: PSNR of a guided run as a function of the number of local hints.

    python -m evaluate.hints --run=runs/guided-tiny64 --data=data/tiny64 --split=val --limit=1000 \\
        --reference="zhang (pretrained)=23.82" --plot=docs/guided-hints-tiny64.png
    python -m evaluate.hints --model=export/pretrained/guided --data=data/tiny64 --split=val --limit=1000

As Zhang, Zhu, Isola, Geng, Lin, Yu and Efros (2017) measure their model (their Fig. 4):
the photos' true colour is revealed at N points (0, 1, 2, 5, 10, 20, 50, 100 by default)
and the mean per-image PSNR of the RGB result is plotted against N. Points are single
pixels by default (--patch=P: squares of P x P pixels set to the truth's mean colour
there; --patch=0: sides drawn from 1 to 9 pixels as in training), at positions drawn as in training (a Gaussian around the centre with a quarter of
the side as deviation; models.hints.sample_local_hints), from one stateless seed per
photo, so that the N points of one count are the first N of every larger count. Three
global hints per count:
    none        no global hint (the given flag 0): local hints alone
    own         the photo's own ab histogram and saturation: an upper bound for a reference
    same_class  the global hint of another photo of the same class in the split (from its
                labels, chosen with a fixed seed): what a well-chosen reference gives
The model sees each tile at its own size (sides must be multiples of the run's stride: 64
px Tiny ImageNet and 32 px CIFAR-10 tiles are), with the photo's own L kept, as `make
evaluate` does for photos not larger than the working size, so "none" at 0 points is the
automatic colorization that `make evaluate` scores. The gray input (a = b = 0) is scored
on the same photos as the reference every figure is compared with.

With --model an export is measured instead of a run, through its `colorize_guided`
signature, as a user's request reaches it: each hint is a pixel and a "#rrggbb" colour (the
truth's mean colour over the square the export paints there, HINT_PATCH px, so --patch is
that), the global hint is the reference photo itself (the photo, or its same-class
partner, sent as PNG; a reference the export would refuse as gray is left out for that
photo, and counted), and the result is the export's uint8 RGB.

Writes OUT/hints.json (settings, the gray input's PSNR, the mean PSNR per global hint and
count), OUT/hints.png (the curves, with the gray input and any --reference lines) and
OUT/grid.png (--grid photos spread over the split, a row each: the gray photo with its
hints marked | no hint | those hints | each global hint alone | the truth), all through
temporary names. Exit codes: 0 done, 2 bad settings or data.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from collections.abc import Iterable
from pathlib import Path

from preprocess.console import quiet_tensorflow  # noqa: E402

quiet_tensorflow(sys.argv)  # before anything imports TensorFlow

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import models  # noqa: E402
from evaluate import metrics  # noqa: E402
from models import hints  # noqa: E402
from models.config import ConfigError  # noqa: E402
from export import PRECISION_HELP, PRECISIONS, inference  # noqa: E402
from export.guidance import GuidanceError, check_reference, png_bytes  # noqa: E402
from export.savedmodel import HINT_PATCH  # noqa: E402
from preprocess import atomic, color, dataset, schema  # noqa: E402
from preprocess.preview import pairs_grid, save_png  # noqa: E402

GLOBAL_HINTS = ("none", "own", "same_class")
DEFAULT_POINTS = (0, 1, 2, 5, 10, 20, 50, 100)


def split_labels(shards: dataset.Shards, split: str) -> tuple[list[str], np.ndarray]:
    """Every tile of a split in shard order: (source ids, labels [N] int, -1 where none)."""
    ids, labels = [], []
    for record in shards.records(split):
        ids.append(record["source_id"].numpy().decode())
        labels.append(int(record["label"]))
    if not ids:
        raise ValueError(f"{shards.folder}: split {split!r} has no tiles")
    return ids, np.array(labels)


def split_tiles(shards: dataset.Shards, split: str, indices: np.ndarray) -> np.ndarray:
    """uint8 RGB tiles [len(indices), S, S, 3] of a split, by index in shard order (repeats allowed):
    only the ones asked for are kept, so that a large split need not fit in memory."""
    wanted = set(int(i) for i in indices)
    kept = {index: record["rgb"].numpy() for index, record in enumerate(shards.records(split)) if index in wanted}
    return np.stack([kept[int(i)] for i in indices])


def evaluated_indices(count: int, limit: int) -> np.ndarray:
    """The photos `make evaluate --limit` scores, as indices into the split in shard order: `limit`
    spread evenly over it (Shards.records), so that both commands score the same photos."""
    if not limit or limit >= count:
        return np.arange(count)
    return np.arange(0, count, max(1, count // limit))[:limit]


def same_class_partners(labels: np.ndarray, chosen: np.ndarray, seed: int = 0) -> np.ndarray:
    """For each chosen photo, the index of another photo of its class (labels [N] over the whole
    split), drawn with `seed`; -1 where the photo has no label or is alone in its class."""
    rng = np.random.default_rng(seed)
    partners = np.full(len(chosen), -1)
    for k, index in enumerate(chosen):
        if labels[index] == schema.NO_LABEL:
            continue
        others = np.flatnonzero((labels == labels[index]) & (np.arange(len(labels)) != index))
        if len(others):
            partners[k] = rng.choice(others)
    return partners


class RunHints:
    """A run's generator fed hints as in training: squares painted in model space."""

    gray_references = 0  # a run takes any global hint

    def __init__(self, generator, patch_sides: tuple[int, ...]):
        largest = max(patch_sides)
        self._truth_hints = tf.function(lambda *args: hints.patches_of_truth(*args, largest=largest),
                                        reduce_retracing=True)  # fmt: skip
        self._colorize = tf.function(lambda gray, local, global_hint: color.model_to_rgb(
            gray, generator([gray, local, global_hint], training=False)), reduce_retracing=True)  # fmt: skip

    def global_hint(self, photos: np.ndarray) -> np.ndarray:
        """Reference photos -> their global hints [N, G]."""
        return hints.global_hint(color.rgb_to_model(photos)[1]).numpy()

    def __call__(self, truth: np.ndarray, corners: tf.Tensor, sides: tf.Tensor, count: int,
                 global_hint: np.ndarray | None) -> np.ndarray:  # fmt: skip
        gray, real_color = color.rgb_to_model(truth)
        local = self._truth_hints(real_color, corners, sides, tf.fill([len(truth)], count))
        global_hint = hints.no_global_hint(len(truth)) if global_hint is None else tf.constant(global_hint)
        return self._colorize(gray, local, global_hint).numpy()


class ExportHints:
    """An export's `colorize_guided` signature fed what a user sends: pixels, colours, reference photos."""

    def __init__(self, colorizer: inference.Colorizer):
        self.colorizer = colorizer
        self.gray_references = 0  # photos whose reference the export would refuse, sent without one

    def global_hint(self, photos: np.ndarray) -> np.ndarray:
        """Reference photos -> their PNG bytes, b"" for one the export would refuse as gray."""
        references = []
        for photo in photos:
            try:
                check_reference(photo, "a reference")
                references.append(png_bytes(photo))
            except GuidanceError:
                self.gray_references += 1
                references.append(b"")
        return np.array(references, dtype=object)

    def __call__(self, truth: np.ndarray, corners: tf.Tensor, sides: tf.Tensor, count: int,
                 global_hint: np.ndarray | None) -> np.ndarray:  # fmt: skip
        corners = corners.numpy()[:, :count]  # [B, count, 2]
        side = HINT_PATCH
        colours = [["#%02x%02x%02x" % tuple(np.round(photo[y:y + side, x:x + side].reshape(-1, 3).mean(0)).astype(int))
                    for y, x in photo_corners] for photo, photo_corners in zip(truth, corners)]  # fmt: skip
        centres = corners + (side - 1) // 2
        references = [b""] * len(truth) if global_hint is None else list(global_hint)
        working_size = truth.shape[1]  # each photo at its own size, as for a run
        return self.colorizer.colorize_each(truth, working_size, centres[..., 0], centres[..., 1], colours, references)


def hint_patches(photos: Iterable[int], height: int, width: int, points: int, patch: int,
                 seed: int = 0) -> tuple[tf.Tensor, tf.Tensor]:  # fmt: skip
    """Where the hints of the photos numbered `photos` go: (corners [M, points, 2], sides [M, points]).
    Photo i's are drawn with the stateless seed (seed, i): the same whatever the batch, and the
    first N of them are the N hints of every count, so counts are nested."""
    sizes = (patch,) if patch else hints.PATCH_SIZES
    placed = [hints.sample_patches(tf.constant([seed, int(i)], tf.int64), 1, height, width, points, sizes)
              for i in photos]  # fmt: skip
    return tf.concat([corner for corner, _ in placed], 0), tf.concat([side for _, side in placed], 0)


def psnr_by_points(colorize: RunHints | ExportHints, rgb: np.ndarray, global_hints: dict[str, np.ndarray | None],
                   points: list[int], patch: int, batch_size: int = 50, seed: int = 0) -> dict[str, dict[int, list[float]]]:  # fmt: skip
    """Per-image PSNRs {global hint name: {N: [PSNR per photo]}} of uint8 RGB photos [M, S, S, 3].

    global_hints: name -> [M, ...] global hints as `colorize.global_hint` makes them, or None
    for none. Photo i's hints are the first N of `hint_patches`.
    """
    corners, sides = hint_patches(range(len(rgb)), *rgb.shape[1:3], max(points), patch, seed)
    scores = {name: {n: [] for n in points} for name in global_hints}
    for start in range(0, len(rgb), batch_size):
        truth = rgb[start:start + batch_size]
        chosen = slice(start, start + len(truth))
        for n in points:
            for name, values in global_hints.items():
                output = colorize(truth, corners[chosen], sides[chosen], n, None if values is None else values[chosen])
                scores[name][n] += [metrics.psnr(t, o) for t, o in zip(truth, output)]
    return scores


def marked_gray(truth: np.ndarray, corners: np.ndarray, sides: np.ndarray) -> np.ndarray:
    """The gray photo (uint8 RGB [S, S, 3]) with each hint square (corners [K, 2], sides [K]) in the
    truth's mean colour over it, framed in black so that it shows on any gray: what was given."""
    gray, _ = color.rgb_to_model(truth)
    marked = color.model_to_rgb(gray, tf.zeros(truth.shape[:2] + (2,))).numpy()
    for (y, x), side in zip(corners, sides):
        colour = np.round(truth[y:y + side, x:x + side].reshape(-1, 3).mean(0))
        marked[max(y - 1, 0):y + side + 1, max(x - 1, 0):x + side + 1] = 0
        marked[y:y + side, x:x + side] = colour
    return marked


def example_grid(colorize: RunHints | ExportHints, rgb: np.ndarray, global_hints: dict[str, np.ndarray | None],
                 points: list[int], patch: int, count: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """A picture of what the curve measures, for `count` of the photos spread over them (so over
    the classes of a split in class order): (uint8 grid, its column names). Per photo: the gray
    photo with the hints marked, the colorization with no hint, with those hints, with each
    global hint and no local one, and the truth; the hints are the largest count of `points`
    up to 10 (else the smallest above 0)."""
    shown = max((n for n in points if 0 < n <= 10), default=min((n for n in points if n > 0), default=0))
    picks = np.unique(np.linspace(0, len(rgb) - 1, min(count, len(rgb))).round().astype(int))
    corners, sides = hint_patches(picks, *rgb.shape[1:3], max(points), patch, seed)
    truth = rgb[picks]
    marked = [marked_gray(t, c[:shown], s[:shown]) for t, c, s in zip(truth, corners.numpy(), sides.numpy())]
    columns = [np.stack(marked), colorize(truth, corners, sides, 0, None)]
    names = [f"gray, {shown} hints marked", "no hint"]
    if shown:
        columns.append(colorize(truth, corners, sides, shown, None))
        names.append(f"{shown} hints")
    for name, values in global_hints.items():
        if values is not None:
            columns.append(colorize(truth, corners, sides, 0, values[picks]))
            names.append(f"global hint: {name}")
    return pairs_grid([*columns, truth], per_row=1), [*names, "truth"]


def plot(results: dict, path: Path, references: dict[str, float]) -> None:
    """PSNR against the number of hints (symlog axis so that 0 shows), one line per global hint."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    labels = {"none": "no global hint", "own": "global hint: the photo's own (upper bound)",
              "same_class": "global hint: another photo of its class"}  # fmt: skip
    for name, by_points in results["psnr"].items():
        counts = sorted(int(n) for n in by_points)
        axes.plot(counts, [by_points[str(n)] for n in counts], marker="o", label=labels[name])
    axes.axhline(results["gray_psnr"], color="gray", linestyle=":", label=f"gray input ({results['gray_psnr']:.2f} dB)")
    for (name, value), style in zip(references.items(), ["--", "-.", (0, (5, 1)), (0, (1, 1))] * 4):
        axes.axhline(value, color="black", linestyle=style, linewidth=1, label=f"{name} ({value:.2f} dB)")
    axes.set_xscale("symlog", linthresh=1)
    counts = sorted(int(n) for n in next(iter(results["psnr"].values())))
    axes.set_xticks(counts, [str(n) for n in counts])
    axes.set_xlim(-0.3, counts[-1] * 1.3)  # symlog's margins would reach far below 0
    patch = results["patch"]
    revealed = {0: "squares of 1 to 9 px, as in training", 1: "single pixels"}.get(patch, f"squares of {patch} px")
    axes.set_xlabel(f"local hints revealed ({revealed})")
    axes.set_ylabel("mean PSNR (dB)")
    axes.set_title(f"{results['label']} on {Path(results['data']).name} {results['split']} "
                   f"({results['photos']} photos)", fontsize=10)  # fmt: skip
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m evaluate.hints", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a run of MODEL=guided")
    source.add_argument("--model", type=Path, help="or an export of one (e.g. export/pretrained/guided)")
    add("--checkpoint", default="latest", help="of --run: best | latest | a checkpoint path (default: latest)")
    add("--version", type=int, default=None, help="of --model: the export version (default: the newest)")
    add("--precision", choices=PRECISIONS, default="auto", help=f"of --model: {PRECISION_HELP}")
    add("--data", required=True, type=Path, help="a shards folder with colour tiles")
    add("--split", default=None, help="shard split (default: test, else val)")
    add("--limit", type=int, default=0, help="N photos spread over the split, as make evaluate --limit (default: all)")
    add("--points", default=",".join(map(str, DEFAULT_POINTS)), help="numbers of local hints, e.g. 0,1,10")
    add("--patch", type=int, default=None, help="side of each hint's square in pixels, 1..9 (default: 1, single "
        f"pixels; with --model {HINT_PATCH}, the only one an export makes); 0: drawn from 1..9 as in training")  # fmt: skip
    add("--seed", type=int, default=0, help="of the hints' positions and the same-class picks")
    add("--batch", type=int, default=50, help="photos per model call")
    add("--name", default=None, help="report name (default: hints-<data folder>)")
    add("--out", type=Path, default=Path("reports"), help="where reports go (default: reports)")
    add("--plot", type=Path, default=None, help="also write the plot here (e.g. docs/guided-hints.png)")
    add("--grid", type=int, default=8, help="photos in OUT/grid.png, a picture of the colorizations (default: 8)")
    add("--reference", action="append", default=[], help="NAME=dB: a horizontal line, e.g. an automatic model's PSNR")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines")
    return parser.parse_args(argv)


def _references(values: list[str]) -> dict[str, float]:
    references = {}
    for value in values:
        name, _, number = value.rpartition("=")
        try:
            references[name] = float(number)
        except ValueError:
            raise ConfigError(f"--reference={value!r}: expected NAME=dB, e.g. 'zhang=23.82'") from None
        if not name:
            raise ConfigError(f"--reference={value!r}: expected NAME=dB, e.g. 'zhang=23.82'")
    return references


def _points(text: str) -> list[int]:
    try:
        points = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"--points={text}: expected whole numbers separated by commas, e.g. 0,1,10") from None
    if not points or points[0] < 0:
        raise ConfigError(f"--points={text}: expected numbers >= 0")
    return points


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        points, references = _points(args.points), _references(args.reference)
        if args.patch is None:
            args.patch = HINT_PATCH if args.model else 1
        if not 0 <= args.patch <= 9 or args.batch < 1 or args.limit < 0 or args.grid < 0:
            raise ConfigError("--patch must be in 0..9, --batch at least 1, --limit and --grid at least 0")
        if args.model and args.patch != HINT_PATCH:
            raise ConfigError(f"--patch={args.patch}: an export paints every hint as a square of {HINT_PATCH} px")
        if args.model:
            colorizer = inference.Colorizer(args.model, args.version, args.precision)
            if not colorizer.takes_hints:
                raise ConfigError(f"{colorizer.path}: an export of MODEL={colorizer.info['model']}, "
                                  "which takes no hints; this measures MODEL=guided")  # fmt: skip
            measured, label, stride = colorizer.path, colorizer.label, colorizer.info["stride"]
        else:
            saved = models.read_run_config(args.run)
            if saved.model != "guided":
                raise ConfigError(f"{args.run}: a run of MODEL={saved.model}; this measures MODEL=guided runs")
            measured, label, stride = args.run, args.run.name, saved.model_config.stride
        shards = dataset.Shards(args.data)
        shards.require_color("the scores need the true colour")
        split = args.split or ("test" if "test" in shards.splits and shards.splits["test"].tiles else "val")
        ids, labels = split_labels(shards, split)
        if shards.tile_size % stride:
            raise ConfigError(f"{args.data}: tiles of {shards.tile_size} px; {measured} needs sides that are "
                              f"multiples of {stride}")  # fmt: skip
        if args.model:
            colorize: RunHints | ExportHints = ExportHints(colorizer)
        else:
            sides = (args.patch,) if args.patch else hints.PATCH_SIZES
            colorize = RunHints(models.build_from_run(args.run, args.checkpoint)["generator"], sides)
    except (ConfigError, FileNotFoundError, ValueError, inference.ExportNotFound) as error:
        print(f"evaluate.hints: {error}", file=sys.stderr)
        return 2

    chosen = evaluated_indices(len(ids), args.limit)
    truth = split_tiles(shards, split, chosen)
    global_hints: dict[str, np.ndarray | None] = {"none": None}
    global_hints["own"] = colorize.global_hint(truth)
    partners = same_class_partners(labels, chosen, args.seed)
    if (partners >= 0).all():
        partner_tiles = split_tiles(shards, split, partners)
        global_hints["same_class"] = colorize.global_hint(partner_tiles)
    else:
        print(f"evaluate.hints: {int((partners < 0).sum())} of {len(chosen)} photos have no other photo of their class "
              f"(or no labels); leaving out the same-class reference", file=sys.stderr)  # fmt: skip

    scores = psnr_by_points(colorize, truth, global_hints, points, args.patch, args.batch, args.seed)
    gray = color.model_to_rgb(color.rgb_to_model(truth)[0], tf.zeros(truth.shape[:3] + (2,))).numpy()
    results = {
        "run": str(measured), "label": label, "checkpoint": None if args.model else args.checkpoint,
        "data": str(args.data), "split": split, "photos": len(chosen), "patch": args.patch,
        "gray_references": colorize.gray_references, "seed": args.seed, "points": points,
        "gray_psnr": float(np.mean([metrics.psnr(t, g) for t, g in zip(truth, gray)])),
        "psnr": {name: {str(n): float(np.mean(values)) for n, values in by_points.items()}
                 for name, by_points in scores.items()},
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {platform.python_version()}, TensorFlow {tf.__version__}",
    }  # fmt: skip
    out = args.out / (args.name or f"hints-{args.data.name}")
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "hints.json", json.dumps(results, indent=2) + "\n")
    plot(results, out / "hints.png", references)
    if args.plot:
        plot(results, args.plot, references)
    if args.grid:
        grid, columns = example_grid(colorize, truth, global_hints, points, args.patch, args.grid, args.seed)
        save_png(grid, out / "grid.png")
        print(f"grid.png, a row per photo: {' | '.join(columns)}")
    width = max(len(name) for name in results["psnr"])
    print(f"{'points':>{width}} " + " ".join(f"{n:>6}" for n in points))
    for name, by_points in results["psnr"].items():
        print(f"{name:>{width}} " + " ".join(f"{by_points[str(n)]:6.2f}" for n in points))
    if results["gray_references"]:
        print(f"{results['gray_references']} reference photos were gray (the export refuses them): "
              "those photos were colorized without a reference")  # fmt: skip
    print(f"gray input {results['gray_psnr']:.2f} dB; wrote {out / 'hints.json'} and {out / 'hints.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
