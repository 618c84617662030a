"""What several test files need: a tiny run and its export, test photos, and a fake TF Serving.

The export itself is the session fixture `exported` in conftest.py, built once per test
session; tests that need another export build their own with `make_export`.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

import models
from export import __main__ as export_cli

TINY = {"depth": 3, "base_width": 4, "max_width": 8, "dropout_blocks": 1}  # stride 8
WORKING_SIZE = 16


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """The part of a training config that export reads (the rest belongs to train/)."""

    data: str = ""
    crop_size: int = WORKING_SIZE


def tiny_generator(kernel_std: float = 0.3, tint: tuple[float, float] = (0.15, -0.2), seed: int = 0) -> keras.Model:
    """The tiny U-Net with weights large enough that colour depends on the input, and a tint
    (out_conv bias, atanh of ab / 110) so every output is visibly coloured."""
    generator = models.build("regression", models.get("regression").config(**TINY))["generator"]
    rng = np.random.default_rng(seed)
    for weight in generator.weights:
        if weight.path.endswith("kernel"):
            std = kernel_std / 6 if weight.path.startswith("out_conv") else kernel_std
            weight.assign(rng.normal(0.0, std, weight.shape).astype(np.float32))
    generator.get_layer("out_conv").bias.assign(np.array(tint, np.float32))
    return generator


def make_run(run: Path, generator: keras.Model | None = None, train: TrainSettings = TrainSettings()) -> Path:
    """A run folder as `python -m train` leaves it: config.json and a checkpoint in RUN/best."""
    generator = generator or tiny_generator()
    models.write_run_config(run, "regression", models.get("regression").config(**TINY), train)
    tf.train.Checkpoint(generator=generator).save(str(run / models.BEST_DIR / "ckpt"))
    return run


def make_export(folder: Path) -> tuple[Path, keras.Model]:
    """(exports/regression/1, the generator in it): a tiny run, exported by `python -m export`."""
    generator = tiny_generator()
    run = make_run(folder / "run", generator)
    assert export_cli.main([f"--run={run}", f"--out={folder / 'exports'}"]) == 0
    return folder / "exports" / "regression" / "1", generator


def encode(array: np.ndarray, image_format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 RGB [H, W, 3]: smooth colour blobs plus pixel noise (fine detail), mid lightness."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(70, 200, (1, 4, 5, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse, [height, width])[0].numpy()
    return np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)


def ramp_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A colourful uint8 image with structure: colour ramps plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin(x / 5.0 + seed)], -1)
    return np.clip(rgb + rng.normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)


@functools.cache
def _tiny_colours_builder() -> type:
    """A TFDS builder of 10 train and 3 test photos, made once per process: TFDS registers
    builders by name and refuses a second class called tiny_colours."""
    import tensorflow_datasets as tfds

    class TinyColours(tfds.core.GeneratorBasedBuilder):
        """Prepared locally, so the source reads it without a download."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {"image": tfds.features.Image(shape=(None, None, 3)), "label": tfds.features.ClassLabel(names=["x", "y"])}
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 10), "test": self._generate_examples(100, 3)}

        def _generate_examples(self, first, count):
            for i in range(count):
                yield i, {"image": ramp_photo(40, 40, seed=first + i), "label": i % 2}

    return TinyColours


def prepare_tiny_colours(data_dir: Path) -> None:
    """`tfds:tiny_colours` prepared in `data_dir`, for the TFDS source to read offline."""
    _tiny_colours_builder()(data_dir=str(data_dir)).download_and_prepare()


class FakeServing(ThreadingHTTPServer):
    """TF Serving's REST predict API over one export, as tensorflow_serving/util/json_tensor.cc
    defines it: {"b64": ...} decodes into any string input, string outputs whose name ends in
    "_bytes" are encoded so, "instances" answers "predictions", "inputs" answers "outputs",
    errors are {"error": message}. The real server cannot be installed here."""

    def __init__(self, export_dir: Path, model_name: str) -> None:
        self.loaded = tf.saved_model.load(str(export_dir))
        self.path_prefix = f"/v1/models/{model_name}"
        self.requests: list[dict] = []
        super().__init__(("127.0.0.1", 0), _FakeServingHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{self.path_prefix}"


def _from_json(value: object) -> object:
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    return [_from_json(item) for item in value] if isinstance(value, list) else value


def _to_json(name: str, value: object) -> object:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()} if name.endswith("_bytes") else value.decode()
    return [_to_json(name, item) for item in value] if isinstance(value, list) else value


class _FakeServingHandler(BaseHTTPRequestHandler):
    server: FakeServing

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        """GET <model>/metadata: the signatures, as TF Serving lists them (names only matter here)."""
        if self.path != f"{self.server.path_prefix}/metadata":
            answer, status = {"error": f"no such model path {self.path}"}, 404
        else:
            names = {name: {"method_name": "tensorflow/serving/predict"} for name in self.server.loaded.signatures}
            answer, status = {"metadata": {"signature_def": {"signature_def": names}}}, 200
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        try:
            if self.path != f"{self.server.path_prefix}:predict":
                raise ValueError(f"no such model path {self.path}")
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.server.requests.append(request)
            signature = self.server.loaded.signatures[request.get("signature_name", "serving_default")]
            names = list(signature.structured_input_signature[1])
            if "instances" in request:
                rows = request["instances"]
                columns = {name: [row[name] if isinstance(row, dict) and "b64" not in row else row for row in rows]
                           for name in names}  # fmt: skip
            else:
                inputs = request["inputs"]
                columns = inputs if isinstance(inputs, dict) and "b64" not in inputs else {names[0]: inputs}
            dtypes = {name: spec.dtype for name, spec in signature.structured_input_signature[1].items()}
            outputs = signature(**{name: tf.constant(_from_json(columns[name]), dtypes[name]) for name in names})
            values = {name: tensor.numpy().tolist() for name, tensor in outputs.items()}
            if "instances" in request:
                single = len(values) == 1
                answer = {"predictions": [_to_json(*next(iter(values.items())))[i] if single else
                                          {name: _to_json(name, value)[i] for name, value in values.items()}
                                          for i in range(len(next(iter(values.values()))))]}  # fmt: skip
            else:
                answer = {"outputs": {name: _to_json(name, value) for name, value in values.items()}}
            status = 200
        except Exception as error:  # the real server answers every failure as {"error": ...}
            answer, status = {"error": str(error)}, 400
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
