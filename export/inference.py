"""Load an export and colorize NumPy photos with it: what `colorize` and the web app share.

Needs TensorFlow and the export folder only: the graph, the weights and the settings
(`assets.extra/export.json`) are all inside it; no model code, no run folder.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf

from export import PRECISIONS
from export.guidance import Hint
from preprocess import cpu_has_bf16_units

INFO_FILE = Path("assets.extra") / "export.json"

_BF16_REWRITE = "auto_mixed_precision_onednn_bfloat16"
_bf16_calls = 0  # calls within _bf16_rewrite now, from any thread
_bf16_calls_lock = threading.Lock()
_rewrite_before = False  # the process's own setting, restored when the last such call ends


@contextlib.contextmanager
def _bf16_rewrite(enabled: bool) -> Iterator[None]:
    """Graphs first run within compute in bfloat16 where TensorFlow's oneDNN rewrite allows.
    TensorFlow keeps one optimised copy of a graph per setting, so the process's other graphs
    keep theirs; the setting is the process's, so it stays on until the last such call ends."""
    global _bf16_calls, _rewrite_before
    if not enabled:
        yield
        return
    with _bf16_calls_lock:
        if _bf16_calls == 0:
            _rewrite_before = tf.config.optimizer.get_experimental_options().get(_BF16_REWRITE, False)
            tf.config.optimizer.set_experimental_options({_BF16_REWRITE: True})
        _bf16_calls += 1
    try:
        yield
    finally:
        with _bf16_calls_lock:
            _bf16_calls -= 1
            if _bf16_calls == 0:
                tf.config.optimizer.set_experimental_options({_BF16_REWRITE: _rewrite_before})


def error_message(error: tf.errors.OpError | str) -> str:
    """The line of a graph's error (or TF Serving's) that says what went wrong: the message of a
    check in the graph (a hint outside the photo, a gray reference, ...), else the first informative line."""
    message = error if isinstance(error, str) else error.message
    # eager: "... Summarized data: b'<message>'"; a loaded SavedModel, TF Serving: "assertion failed: [<message>]"
    for pattern in (r"Summarized data: b'(.*?)'", r'Summarized data: b"(.*?)"', r"assertion failed: \[(.*)\]"):
        found = re.search(pattern, message)
        if found:
            return found[1]
    lines = [line.strip() for line in message.splitlines()]
    useful = [line for line in lines if line and not line.startswith(("Graph execution error", "Detected at node",
                                                                      "<stack traces", "[["))]  # fmt: skip
    return (useful or lines or [type(error).__name__])[0]


class ExportNotFound(Exception):
    """A --model path that holds no usable export, with what was looked for."""


def resolve(model: str | Path, version: int | None = None) -> Path:
    """The version folder of an export: `model` itself when it holds a saved_model.pb, else
    `model/<version>`, by default the highest numbered version (as TF Serving picks)."""
    path = Path(model)
    if (path / "saved_model.pb").exists():
        if version is not None and path.name != str(version):
            raise ExportNotFound(f"{path} is version {path.name}; --version={version} names another")
        return path
    if not path.is_dir():
        raise ExportNotFound(f"{path}: no such folder; make one with `make export RUN=runs/<name>`")
    versions = sorted(int(child.name) for child in path.iterdir()
                      if child.name.isdigit() and (child / "saved_model.pb").exists())  # fmt: skip
    if not versions:
        raise ExportNotFound(f"{path}: no export versions (numbered folders with a saved_model.pb)")
    if version is None:
        return path / str(versions[-1])
    if version not in versions:
        raise ExportNotFound(f"{path}: no version {version}; found {', '.join(map(str, versions))}")
    return path / str(version)


