"""The files TensorFlow Serving reads beside a SavedModel: warm-up requests and models.config.

`exports/models.config` lists every model under exports/ for `tensorflow_model_server
--model_config_file`. `exports/<name>/<version>/assets.extra/tf_serving_warmup_requests`
holds one request per signature; the server runs them before it reports the version
ready, so the first user does not wait for the graph's one-off optimisation.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from export import savedmodel
from preprocess import atomic

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MODELS_CONFIG = "models.config"
WARMUP_SIDE = 64  # small: warm-up only has to trigger the one-off work of each signature


def warmup_inputs(temperature: float | None, hints: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """signature -> the inputs of its warm-up request: a gray gradient, as raw pixels and as a PNG;
    for a model that takes hints also two hints and a colour reference (every part of the guided graph runs)."""
    gray = np.tile(np.linspace(0, 255, WARMUP_SIDE).astype(np.uint8), (WARMUP_SIDE, 1))[..., None]  # [H, W, 1]
    png = io.BytesIO()
    Image.fromarray(gray[..., 0]).save(png, format="PNG")
    temperatures = {} if temperature is None else {"temperature": np.array([temperature], np.float32)}
    inputs = {
        savedmodel.SERVING_DEFAULT: {"gray": gray[None], **temperatures},
        savedmodel.COLORIZE_IMAGE: {"image_bytes": np.array([png.getvalue()], object), **temperatures},
    }
    if hints:
        reference = io.BytesIO()
        Image.fromarray(np.stack([255 - gray[..., 0], gray[..., 0], np.full_like(gray[..., 0], 96)], -1)).save(
            reference, format="PNG")  # fmt: skip
        inputs[savedmodel.COLORIZE_GUIDED_IMAGE] = {
            "image_bytes": np.array([png.getvalue()], object),
            "hint_y": np.array([[8, WARMUP_SIDE - 8]], np.int32),
            "hint_x": np.array([[8, WARMUP_SIDE // 2]], np.int32),
            "hint_colors": np.array([["#d02020", "#2040c0"]], object),
            "reference_bytes": np.array([reference.getvalue()], object),
        }
    return inputs


def write_warmup(export_dir: Path, model_name: str, temperature: float | None, hints: bool = False) -> Path:
    """Write the warm-up TFRecord of PredictionLogs into `export_dir`; returns its path."""
    path = export_dir / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in warmup_inputs(temperature, hints).items():
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
            )
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def replay_warmup(export_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Parse the warm-up file back and run each request through the SavedModel loaded from
    disk, as the server will: signature -> its outputs. Raises if either step fails."""
    loaded = tf.saved_model.load(str(export_dir))
    outputs = {}
    for record in tf.data.TFRecordDataset(str(export_dir / WARMUP_FILE)):
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        result = loaded.signatures[request.model_spec.signature_name](**inputs)
        outputs[request.model_spec.signature_name] = {key: value.numpy() for key, value in result.items()}
    return outputs


def write_models_config(exports_dir: Path, serving_root: str) -> Path:
    """Write `exports_dir/models.config` listing every model folder that has a version.

    `serving_root` is where the server sees `exports_dir` (the Docker example mounts it
    at /models), so each base path is `serving_root/<name>`.
    """
    config = model_server_config_pb2.ModelServerConfig()
    for folder in sorted(Path(exports_dir).iterdir()):
        if folder.is_dir() and any(child.name.isdigit() for child in folder.iterdir()):
            entry = config.model_config_list.config.add()
            entry.name = folder.name
            entry.base_path = f"{serving_root.rstrip('/')}/{folder.name}"
            entry.model_platform = "tensorflow"
    return atomic.write_text(Path(exports_dir) / MODELS_CONFIG, text_format.MessageToString(config))
