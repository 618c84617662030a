"""What a run folder shows a person: TensorBoard logs, metrics.jsonl, sample grids, loss curves.

    RUN/logs/             TensorBoard scalars and image grids
    RUN/metrics.jsonl     one JSON object per log or validation: {"step": 100, "gen/total": ...}
    RUN/loss_curves.png   every series of metrics.jsonl against the step
    RUN/samples/step-00001000.png   the fixed validation batch, gray | generated | real

metrics.jsonl is the source of the PNG, so the curves survive a resume; lines past the
step a run resumes from are dropped, because those steps are trained again.

TensorFlow 2.21 does not depend on TensorBoard, and `tf.summary.scalar`/`image` come from
the tensorboard package. The events are written with `tf.summary.write` and the metadata
TensorBoard's own scalar and image summaries attach, so training needs only TensorFlow;
setup.cfg installs tensorboard for `tensorboard --logdir RUN/logs`.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure  # the bare Figure draws with Agg: no display, no pyplot state
from PIL import Image
from tensorflow.core.framework import summary_pb2

from preprocess import atomic

METRICS_FILE = "metrics.jsonl"
LOSS_CURVES_FILE = "loss_curves.png"

# Small tiles are enlarged in the sample PNGs (nearest neighbour) so that 32 px results are
# visible without zooming.
MIN_SAMPLE_SIDE = 128


def _metadata(plugin: str, data_class: int) -> summary_pb2.SummaryMetadata:
    # Version-0 plugin data of the scalar and image plugins serialises to empty content.
    return summary_pb2.SummaryMetadata(plugin_data={"plugin_name": plugin}, data_class=data_class)


SCALAR_METADATA = _metadata("scalars", summary_pb2.DATA_CLASS_SCALAR)
IMAGE_METADATA = _metadata("images", summary_pb2.DATA_CLASS_BLOB_SEQUENCE)


def write_scalar(name: str, value: float, step: int) -> None:
    """What `tf.summary.scalar` writes, under the default writer."""
    tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=SCALAR_METADATA)


def write_image(name: str, image: np.ndarray, step: int) -> None:
    """What `tf.summary.image` writes for one uint8 image [H, W, 3]: width, height, PNG bytes."""
    height, width = image.shape[:2]
    tensor = tf.stack([str(width), str(height), tf.io.encode_png(image)])
    tf.summary.write(name, tensor, step=step, metadata=IMAGE_METADATA)


def _panel(name: str) -> str:
    """Losses and rates share a panel per prefix; metrics in other units get their own."""
    prefix = name.split("/")[0]
    return prefix if prefix in ("gen", "disc", "lr") else name


class RunLog:
    """The run folder's logs from step `start` on; `enabled=False` (non-chief workers) writes nothing."""

    def __init__(self, run_dir: str | Path, start: int, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.metrics_path = self.run_dir / METRICS_FILE
        if not enabled:
            self.writer = tf.summary.create_noop_writer()
            return
        (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
        self.writer = tf.summary.create_file_writer(str(self.run_dir / "logs"))
        if self.metrics_path.exists():
            kept = [line for line in self.metrics_path.read_text().splitlines() if json.loads(line)["step"] <= start]
            atomic.write_text(self.metrics_path, "".join(line + "\n" for line in kept))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Scalars to TensorBoard and metrics.jsonl."""
        if not self.enabled:
            return
        with self.writer.as_default():
            for name, value in values.items():
                write_scalar(name, value, step)
        with self.metrics_path.open("a") as file:
            file.write(json.dumps({"step": step, **values}) + "\n")

    def samples(self, step: int, rows: np.ndarray) -> Path | None:
        """rows: uint8 [N, H, W * k, 3] (one image per row) -> one grid in TensorBoard and a PNG."""
        if not self.enabled:
            return None
        grid = np.concatenate(list(rows), axis=0)  # [N * H, W * k, 3]
        with self.writer.as_default():
            write_image("samples/gray_generated_real", grid, step)
        scale = max(1, math.ceil(MIN_SAMPLE_SIDE / rows.shape[1]))
        path = self.run_dir / "samples" / f"step-{step:08d}.png"
        with atomic.replacing(path) as temporary:
            Image.fromarray(grid.repeat(scale, axis=0).repeat(scale, axis=1)).save(temporary)
        return path

    def loss_curves(self) -> None:
        """Redraw loss_curves.png from metrics.jsonl: a panel per loss prefix (gen, disc, lr), per other metric."""
        if not self.enabled or not self.metrics_path.exists():
            return
        series: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for line in self.metrics_path.read_text().splitlines():
            record = json.loads(line)
            for name, value in record.items():
                if name != "step":
                    series[_panel(name)][name].append((record["step"], value))
        if not series:
            return
        figure = Figure(figsize=(6, 2.6 * len(series)), layout="constrained")
        axes = figure.subplots(len(series), 1, squeeze=False)[:, 0]
        for axis, (group, curves) in zip(axes, sorted(series.items())):
            for name, points in sorted(curves.items()):
                steps, values = zip(*points)
                axis.plot(steps, values, label=name, marker="." if len(points) < 30 else None)
            axis.set_title(group)
            axis.legend(fontsize="small")
            axis.grid(alpha=0.3)
        axes[-1].set_xlabel("step")
        with atomic.replacing(self.run_dir / LOSS_CURVES_FILE) as temporary:
            figure.savefig(temporary, dpi=90)

    def close(self) -> None:
        self.writer.close()
