"""`iizuka`: any input size, the fused global path, the joint class loss with and without
labels, mixed precision, the class count from the data, and an exact resume."""

from __future__ import annotations

import json
import math
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from models import iizuka
from models.iizuka import IizukaConfig
from preprocess import color, schema
from train import loop, steps
from train.__main__ import main
from train.config import TrainConfig, resolve

TINY = IizukaConfig(base_width=4, global_size=32)
CLASSES = ("red", "green", "blue", "gray")
LABELLED = types.SimpleNamespace(ab_prior=None, label_names=CLASSES)  # what a labelled Shards tells the step
NO_LABELS_MESSAGE = "iizuka: the shards carry no class labels; training without the classification loss"


@pytest.fixture(scope="module")
def labelled_shards(tmp_path_factory):
    """train (24) and val (8) splits of 32x32 tiles labelled by their dominant colour, with a manifest
    as `make data` writes it (label names, ab prior); every fourth tile has no label (-1)."""
    return _write_labelled_shards(tmp_path_factory.mktemp("labelled_shards"), 32)


def _write_labelled_shards(out, size: int):
    out.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    tints = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [128, 128, 128]], np.float32)
    splits, counts = {}, np.zeros(len(color.ab_bins()), np.int64)
    for split, count in {"train": 24, "val": 8}.items():
        labels = np.arange(count) % len(CLASSES)
        tiles = np.clip(tints[labels, None, None, :] + rng.normal(0, 25, (count, size, size, 3)), 0, 255).astype(np.uint8)
        name = schema.shard_name(split, 0, 1)
        with tf.io.TFRecordWriter(str(out / name)) as writer:
            for number, (tile, label) in enumerate(zip(tiles, labels)):
                writer.write(schema.encode(tile, f"{split}/{number}", -1 if number % 4 == 3 else int(label)))
        splits[split] = {"shards": [name], "tiles": count}
        if split == "train":
            counts += color.ab_histogram(color.rgb_to_lab(tiles)[..., 1:].numpy())
    manifest = {"schema_version": schema.SCHEMA_VERSION, "splits": splits, "options": {"size": size, "compression": None},
                "label_names": list(CLASSES), "ab_prior": {"counts": counts.tolist()}}  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _batch(size: int = 4, seed: int = 0) -> dict[str, tf.Tensor]:
    return {
        "gray": tf.random.stateless_uniform([size, 32, 32, 1], [seed, 1], -1.0, 1.0),
        "color": tf.random.stateless_uniform([size, 32, 32, 2], [seed, 2], -0.5, 0.5),
        "label": tf.constant([0, 3, -1, 2, 1, 0, 2, 3][:size], tf.int64),
    }


def _weights(networks: dict[str, keras.Model]) -> dict[str, list[np.ndarray]]:
    return {name: [v.numpy().copy() for v in network.trainable_variables] for name, network in networks.items()}


# ---------------------------------------------------------------------------------------
# the networks


@pytest.mark.parametrize("shape", [(2, 32, 32), (1, 48, 64), (1, 36, 20)])
def test_the_generator_takes_any_input_size(shape):
    generator = iizuka.build(TINY)["generator"]
    gray = tf.random.uniform([*shape, 1], -1.0, 1.0, seed=1)
    fake_color = generator(gray, training=False)
    assert fake_color.shape == (*shape, 2) and fake_color.dtype == tf.float32
    assert float(tf.reduce_max(tf.abs(fake_color))) < 1.0  # 2 sigmoid - 1


def test_the_global_path_sees_a_fixed_size_copy():
    generator = iizuka.build(TINY)["generator"]
    view = iizuka.with_global_features(generator)
    large = tf.random.uniform([2, 96, 80, 1], -1.0, 1.0, seed=2)
    small = tf.image.resize(large, [TINY.global_size] * 2, antialias=True)  # the copy the global path sees
    # the classifier's features depend on that copy alone, whatever the input size
    large_color, large_features = view(large, training=False)
    small_color, small_features = view(small, training=False)
    assert large_features.shape == (2, 8 * TINY.base_width)
    assert float(tf.reduce_max(small_features)) > 0.0
    np.testing.assert_allclose(large_features, small_features, atol=1e-6)
    # the view is the generator: the same output from the same weights
    np.testing.assert_allclose(large_color, generator(large, training=False), atol=1e-6)
    assert [id(v) for v in view.trainable_variables] == [id(v) for v in generator.trainable_variables]


