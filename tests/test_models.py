"""The model registry, the U-Net and PatchGAN builders, their configs and rebuilding from a run."""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from models import pix2pix, unet
from models.config import ConfigError, from_dict, override
from models.pix2pix import CGANConfig
from models.regression import RegressionConfig

TINY = {"depth": 3, "base_width": 4, "max_width": 16, "dropout_blocks": 1, "disc_layers": 2, "disc_base_width": 4}


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown model 'zebra'; valid: cgan, regression"):
        models.get("zebra")


@pytest.mark.parametrize("shape", [(2, 8, 8), (1, 16, 24)])
def test_generator_takes_any_size_divisible_by_its_stride(shape):
    generator = unet.unet_generator(unet.UNetConfig(depth=3, base_width=4, max_width=16, dropout_blocks=1))
    gray = tf.random.uniform([*shape, 1], -1.0, 1.0, seed=1)
    fake_color = generator(gray, training=False)
    assert fake_color.shape == (*shape, 2)
    assert fake_color.dtype == tf.float32
    assert float(tf.reduce_max(tf.abs(fake_color))) <= 1.0


def test_presets_build_pix2pix_at_256_and_cifar_at_32():
    big = unet.unet_generator(unet.UNetConfig(**unet.PRESETS[256]))
    # pix2pix's 256 px U-Net (3 -> 3 channels) has 54.4 M weights; 1 -> 2 channels barely differs.
    assert 54.0e6 < big.count_params() < 54.5e6
    assert big(tf.zeros([1, 256, 256, 1])).shape == (1, 256, 256, 2)
    small = CGANConfig(**pix2pix.PRESETS[32])
    assert small.stride == 32
    networks = pix2pix.build(small)
    gray, color = tf.zeros([2, 32, 32, 1]), tf.zeros([2, 32, 32, 2])
    assert networks["generator"](gray).shape == (2, 32, 32, 2)
    assert networks["discriminator"]([gray, color]).shape == (2, 8, 8, 1)


@pytest.mark.parametrize(("disc_layers", "receptive_field"), [(3, 70), (2, 34), (1, 16)])
def test_patchgan_receptive_field(disc_layers, receptive_field):
    config = CGANConfig(**{**TINY, "depth": 4, "disc_layers": disc_layers, "disc_base_width": 2})
    discriminator = pix2pix.patchgan_discriminator(config)
    gray, color = tf.random.normal([1, 128, 128, 1], seed=2), tf.random.normal([1, 128, 128, 2], seed=3)
    with tf.GradientTape() as tape:
        tape.watch(gray)
        logits = discriminator([gray, color], training=False)
        centre = logits[0, logits.shape[1] // 2, logits.shape[2] // 2, 0]
    seen = np.nonzero(np.abs(tape.gradient(centre, gray)[0, :, :, 0].numpy()).sum(axis=1))[0]
    assert seen.max() - seen.min() + 1 == receptive_field


def test_instance_norm_discriminator():
    discriminator = pix2pix.patchgan_discriminator(CGANConfig(**TINY, disc_norm="instance"))
    assert any(isinstance(layer, keras.layers.GroupNormalization) for layer in discriminator.layers)
    assert discriminator([tf.zeros([1, 16, 16, 1]), tf.zeros([1, 16, 16, 2])]).shape == (1, 4, 4, 1)


def test_config_round_trips_through_json_and_strings():
    config = override(CGANConfig(), {"depth": "5", "lambda_l1": "10", "disc_norm": "instance", "kernel_size": 5})
    assert (config.depth, config.lambda_l1, config.disc_norm, config.kernel_size) == (5, 10.0, "instance", 5)
    assert from_dict(CGANConfig, json.loads(json.dumps(dataclasses.asdict(config)))) == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.depth = 3


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"deepness": "3"}, "unknown setting --deepness for CGANConfig; valid: --depth, --base_width"),
        ({"depth": "five"}, "--depth='five': expected an integer"),
        ({"depth": True}, "--depth=True: expected an integer"),
        ({"disc_norm": "layer"}, "--disc_norm='layer': expected one of batch, instance"),
        ({"dropout": "1.5"}, r"--dropout=1.5: must be in \[0, 1\)"),
        ({"disc_layers": "9"}, r"--disc_layers=9: must be in \[1, depth=8\]"),
    ],
)
def test_bad_settings_say_what_is_wrong(values, message):
    with pytest.raises(ConfigError, match=message):
        override(CGANConfig(), values)


@dataclasses.dataclass(frozen=True)
class _TrainStandIn:
    """models/ saves the training config without knowing its type (train/ owns it)."""

    data: str = "somewhere"


def test_networks_rebuild_from_a_run_folder(tmp_path):
    config = RegressionConfig(**{key: value for key, value in TINY.items() if not key.startswith("disc")})
    networks = models.build("regression", config)
    models.write_run_config(tmp_path, "regression", config, _TrainStandIn())
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(**networks), tmp_path / models.CHECKPOINT_DIR, 1)
    manager.save(checkpoint_number=7)

    saved = models.read_run_config(tmp_path)
    assert (saved.model, saved.model_config, saved.train_config) == ("regression", config, {"data": "somewhere"})
    rebuilt = models.build_from_run(tmp_path, checkpoint="latest")
    gray = tf.random.uniform([2, 16, 16, 1], -1.0, 1.0, seed=4)
    np.testing.assert_array_equal(rebuilt["generator"](gray), networks["generator"](gray))
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):
        models.build_from_run(tmp_path, checkpoint="best")


def test_mixed_bfloat16_computes_in_16_bits_and_outputs_float32():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        networks = pix2pix.build(CGANConfig(**TINY))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    generator, discriminator = networks["generator"], networks["discriminator"]
    assert generator.get_layer("down2_conv").compute_dtype == "bfloat16"
    assert generator.get_layer("down2_conv").kernel.dtype == "float32"  # weights stay float32
    gray = tf.random.uniform([2, 16, 16, 1], -1.0, 1.0, seed=5)
    fake_color = generator(gray, training=True)
    logits = discriminator([gray, fake_color], training=True)
    assert fake_color.dtype == tf.float32 and logits.dtype == tf.float32
    assert bool(tf.reduce_all(tf.math.is_finite(logits)))


def _layers(network: keras.Model) -> list[keras.layers.Layer]:
    nested = [_layers(layer) if isinstance(layer, keras.Model) else [layer] for layer in network.layers]
    return [layer for layers in nested for layer in layers]


@pytest.mark.parametrize("name", ["zhang", "iizuka", "cyclegan", "guided"])
def test_float32_models_build_on_the_project_s_convolutions_and_bf16_ones_on_keras_s(name):
    """unet.convolution_layers(): Winograd's algorithm and the faster weight gradients
    (models/unet.py) in float32; Keras's layers in bf16, where they were measured. (The
    PatchGAN cyclegan borrows from pix2pix is on the project's layers in both.)"""
    entry = models.get(name)
    previous = keras.mixed_precision.global_policy()
    kinds = {}
    try:
        for policy in ("float32", "mixed_bfloat16"):
            keras.mixed_precision.set_global_policy(policy)
            networks = models.build(name, override(entry.config(), entry.presets[32]))
            kinds[policy] = {type(layer) for key, network in networks.items() if not key.startswith("discriminator")
                             for layer in _layers(network)}  # fmt: skip
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert unet.Conv2D in kinds["float32"] and unet.Conv2D not in kinds["mixed_bfloat16"]
    assert keras.layers.Conv2D in kinds["mixed_bfloat16"]
