"""make export: the full-resolution graph, the SavedModel and its signatures, TF Serving's
files, the self-check, a reload in a fresh process, and the REST client."""

from __future__ import annotations

import json
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
import skimage.color
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.config import model_server_config_pb2

import models
from export import __main__ as export_cli
from export import savedmodel, serving
from export.client import ServingClient, ServingError
from export.images import load_photo
from export.inference import INFO_FILE, Colorizer
from models import unet, zhang
from models.config import ConfigError
from preprocess import color
from tests.helpers import WORKING_SIZE, FakeServing, TrainSettings, encode, make_run, photo, tiny_generator

# ---------------------------------------------------------------------------------------
# The graph


def test_upsampled_columns_then_rows_are_tf_image_resize_at_those_rows():
    small = tf.random.stateless_uniform([2, 5, 7, 2], seed=[1, 2])
    for height, width in [(23, 31), (40, 14), (3, 4), (5, 7)]:
        rows = tf.constant([0, 1, height // 2, height - 1])
        expected = tf.gather(tf.image.resize(small, [height, width], method="bilinear"), rows, axis=1)
        got = savedmodel.upsample_rows(savedmodel.upsample_columns(small, width), rows, height)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)


def test_working_shape_keeps_the_area_and_aspect_in_multiples_of_the_stride():
    def shape(height: int, width: int, size: int, stride: int) -> tuple[int, int]:
        return tuple(savedmodel.working_shape(height, width, size, stride).numpy())

    assert shape(3000, 4000, 256, 32) == (224, 288)  # 12 MP at 4:3: about 256**2 pixels
    assert shape(4000, 3000, 256, 32) == (288, 224)
    assert shape(512, 512, 256, 256) == (256, 256)
    assert shape(32, 32, 64, 8) == (32, 32)  # a photo smaller than the working size is not enlarged ...
    assert shape(10, 10, 256, 8) == (8, 8)  # ... only rounded to the stride
    assert shape(10, 100_000, 64, 32) == (32, 6_400)  # a strip: scaled as by area, short side held at one stride


def test_colorize_pixels_is_the_whole_image_computation():
    """Stripes and the hand-made upsampling change nothing: the result is the model's colour
    at the working size, resized with tf.image.resize and joined with the full-size L."""
    generator = tiny_generator()
    rgb = photo(37, 50)[None]
    h, w = savedmodel.working_shape(37, 50, WORKING_SIZE, 8).numpy()
    small_gray, _ = color.rgb_to_model(tf.image.resize(rgb, [h, w], antialias=True) / 255.0)
    full_gray, _ = color.rgb_to_model(rgb)
    expected = color.model_to_rgb(full_gray, tf.image.resize(generator(small_gray, training=False), [37, 50]))
    for stripe_pixels in (savedmodel.STRIPE_PIXELS, 200):  # one stripe; many, the last one partial
        got = savedmodel.colorize_pixels(generator, tf.constant(rgb), WORKING_SIZE, 8, stripe_pixels=stripe_pixels)
        assert got.dtype == tf.uint8 and got.shape == (1, 37, 50, 3)
        assert np.abs(got.numpy().astype(int) - expected.numpy()).max() <= 1


def test_full_resolution_detail_comes_from_the_original_lightness():
    """A 16 px working size cannot see pixel noise, yet every pixel keeps its own L."""
    generator = tiny_generator(kernel_std=0.0)  # a plain tint: in gamut for mid lightness
    rgb = photo(96, 128)
    out = savedmodel.colorize_pixels(generator, tf.constant(rgb[None]), WORKING_SIZE, 8)[0]
    lab_in, lab_out = color.rgb_to_lab(rgb).numpy(), color.rgb_to_lab(out).numpy()
    assert np.abs(lab_out[..., 0] - lab_in[..., 0]).max() < 0.8  # uint8 rounding only
    np.testing.assert_allclose(lab_out[..., 1:].mean((0, 1)), [0.15 * 110 * 0.98, -0.2 * 110 * 0.98], atol=2.0)


def test_gray_levels_and_rgb_gray_give_the_same_colour():
    generator = tiny_generator()
    gray = photo(30, 20)[..., :1][None]
    from_gray = savedmodel.colorize_pixels(generator, tf.constant(gray), WORKING_SIZE, 8)
    from_rgb = savedmodel.colorize_pixels(generator, tf.constant(np.repeat(gray, 3, -1)), WORKING_SIZE, 8)
    assert np.abs(from_gray.numpy().astype(int) - from_rgb.numpy()).max() <= 1


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA", "P", "I;16", "CMYK-JPEG"])
def test_decode_rgb_reads_every_mode_as_a_viewer_shows_it(mode, tmp_path):
    rgb = photo(12, 16)
    alpha = np.tile(np.linspace(0, 255, 16).astype(np.uint8), (12, 1))
    gray = rgb[..., 0]
    images = {
        "L": (Image.fromarray(gray), "PNG"),
        "LA": (Image.fromarray(np.stack([gray, alpha], -1), "LA"), "PNG"),
        "RGB": (Image.fromarray(rgb), "PNG"),
        "RGBA": (Image.fromarray(np.dstack([rgb, alpha])), "PNG"),
        "P": (Image.fromarray(rgb).quantize(16), "PNG"),
        "I;16": (Image.fromarray(gray.astype(np.uint16) * 257), "PNG"),
        "CMYK-JPEG": (Image.fromarray(rgb).convert("CMYK"), "JPEG"),
    }
    image, image_format = images[mode]
    path = tmp_path / f"photo.{image_format.lower()}"
    image.save(path, format=image_format, **({"quality": 100} if image_format == "JPEG" else {}))
    decoded = savedmodel.decode_rgb(tf.constant(path.read_bytes())).numpy()
    # The same file through the Pillow loader of `colorize` and the web app.
    assert decoded.shape == (12, 16, 3)
    difference = np.abs(decoded.astype(int) - load_photo(path))
    if image_format == "JPEG":  # decoders upsample chroma differently; an inverted CMYK would be ~100 off
        assert difference.mean() < 3
    else:
        assert difference.max() <= 1


# ---------------------------------------------------------------------------------------
# The export


def huge_png(height: int, width: int) -> bytes:
    """A valid 1-bit gray PNG, all black: a few hundred bytes per million pixels, an image bomb."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the row's bits
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_colorize_image_refuses_a_photo_over_the_pixel_limit_before_decoding_it(exported):
    export_dir = exported
    assert json.loads((export_dir / INFO_FILE).read_text())["max_pixels"] == savedmodel.MAX_PIXELS == 100_000_000
    bomb = huge_png(30_000, 30_000)  # 900 megapixels: 0.9 GB decoded as gray, 2.7 GB as RGB
    assert len(bomb) < 200_000
    signature = tf.saved_model.load(str(export_dir)).signatures[savedmodel.COLORIZE_IMAGE]
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image of 30000 x 30000 pixels is more than the 100000000 pixels this export decodes \(max_pixels in"):  # fmt: skip
        signature(image_bytes=tf.constant([bomb]))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 300 * 1024  # nothing decoded
    # the header is read the same way for every format the signature takes
    for image_format in ["PNG", "GIF", "BMP", "JPEG"]:
        size = savedmodel.header_size(tf.constant(encode(photo(37, 53), image_format))).numpy()
        assert size.tolist() == [37, 53], image_format
    assert savedmodel.header_size(tf.constant(b"GI")).numpy().tolist() == [0, 0]  # truncated: the decoder's error
    assert huge_png(3, 5)[:8] == encode(np.zeros([3, 5], np.uint8))[:8]
    small = tf.io.decode_png(huge_png(3, 5)).numpy()
    assert small.shape == (3, 5, 1) and not small.any()


def test_export_writes_a_checked_version_with_serving_files(exported):
    export_dir = exported
    assert (export_dir / "saved_model.pb").exists()
    assert not [p for p in export_dir.parent.iterdir() if p.name.startswith(".")]  # no partial export left
    info = json.loads((export_dir / INFO_FILE).read_text())
    assert (info["model"], info["working_size"], info["stride"], info["temperature"]) == ("regression", 16, 8, None)
    assert info["signatures"] == {"serving_default": ["gray"], "colorize_image": ["image_bytes"],
                                  "colorize_at_size": ["image", "working_size"]}  # fmt: skip

    config = text_format.Parse((export_dir.parent.parent / "models.config").read_text(),
                               model_server_config_pb2.ModelServerConfig())  # fmt: skip
    assert [(c.name, c.base_path, c.model_platform) for c in config.model_config_list.config] == [
        ("regression", "/models/regression", "tensorflow")
    ]
    # The weights are constants of the graph (savedmodel.FrozenWeights), each kernel stored once
    # (keras-team/keras#23553 stores variables twice; a signature trace reading them stores them again).
    assert _kernel_copies(export_dir, np.float32) == [1] * 6


def _constants(export_dir: Path) -> list[np.ndarray]:
    """The values of every constant in the export's functions; it must hold no variables."""
    stored = tf.train.load_checkpoint(str(export_dir / "variables" / "variables"))
    assert not [key for key in stored.get_variable_to_shape_map() if "VARIABLE_VALUE" in key]
    saved = saved_model_pb2.SavedModel.FromString((export_dir / "saved_model.pb").read_bytes())
    library = saved.meta_graphs[0].graph_def.library.function
    return [tf.make_ndarray(node.attr["value"].tensor) for function in library for node in function.node_def
            if node.op == "Const"]  # fmt: skip


def _kernel_copies(export_dir: Path, dtype) -> list[int]:
    """How many times each kernel of `tiny_generator`, rounded to `dtype`, is in the export."""
    constants = _constants(export_dir)
    kernels = [tf.cast(weight, dtype).numpy() for weight in tiny_generator().weights if len(weight.shape) >= 2]
    return [sum(c.dtype == k.dtype and c.shape == k.shape and np.array_equal(c, k) for c in constants) for k in kernels]


def _matrix_bytes(export_dir: Path) -> int:
    return sum(constant.nbytes for constant in _constants(export_dir) if constant.ndim >= 2)

    replies = serving.replay_warmup(export_dir)  # the file parses and every request runs
    assert set(replies) == {"serving_default", "colorize_image"}
    assert replies["serving_default"]["rgb"].shape == (1, serving.WARMUP_SIDE, serving.WARMUP_SIDE, 3)


def test_the_check_reads_saved_model_cli_show(exported, tmp_path, monkeypatch):
    """The export passed a check that runs `saved_model_cli show --all`; a listing that lacks
    a documented name (here colorize_image's png_bytes output) fails it."""
    export_dir = exported
    listing = "\n".join([
        "signature_def['colorize_at_size']: inputs['image'] inputs['working_size'] outputs['rgb']",
        "signature_def['colorize_image']: inputs['image_bytes'] outputs['rgb']",
        "signature_def['serving_default']: inputs['gray'] outputs['rgb']",
    ])  # fmt: skip
    fake = tmp_path / "saved_model_cli"
    fake.write_text(f"#!/bin/sh\n[ \"$1\" = show ] && cat <<'EOF'\n{listing}\nEOF\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setattr(export_cli, "SAVED_MODEL_CLI", fake)
    with pytest.raises(export_cli.CheckFailed, match="colorize_image with .*outputs\\['png_bytes'\\]"):
        export_cli.check(export_dir, None)


def test_reloaded_in_a_fresh_process_matches_the_eager_model(exported, tmp_path):
    export_dir, generator = exported, tiny_generator()
    rgb = photo(45, 61, seed=3)
    gray = rgb[..., :1]
    np.save(tmp_path / "gray.npy", gray[None])
    (tmp_path / "photo.png").write_bytes(encode(rgb))
    script = f"""
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load({str(export_dir)!r})
rgb = loaded.signatures["serving_default"](gray=tf.constant(np.load({str(tmp_path / "gray.npy")!r})))["rgb"]
np.save({str(tmp_path / "from_gray.npy")!r}, rgb.numpy())
data = open({str(tmp_path / "photo.png")!r}, "rb").read()
png = loaded.signatures["colorize_image"](image_bytes=tf.constant([data, data]))["png_bytes"]
np.save({str(tmp_path / "from_png.npy")!r}, np.stack([tf.io.decode_png(p).numpy() for p in png]))
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    restored = models.build_from_run(export_dir.parents[2] / "run")["generator"]  # the eager model path
    for name, pixels in [("from_gray", gray), ("from_png", rgb)]:
        eager = savedmodel.colorize_pixels(restored, tf.constant(pixels[None]), WORKING_SIZE, 8).numpy()
        assert np.abs(np.load(tmp_path / f"{name}.npy").astype(int) - eager).max() <= 1, name
    colorful = np.load(tmp_path / "from_gray.npy").astype(int)
    assert np.abs(colorful[..., 0] - colorful[..., 2]).mean() > 5  # the tint arrived: not gray


def test_versions_count_up_and_are_never_overwritten(exported, tmp_path, capsys):
    export_dir = exported
    (tmp_path / "m" / "3").mkdir(parents=True)
    (tmp_path / "m" / ".partial-9-1").mkdir()
    assert export_cli.next_version(tmp_path / "m") == 4
    assert export_cli.next_version(tmp_path / "new") == 1
    run = export_dir.parents[2] / "run"
    assert export_cli.main([f"--run={run}", f"--out={export_dir.parents[1]}", "--version=1"]) == 2
    assert "exists" in capsys.readouterr().err


def test_a_failed_check_leaves_no_version(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path / "run")
    monkeypatch.setattr(export_cli, "SAVED_MODEL_CLI", Path("/bin/false"))
    assert export_cli.main([f"--run={run}", f"--out={tmp_path / 'exports'}"]) == 1
    assert "failed its check" in capsys.readouterr().err
    assert list((tmp_path / "exports" / "regression").iterdir()) == []  # neither "1" nor a partial folder
    assert not (tmp_path / "exports" / "models.config").exists()


def test_working_size_comes_from_the_run_folder_alone(tiny_shards):
    # config.json records the tile size: the training data may be gone by export time
    run = models.SavedRun("regression", None, {"data": "/gone", "crop_size": 0}, {"tile_size": 48, "steps_per_epoch": 3})
    assert models.working_size(run) == 48
    assert models.working_size(run._replace(train_config={"data": "/gone", "crop_size": 16})) == 16
    # a run from before config.json recorded it: its shards' tile size while they are there, else --size
    old = models.SavedRun("regression", None, {"data": str(tiny_shards), "crop_size": 0})
    assert models.working_size(old) == 32
    with pytest.raises(ConfigError, match="--size"):
        models.working_size(old._replace(train_config={"data": "/nonexistent", "crop_size": 0}))


def test_a_model_with_a_temperature_takes_it_in_every_signature(tmp_path):
    config = models.get("zhang").config(base_width=2)  # the annealed mean's temperature, 0.38 by default
    networks = models.build("zhang", config)
    bins = networks["generator"].network.get_layer("conv8_bins").bias
    bins.assign(np.random.default_rng(0).normal(0.0, 2.0, bins.shape).astype(np.float32))  # not uniform
    models.write_run_config(tmp_path / "run", "zhang", config, TrainSettings(crop_size=16))
    tf.train.Checkpoint(**networks).save(str(tmp_path / "run" / "best" / "ckpt"))
    assert export_cli.main([f"--run={tmp_path / 'run'}", f"--out={tmp_path / 'exports'}"]) == 0

    colorizer = Colorizer(tmp_path / "exports" / "zhang")
    assert colorizer.info["temperature"] == pytest.approx(0.38)
    signatures = colorizer._loaded.signatures
    for name in ("serving_default", "colorize_image", "colorize_at_size"):
        assert "temperature" in signatures[name].structured_input_signature[1], name
    rgb = photo(16, 16)
    mean, mode = colorizer.colorize(rgb, temperature=1.0), colorizer.colorize(rgb, temperature=0.05)
    assert np.abs(mean.astype(int) - mode).max() > 3  # the temperature reaches the decoding
    np.testing.assert_array_equal(colorizer.colorize(rgb), colorizer.colorize(rgb, temperature=0.38))

    # a default chosen at export time (e.g. by a temperature sweep) replaces the run's
    assert export_cli.main([f"--run={tmp_path / 'run'}", f"--out={tmp_path / 'exports'}", "--temperature=0.7"]) == 0
    chosen = Colorizer(tmp_path / "exports" / "zhang", version=2)
    assert chosen.info["temperature"] == pytest.approx(0.7) == chosen.info["model_config"]["temperature"]
    np.testing.assert_array_equal(chosen.colorize(rgb), colorizer.colorize(rgb, temperature=0.7))

    # rebalancing at decoding is fixed in the graph, from the weights the checkpoint holds
    networks["generator"].log_rebalance.assign(np.linspace(-3.0, 3.0, len(color.ab_bins())).astype(np.float32))
    tf.train.Checkpoint(**networks).save(str(tmp_path / "run" / "best" / "ckpt"))
    assert export_cli.main([f"--run={tmp_path / 'run'}", f"--out={tmp_path / 'exports'}", "--decode_rebalance=1"]) == 0
    rebalanced = Colorizer(tmp_path / "exports" / "zhang", version=3)
    assert rebalanced.info["model_config"]["decode_rebalance"] == 1.0
    assert np.abs(rebalanced.colorize(rgb).astype(int) - colorizer.colorize(rgb)).max() > 3
    with pytest.raises(SystemExit, match="2"):
        export_cli.main([f"--run={tmp_path / 'run'}", f"--out={tmp_path / 'x'}", "--decode_rebalance=-1"])



def test_the_chroma_gain_is_fixed_in_the_graph(tmp_path, monkeypatch):
    config = models.get("zhang").config(base_width=2)
    models.write_run_config(tmp_path / "run", "zhang", config, TrainSettings(crop_size=32))
    # logits that follow the photo (an untrained zhang network's barely vary at this size)
    network = keras.Sequential([keras.Input([None, None, 1]), keras.layers.AveragePooling2D(4),
                                keras.layers.Conv2D(len(color.ab_bins()), 1, bias_initializer="random_normal",
                                                    kernel_initializer=keras.initializers.RandomNormal(0, 3, seed=2))])
    generator = zhang.ZhangGenerator(network, config.temperature)
    monkeypatch.setattr(models, "build_from_run", lambda run, checkpoint="best": {"generator": generator})
    rgb = photo(32, 32)
    spreads = []
    for gain in (1, 2):
        assert export_cli.main([f"--run={tmp_path / 'run'}", f"--out={tmp_path / 'exports'}", f"--chroma_gain={gain}",
                                f"--version={gain}"]) == 0  # fmt: skip
        exported = Colorizer(tmp_path / "exports" / "zhang", version=gain)
        assert exported.info["model_config"]["chroma_gain"] == gain
        _, a, b = np.moveaxis(skimage.color.rgb2lab(exported.colorize(rgb)), -1, 0)
        spreads.append(np.hypot(a - a.mean(), b - b.mean()).mean())
    assert spreads[1] > 1.5 * spreads[0] > 0  # the same photo's colours spread wider around their mean
    with pytest.raises(SystemExit, match="2"):
        export_cli.main([f"--run={tmp_path / 'run'}", f"--out={tmp_path / 'x'}", "--chroma_gain=0"])


# ---------------------------------------------------------------------------------------
# TF Serving's REST API


def test_client_speaks_tf_servings_rest_api(exported):
    export_dir = exported
    server = FakeServing(export_dir, "regression")
    try:
        client = ServingClient(server.url)
        rgb = photo(21, 34, seed=5)
        got = client.colorize(rgb)
        assert server.requests[-1]["signature_name"] == "colorize_image"
        assert set(server.requests[-1]["instances"][0]) == {"b64"}  # what the README's curl example sends
        expected = Colorizer(export_dir, precision="exported").colorize(rgb)  # TF Serving runs it as exported
        np.testing.assert_array_equal(got, expected)
        assert client.label == "regression"
        assert ServingClient("http://h:8501/v1/models/cgan/versions/3").label == "cgan v3"
        with pytest.raises(ServingError, match="HTTP 400"):
            client.colorize_png(b"not an image")
        with pytest.raises(ServingError, match="HTTP 400"):
            ServingClient(server.url.replace("regression", "other")).colorize_png(encode(rgb))
    finally:
        server.shutdown()


def test_a_bf16_export_computes_in_bf16_and_stays_within_a_few_levels_of_float32(exported, tmp_path, capsys):
    run = exported.parents[2] / "run"
    assert export_cli.main([f"--run={run}", f"--out={tmp_path}", "--precision=mixed_bfloat16"]) == 0
    assert "mixed_bfloat16" in capsys.readouterr().out
    bf16_dir = tmp_path / "regression" / "1"
    assert json.loads((bf16_dir / INFO_FILE).read_text())["precision"] == "mixed_bfloat16"
    assert json.loads((exported / INFO_FILE).read_text())["precision"] == "float32"
    gray = tf.constant(photo(40, 56, seed=5)[None, ..., :1])
    outputs = {}
    for name, folder in [("float32", exported), ("bf16", bf16_dir)]:
        loaded = tf.saved_model.load(str(folder))
        outputs[name] = loaded.signatures["serving_default"](gray=gray)["rgb"].numpy().astype(int)
        graph = loaded.signatures["serving_default"].graph.as_graph_def()
        dtypes = {node.attr["T"].type for node in graph.node if node.op == "Conv2D"}
        dtypes |= {node.attr["T"].type for function in graph.library.function for node in function.node_def
                   if node.op == "Conv2D"}  # fmt: skip
        outputs[name, "conv dtypes"] = dtypes
    assert outputs["bf16", "conv dtypes"] == {tf.bfloat16.as_datatype_enum}
    assert outputs["float32", "conv dtypes"] == {tf.float32.as_datatype_enum}
    difference = np.abs(outputs["bf16"] - outputs["float32"])
    assert 0 < difference.max() <= 6 and difference.mean() < 1.0


def test_colorizer_computes_a_float32_export_in_bf16_where_the_cpu_has_bf16_units(exported, monkeypatch):
    """precision="auto", the default of colorize, make serve and make evaluate: a float32 export
    runs in bfloat16 on a CPU with bf16 units, within a few levels of float32, and the
    process's other graphs keep float32; "exported" and CPUs without them keep the export's own."""
    from export import inference

    real_cpu_has_bf16_units = inference.cpu_has_bf16_units()
    rgb = photo(40, 56, seed=5)
    as_exported = Colorizer(exported, precision="exported")
    float32_rgb = as_exported.colorize(rgb).astype(int)
    monkeypatch.setattr(inference, "cpu_has_bf16_units", lambda: False)
    assert Colorizer(exported).precision == as_exported.precision == "float32"
    monkeypatch.setattr(inference, "cpu_has_bf16_units", lambda: True)
    auto = Colorizer(exported)
    assert auto.precision == "mixed_bfloat16" and Colorizer(exported, precision="exported").precision == "float32"
    bf16_rgb = auto.colorize(rgb).astype(int)
    assert not tf.config.optimizer.get_experimental_options().get("auto_mixed_precision_onednn_bfloat16", False)
    np.testing.assert_array_equal(as_exported.colorize(rgb), float32_rgb)
    if real_cpu_has_bf16_units:  # elsewhere TensorFlow leaves the graph in float32
        difference = np.abs(bf16_rgb - float32_rgb)
        assert 0 < difference.max() <= 6 and difference.mean() < 1.0
    with pytest.raises(ValueError, match="precision='bf16': valid: auto, exported"):
        Colorizer(exported, precision="bf16")


def test_bf16_kernels_halve_the_export_and_keep_its_colours(exported, tmp_path, capsys):
    run = exported.parents[2] / "run"
    assert export_cli.main([f"--run={run}", f"--out={tmp_path}", "--weights=bfloat16"]) == 0
    assert "bfloat16 kernels" in capsys.readouterr().out
    compact = tmp_path / "regression" / "1"
    info = json.loads((compact / INFO_FILE).read_text())
    assert (info["weights"], info["precision"]) == ("bfloat16", "float32")

    assert _kernel_copies(compact, tf.bfloat16.as_numpy_dtype) == [1] * 6
    assert _kernel_copies(compact, np.float32) == [0] * 6
    assert _matrix_bytes(compact) < 0.6 * _matrix_bytes(exported)

    gray = tf.constant(photo(40, 56, seed=5)[None, ..., :1])
    rgb = {folder: tf.saved_model.load(str(folder)).signatures["serving_default"](gray=gray)["rgb"].numpy().astype(int)
           for folder in (exported, compact)}  # fmt: skip
    difference = np.abs(rgb[compact] - rgb[exported])
    assert difference.max() <= 3 and difference.mean() < 0.5


def _xla_compiled_functions(export_dir: Path) -> int:
    saved = saved_model_pb2.SavedModel.FromString((export_dir / "saved_model.pb").read_bytes())
    return sum(function.attr["_XlaMustCompile"].b for function in saved.meta_graphs[0].graph_def.library.function)


def test_a_winograd_export_compiles_its_convolutions_by_xla_and_keeps_the_colours(
    exported, tmp_path, capsys, monkeypatch
):
    """--winograd: the tiny model's layers are too narrow for Winograd, so the thresholds are
    lowered to take every layer it computes; the default export has nothing XLA must compile
    (TF Serving, without --xla_cpu_compilation_enabled, runs it)."""
    monkeypatch.setattr(unet, "cpu_flags", lambda: frozenset({"avx2"}))
    for threshold in ("WINOGRAD_CHANNELS", "WINOGRAD_TILES", "WINOGRAD_TILES_WHEN_RUN", "WINOGRAD_SAVING"):
        monkeypatch.setattr(unet, threshold, 0)
    assert export_cli.main([f"--run={exported.parents[2] / 'run'}", f"--out={tmp_path}", "--winograd"]) == 0
    assert "Winograd convolutions" in capsys.readouterr().out
    fast = tmp_path / "regression" / "1"
    assert json.loads((fast / INFO_FILE).read_text())["winograd"] is True
    assert json.loads((exported / INFO_FILE).read_text())["winograd"] is False
    assert _xla_compiled_functions(fast) > 0 and _xla_compiled_functions(exported) == 0

    rgb = {}
    for folder in (exported, fast):
        colorizer = Colorizer(folder, precision="exported")
        rgb[folder] = [colorizer.colorize(photo(height, width, seed=5)).astype(int)
                       for height, width in [(40, 56), (64, 48)]]  # fmt: skip
    for default, winograd in zip(rgb[exported], rgb[fast]):
        assert np.abs(default - winograd).max() <= 1


def test_winograd_exports_are_float32(exported, tmp_path, capsys):
    run = exported.parents[2] / "run"
    assert export_cli.main([f"--run={run}", f"--out={tmp_path}", "--winograd", "--precision=mixed_bfloat16"]) == 2
    assert "float32 only" in capsys.readouterr().err
    assert not (tmp_path / "regression").exists()


def test_export_refuses_an_unknown_precision(exported, tmp_path, capsys):
    with pytest.raises(SystemExit):
        export_cli.main([f"--run={exported.parents[2] / 'run'}", f"--out={tmp_path}", "--precision=float16"])
    assert "invalid choice: 'float16'" in capsys.readouterr().err
    assert not (tmp_path / "regression").exists()