def test_presets_and_the_classifier():
    assert iizuka.PRESETS[256] == {} and IizukaConfig().global_size == 224  # the paper's
    # at the paper's global size, the global convolutions end at 7x7 (times 8 b = 512 channels in the paper)
    networks = iizuka.build(IizukaConfig(base_width=4, classes=205))
    assert networks["generator"].get_layer("global_flatten").output.shape[-1] == 7 * 7 * 8 * 4
    assert networks["classifier"].output.shape == (None, 205)
    assert set(iizuka.build(IizukaConfig(**iizuka.PRESETS[32]))) == {"generator"}  # classes=0: no classifier


# ---------------------------------------------------------------------------------------
# the step


def test_class_cross_entropy_leaves_out_unlabelled_examples():
    logits = tf.constant([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    loss = steps.class_cross_entropy(tf.constant([0, -1, 1], tf.int64), logits)
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(10.0))) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(steps.class_cross_entropy(tf.constant([-1, -1, -1], tf.int64), logits)) == 0.0


def test_a_compiled_step_with_labels_trains_the_classifier_jointly(capsys):
    """Under tf.function; the eager step runs in the mixed-precision and resume tests."""
    config = IizukaConfig(base_width=4, global_size=32, classes=len(CLASSES))
    networks = models.build("iizuka", config)
    optimizers = {name: keras.optimizers.Adam(1e-3) for name in networks}
    step = tf.function(steps.make("iizuka", config, LABELLED))
    before = _weights(networks)
    losses = step(networks, optimizers, _batch())
    assert set(losses) == {"gen/total", "gen/mse", "gen/class"}
    assert all(math.isfinite(float(value)) for value in losses.values())
    expected = 0.25 * float(losses["gen/mse"]) + float(losses["gen/class"]) / 300
    assert float(losses["gen/total"]) == pytest.approx(expected, rel=1e-5)
    for name, network in networks.items():
        moved = [not np.array_equal(old, new.numpy()) for old, new in zip(before[name], network.trainable_variables)]
        assert all(moved), f"{name}: some weights did not move"
    assert "without the classification loss" not in capsys.readouterr().out


def test_without_labels_the_step_says_so_and_skips_the_class_term(capsys):
    config = IizukaConfig(base_width=4, global_size=32, classes=len(CLASSES))  # a head, but nothing to learn from
    networks = models.build("iizuka", config)
    optimizers = {name: keras.optimizers.Adam(1e-3) for name in networks}
    step = steps.make("iizuka", config, None)
    before = _weights(networks)
    for _ in range(2):
        losses = step(networks, optimizers, _batch())
    assert set(losses) == {"gen/total", "gen/mse"}
    assert float(losses["gen/total"]) == pytest.approx(0.25 * float(losses["gen/mse"]))
    assert capsys.readouterr().out.count(NO_LABELS_MESSAGE) == 1
    assert all(np.array_equal(old, new.numpy()) for old, new in zip(before["classifier"],
                                                                    networks["classifier"].trainable_variables))  # fmt: skip
    with pytest.raises(models.ConfigError, match="--classes=2: the shards have 4 classes"):
        steps.make("iizuka", IizukaConfig(classes=2), LABELLED)


def test_mixed_float16_with_two_loss_scales():
    config = IizukaConfig(base_width=4, global_size=32, classes=len(CLASSES))
    train = TrainConfig(precision="mixed_float16", eager=True)
    with loop.runtime(train):
        training = loop.build("iizuka", config, train, total_steps=2, shards=LABELLED)
        before = _weights(training.networks)
        for seed in range(2):  # the first step may be skipped while the loss scales settle
            losses, finite = training.train_step(_batch(seed=seed))
        assert training.networks["generator"].get_layer("mid1").compute_dtype == "float16"
        assert isinstance(training.optimizers["classifier"], keras.optimizers.LossScaleOptimizer)
        assert training.networks["generator"](_batch()["gray"]).dtype == tf.float32
    assert bool(finite), losses
    after = _weights(training.networks)
    assert not np.array_equal(before["classifier"][0], after["classifier"][0])
    assert not np.array_equal(before["generator"][0], after["generator"][0])


# ---------------------------------------------------------------------------------------
# the command line and the loop