class Colorizer:
    """One loaded export. `colorize(rgb)` -> the colour photo at the input's size.

    `info` is the export's export.json: model, working_size, stride, temperature (the
    default, or None for models without one), hints (whether it takes them), run, checkpoint.
    `precision`: one of PRECISIONS (see there).
    """

    def __init__(self, model: str | Path, version: int | None = None, precision: str = "auto") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}: valid: {', '.join(PRECISIONS)}")
        self.path = resolve(model, version)
        self.info = json.loads((self.path / INFO_FILE).read_text())
        exported = self.info.get("precision", "float32")
        self._rewritten_to_bfloat16 = exported == "float32" and precision == "auto" and cpu_has_bf16_units()
        self.precision = "mixed_bfloat16" if self._rewritten_to_bfloat16 else exported  # how it computes here
        # The signatures keep working only while the loaded object lives, so it is kept.
        self._loaded = tf.saved_model.load(str(self.path))
        self._colorize_at_size = self._loaded.signatures["colorize_at_size"]
        self._colorize_guided = self._loaded.signatures.get("colorize_guided")

    @property
    def takes_hints(self) -> bool:
        """Whether the model takes colour hints and a reference photo (MODEL=guided)."""
        return self._colorize_guided is not None

    @property
    def label(self) -> str:
        """`<name> v<version>`, naming the served model in pages and reports."""
        return f"{self.path.parent.name} v{self.path.name}"

    def colorize(self, rgb: np.ndarray, size: int | None = None, temperature: float | None = None,
                 hints: list[Hint] | None = None, reference: bytes | None = None) -> np.ndarray:  # fmt: skip
        """uint8 RGB [H, W, 3] (gray photos with equal channels; colour ones are taken as gray)
        -> uint8 RGB [H, W, 3] with the input's L and the model's colour.

        `size`: the working size (default the export's); `temperature`: for models that
        decode with one (default the export's), refused by the others. For models that take
        them (`takes_hints`): `hints` in the photo's pixels (export/guidance.py) and
        `reference`, an encoded colour photo (PNG, JPEG, ...) whose colours to follow.
        """
        return self.colorize_batch(np.asarray(rgb)[None], size, temperature, hints, reference)[0]

    def colorize_batch(self, rgb: np.ndarray, size: int | None = None, temperature: float | None = None,
                       hints: list[Hint] | None = None, reference: bytes | None = None) -> np.ndarray:  # fmt: skip
        """As `colorize`, for photos of one size at once: uint8 RGB [N, H, W, 3] -> [N, H, W, 3],
        every photo with the same hints and reference (the frames of a sequence).

        One call of the graph for N small photos costs about what one photo does.
        """
        inputs = {
            "image": tf.constant(np.asarray(rgb, np.uint8)),
            "working_size": tf.constant(size or self.info["working_size"], tf.int32),
        }
        if hints or reference:
            if not self.takes_hints:
                raise ValueError(f"{self.label} ({self.info['model']}) takes no hints or reference photo")
            inputs.update(guidance_feed(hints or [], reference or b"", len(rgb)))
            return self._run(self._colorize_guided, inputs)
        if self.info["temperature"] is not None:
            inputs["temperature"] = tf.fill([len(rgb)], float(temperature or self.info["temperature"]))
        elif temperature is not None:
            raise ValueError(f"{self.info['model']} does not decode with a temperature")
        return self._run(self._colorize_at_size, inputs)

    def _run(self, signature: tf.types.experimental.ConcreteFunction, inputs: dict[str, tf.Tensor]) -> np.ndarray:
        """signature(**inputs)["rgb"] at this colorizer's precision."""
        with _bf16_rewrite(self._rewritten_to_bfloat16):
            return signature(**inputs)["rgb"].numpy()

    def colorize_each(self, rgb: np.ndarray, size: int, hint_y: np.ndarray, hint_x: np.ndarray,
                      hint_colors: list[list[str]], references: list[bytes]) -> np.ndarray:  # fmt: skip
        """uint8 RGB [N, H, W, 3], each photo with its own hints (hint_y, hint_x [N, K], hint_colors
        [N][K] "#rrggbb") and reference (encoded photo, b"" for none) -> uint8 RGB [N, H, W, 3]."""
        if not self.takes_hints:
            raise ValueError(f"{self.label} ({self.info['model']}) takes no hints or reference photo")
        count, points = len(rgb), np.shape(hint_y)[1]
        return self._run(self._colorize_guided, {
            "image": tf.constant(np.asarray(rgb, np.uint8)), "working_size": tf.constant(size, tf.int32),
            "hint_y": tf.constant(hint_y, tf.int32, shape=[count, points]),
            "hint_x": tf.constant(hint_x, tf.int32, shape=[count, points]),
            "hint_colors": tf.constant(hint_colors, tf.string, shape=[count, points]),
            "reference_bytes": tf.constant(references, tf.string)})  # fmt: skip


def guidance_feed(hints: list[Hint], reference: bytes, count: int = 1) -> dict[str, tf.Tensor]:
    """The guided signatures' hint inputs for `count` photos that share `hints` and `reference`
    ("" for none): hint_y, hint_x int32 [count, K], hint_colors string [count, K], reference_bytes [count]."""
    rows = lambda values, dtype: tf.constant([list(values)] * count, dtype, shape=[count, len(hints)])  # noqa: E731
    return {
        "hint_y": rows((hint.y for hint in hints), tf.int32),
        "hint_x": rows((hint.x for hint in hints), tf.int32),
        "hint_colors": rows((hint.colour for hint in hints), tf.string),
        "reference_bytes": tf.constant([reference] * count, tf.string),
    }
