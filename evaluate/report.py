"""The report of `make evaluate`: the grayscale baseline and every model scored on the same photos.

`evaluate` writes into `out_dir` (each file under a temporary name first, then renamed):
    metrics.json          per model the mean of every metric and the per-image scores
    metrics.md            a Markdown table: one row per model, the baseline first; units in the header
    grid.png              gray | each model | truth, for the first `grid_count` photos
    tradeoff.png          PSNR against colourfulness per model (a temperature sweep as one line),
                          with the baseline and the truth's colourfulness for scale
    metrics_by_epoch.png  every metric against the training epoch, when the models are the
                          checkpoints of one run (GAN losses do not say which epoch is best: look)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import keras
import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in tests
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from evaluate import metrics  # noqa: E402
from evaluate.classifier import semantic_accuracy  # noqa: E402
from preprocess import atomic  # noqa: E402
from preprocess.preview import pairs_grid, save_png  # noqa: E402

BASELINE = "baseline"  # the input itself: the original L with a = b = 0
SEMANTIC = "semantic_accuracy"
LABELS = {**metrics.LABELS, SEMANTIC: "classifier acc."}
# the same in every row, so it is stated once under the table instead
TRUTH_ONLY = "colorfulness_truth"

# A model: uint8 RGB photos of one size [N, H, W, 3] (only their L may be used) -> uint8 RGB
# colorizations [N, H, W, 3].
Model = Callable[[np.ndarray], np.ndarray]

# Consecutive photos of one size are colorized and scored together, up to this many pixels:
# a call per photo left a core idle and cost more than a small photo's work (BENCHMARKS.md).
BATCH_PIXELS = 1 << 18


def same_size_batches(images: Iterable[tuple[str, np.ndarray, int]],
                      max_pixels: int = BATCH_PIXELS) -> Iterator[list[tuple[str, np.ndarray, int]]]:  # fmt: skip
    """`images` in order, in runs of consecutive photos of one shape and dtype, each run at most
    `max_pixels` in all (but never less than one photo)."""
    batch: list[tuple[str, np.ndarray, int]] = []
    for name, photo, label in images:
        photo = np.asarray(photo)
        if batch and (photo.shape != batch[0][1].shape or photo.dtype != batch[0][1].dtype
                      or (len(batch) + 1) * photo[..., 0].size > max_pixels):  # fmt: skip
            yield batch
            batch = []
        batch.append((name, photo, label))
    if batch:
        yield batch


def evaluate(
    models: dict[str, Model],
    images: Iterable[tuple[str, np.ndarray, int]],
    out_dir: str | Path,
    prior: np.ndarray | None = None,
    classifier: keras.Model | None = None,
    grid_count: int = 8,
    epochs: dict[str, float] | None = None,
    batch_pixels: int = BATCH_PIXELS,
) -> dict:
    """Scores the baseline and `models` on `images` and writes the report; returns metrics.json's content.

    images: (name, uint8 RGB truth [H, W, 3], label or -1) at any sizes; each is read once,
        and consecutive ones of one size go to the models together (`same_size_batches`).
    prior: ab-bin counts [Q] of the training data (a manifest's "ab_prior" counts), for the
        rebalanced AuC; without it that column is left out.
    classifier: adds the semantic-interpretability column, computed on the labelled images of
        the classifier's input size (the others are skipped for that column only).
    epochs: the training epoch of each model that is a checkpoint of one run; adds the plot.
    """
    if BASELINE in models:
        raise ValueError(f"{BASELINE!r} is the grayscale baseline's name; give the model another")
    unknown = set(epochs or ()) - set(models)
    if unknown:
        raise ValueError(f"epochs given for models that are not evaluated: {', '.join(sorted(unknown))}")
    models = {BASELINE: metrics.grayscale, **models}
    names: list[str] = []
    scores: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    grid_rows: list[list[np.ndarray]] = []  # [baseline, *models, truth] per grid photo
    labelled_rows: list[list[np.ndarray]] = []  # the same per photo the classifier can label
    labels: list[int] = []
    bin_weights = None if prior is None else metrics.rebalancing_weights(prior)
    for batch in same_size_batches(images, batch_pixels):
        batch_names = [name for name, _, _ in batch]
        truths = np.stack([truth for _, truth, _ in batch])
        try:
            truths_scored = metrics.Truth.of_batch(truths, bin_weights)
        except ValueError as error:
            raise ValueError(f"{_listed(batch_names)}: {error}") from None
        outputs = [np.asarray(model(truths)) for model in models.values()]
        for model_name, output in zip(models, outputs):
            try:
                scores[model_name].extend(metrics.score_batch(truths_scored, output))
            except ValueError as error:
                raise ValueError(f"{model_name} on {_listed(batch_names)}: {error}") from None
        for index, (_, truth, label) in enumerate(batch):
            if len(names) + index < grid_count:
                grid_rows.append([*(output[index] for output in outputs), truth])
            if classifier is not None and label >= 0 and truth.shape == tuple(classifier.input_shape[1:]):
                labelled_rows.append([*(output[index] for output in outputs), truth])
                labels.append(label)
        names.extend(batch_names)
    if not names:
        raise ValueError("no images to evaluate")

    def semantic(column: int) -> float:
        return semantic_accuracy(classifier, np.stack([row[column] for row in labelled_rows]), np.array(labels))

    results: dict = {"images": names, "semantic_images": len(labels), "models": {}}
    for column, name in enumerate(models):
        mean = metrics.aggregate(scores[name])
        if labels:
            mean[SEMANTIC] = semantic(column)
        # per_image[i] scores images[i]
        results["models"][name] = {"mean": mean, "per_image": scores[name]}
    results["truth"] = {"colorfulness": results["models"][BASELINE]["mean"][TRUTH_ONLY]}
    if labels:
        results["truth"][SEMANTIC] = semantic(len(models))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out_dir / "metrics.json", json.dumps(results, indent=1) + "\n")
    atomic.write_text(out_dir / "metrics.md", markdown(results))
    if grid_rows:
        save_png(_grid(grid_rows), out_dir / "grid.png")
    plot_tradeoff(results, out_dir / "tradeoff.png")
    if epochs:
        by_epoch = {epochs[name]: results["models"][name]["mean"] for name in epochs}
        plot_by_epoch(by_epoch, out_dir / "metrics_by_epoch.png", baseline=results["models"][BASELINE]["mean"])
    return results


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} (one of {len(names)} photos)"


def markdown(results: dict) -> str:
    """The table of metrics.md from `evaluate`'s results: rows models, columns metrics with units."""
    means = {name: model["mean"] for name, model in results["models"].items()}
    keys = _columns(means[BASELINE])
    lines = [
        "# Colorization report",
        "",
        f"Means over {len(results['images'])} images. `{BASELINE}` is the grayscale input (a = b = 0). "
        f"PSNR is capped at {metrics.PSNR_CAP:g} dB (identical images).",
        "",
        "| model | " + " | ".join(LABELS[key] for key in keys) + " |",
        "|---|" + "---:|" * len(keys),
        *(f"| {name} | " + " | ".join(f"{mean[key]:.4g}" for key in keys) + " |" for name, mean in means.items()),
        "",
        f"The truth: colourfulness {results['truth']['colorfulness']:.4g}",
    ]
    if SEMANTIC in results["truth"]:
        lines[-1] += (f", classifier accuracy {results['truth'][SEMANTIC]:.4g} on the "
                      f"{results['semantic_images']} labelled images the column scores")  # fmt: skip
    return "\n".join(lines) + ".\n"


def plot_by_epoch(
    results_by_epoch: dict[float, dict[str, float]], path: str | Path, baseline: dict[str, float] | None = None
) -> None:
    """PNG with one panel per metric, its mean against the epoch of each checkpoint of a run;
    the baseline, when given, as a dashed line for scale."""
    epochs = sorted(results_by_epoch)
    keys = _columns(results_by_epoch[epochs[0]])
    columns = min(4, len(keys))
    rows = -(-len(keys) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    for axis, key in zip(axes.flat, keys):
        axis.plot(epochs, [results_by_epoch[epoch][key] for epoch in epochs], marker="o")
        if baseline is not None and key in baseline:
            axis.axhline(baseline[key], color="gray", linestyle="--", label=BASELINE)
        axis.set_title(LABELS[key], fontsize=10)
        axis.set_xlabel("epoch")
    for axis in axes.flat[len(keys) :]:
        axis.set_visible(False)
    if baseline is not None:
        axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    with atomic.replacing(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)


def plot_tradeoff(results: dict, path: str | Path) -> None:
    """PNG: mean PSNR against mean colourfulness of every model of `evaluate`'s results.

    Models named "NAME@T=t", "NAME@r=r,T=t" or "NAME@r=r,g=g,T=t" (a temperature sweep) are
    joined into one line per NAME (and r, g), each point labelled by its t.
    The baseline's PSNR and the truth's colourfulness (and 80% of it) are drawn as lines:
    a good colorizer sits above the first and near the second.
    """
    means = {name: model["mean"] for name, model in results["models"].items()}
    baseline = means.pop(BASELINE)
    series: dict[str, list[tuple[float, str]]] = {}
    for name in means:
        family, temperature = name, 0.0
        if "T=" in name:
            family, temperature = name[: name.rindex("T=")].rstrip("@,"), float(name[name.rindex("T=") + 2 :])
        series.setdefault(family, []).append((temperature, name))
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    # Matplotlib's default cycle repeats after 10 lines, and two runs swept over seven
    # strengths are 14: a colour per line from a larger palette, a line style per model.
    palette = plt.get_cmap("tab10" if len(series) <= 10 else "tab20").colors
    model_names = list(dict.fromkeys(family.split("@")[0] for family in series))
    for index, (family, members) in enumerate(series.items()):
        members.sort()
        x = [means[name]["colorfulness"] for _, name in members]
        y = [means[name]["psnr"] for _, name in members]
        style = ["-", "--", ":", "-."][model_names.index(family.split("@")[0]) % 4]
        axis.plot(x, y, marker="o", label=family, color=palette[index % len(palette)], linestyle=style)
        for (temperature, name), xi, yi in zip(members, x, y):
            if "T=" in name:
                axis.annotate(f"T={temperature:g}", (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    truth = results["truth"]["colorfulness"]
    axis.axhline(baseline["psnr"], color="gray", linestyle="--", label=f"{BASELINE} PSNR")
    axis.axvline(truth, color="black", linestyle=":", label="truth's colourfulness")
    axis.axvline(0.8 * truth, color="black", linestyle=(0, (1, 4)), label="80% of it")
    axis.set_xlabel(LABELS["colorfulness"])
    axis.set_ylabel(LABELS["psnr"])
    axis.legend(fontsize=7)
    figure.tight_layout()
    with atomic.replacing(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)


def _columns(mean: dict[str, float]) -> list[str]:
    """The metrics of a table row or plot, in LABELS order."""
    return [key for key in LABELS if key in mean and key != TRUTH_ONLY]


def _grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    """uint8 grid of [gray, *models, truth] rows; photos of other sizes are fitted (aspect kept,
    white bars) into the first photo's size, for the grid only."""
    height, width = rows[0][0].shape[:2]

    def fit(image: np.ndarray) -> np.ndarray:
        if image.shape[:2] == (height, width):
            return image
        return np.asarray(ImageOps.pad(Image.fromarray(image), (width, height), color=(255, 255, 255)))

    columns = [np.stack([fit(row[column]) for row in rows]) for column in range(len(rows[0]))]
    # side by side only while a cell is narrow, so the grid stays readable with many models
    return pairs_grid(columns, per_row=2 if len(columns) <= 4 else 1)