def test_the_class_count_comes_from_the_data_unless_set(labelled_shards, tiny_shards, tmp_path):
    common = ["--model=iizuka", f"--run={tmp_path / 'run'}"]
    assert resolve([*common, f"--data={labelled_shards}"]).model_config.classes == len(CLASSES)
    assert resolve([*common, f"--data={labelled_shards}", "--classes=0"]).model_config.classes == 0
    assert resolve([*common, f"--data={tiny_shards}"]).model_config.classes == 0  # no label names
    settings = resolve([*common, f"--data={labelled_shards}"])
    assert (settings.preset, settings.model_config.global_size, settings.model_config.base_width) == (32, 64, 16)


def _checkpoint_values(path) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(str(path))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH" and not key.startswith("save_counter")}  # fmt: skip


def test_a_resumed_run_with_labels_equals_one_that_never_stopped(labelled_shards, tmp_path, capsys):
    # 24 train tiles / batch 4 = 6 steps per epoch: the resume at step 1 is mid-epoch. Eager
    # (the compiled step has its own test), validating every step as the stopped run does at its end.
    common = [f"--data={labelled_shards}", "--model=iizuka", "--base_width=4", "--global_size=32", "--batch_size=4",
              "--deterministic", "--eager", "--val_batches=1", "--eval_every=1"]  # fmt: skip
    stopped, unbroken = tmp_path / "stopped", tmp_path / "unbroken"
    assert main([*common, f"--run={stopped}", "--steps=1"]) == 0
    assert main([f"--run={stopped}", "--steps=2"]) == 0
    assert main([*common, f"--run={unbroken}", "--steps=2"]) == 0
    assert "without the classification loss" not in capsys.readouterr().out

    resumed, reference = _checkpoint_values(stopped / "ckpt" / "ckpt-2"), _checkpoint_values(unbroken / "ckpt" / "ckpt-2")
    assert resumed.keys() == reference.keys()
    for key in reference:
        np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)
    assert any(key.startswith("classifier_optimizer/") for key in reference)
    records = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if "gen/class" in record] == [1, 2]

    saved = models.read_run_config(stopped)
    assert saved.model_config == IizukaConfig(base_width=4, global_size=32, classes=len(CLASSES))
    rebuilt = models.build_from_run(stopped, checkpoint="latest")
    assert set(rebuilt) == {"generator", "classifier"}
    assert rebuilt["generator"](tf.zeros([1, 40, 56, 1])).shape == (1, 40, 56, 2)


@pytest.mark.parametrize("source, target", [(16, 32), (48, 32), (32, 32)])
def test_the_resize_antialiases_when_it_shrinks_and_is_plain_bilinear_when_it_enlarges(source, target):
    images = tf.random.stateless_uniform([2, source, source, 3], seed=[1, 2])
    expected = tf.image.resize(images, [target, target], method="bilinear", antialias=True)
    resized = iizuka.Resize(target)(images)
    np.testing.assert_allclose(resized.numpy(), expected.numpy(), atol=1e-5)
    like = tf.zeros([2, target, target, 1])
    np.testing.assert_allclose(tf.function(iizuka.Resize())(images, like=like).numpy(), expected.numpy(), atol=1e-5)
    # sides unknown when traced (a SavedModel's signature): chosen in the graph
    any_sides = tf.TensorSpec([None, None, None, None], tf.float32)
    in_graph = tf.function(iizuka.Resize(target), input_signature=[any_sides])
    np.testing.assert_allclose(in_graph(images).numpy(), expected.numpy(), atol=1e-5)


def test_the_32_px_preset_compiles_with_xla_and_a_step_it_cannot_compile_exits_2_naming_the_op(
        labelled_shards, tmp_path, capsys):  # fmt: skip
    common = ["--model=iizuka", "--base_width=4", "--batch_size=4", "--steps=1", "--jit_compile"]
    # both resizes enlarge at 32 px (the global view to 64 px): plain bilinear, which XLA has
    assert main([*common, f"--data={labelled_shards}", f"--run={tmp_path / 'enlarges'}", "--global_size=64"]) == 0
    assert (tmp_path / "enlarges" / "ckpt" / "ckpt-1.index").exists()

    # 64 px photos shrunk to a 32 px global view: antialiased, which XLA has no kernel for
    large = _write_labelled_shards(tmp_path / "large", 64)
    capsys.readouterr()
    assert main([*common, f"--data={large}", f"--run={tmp_path / 'shrinks'}", "--global_size=32"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("make train: --jit_compile: XLA cannot compile iizuka's training step, it has no kernel "
                            "for ScaleAndTranslate; train without --jit_compile")  # fmt: skip
