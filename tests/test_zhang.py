"""`zhang`: class rebalancing, soft targets at the logits' resolution, annealed-mean decoding,
the step, mixed precision, and a run through the command line rebuilt from its folder."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from evaluate.__main__ import main as evaluate_main
from export.__main__ import export_run
from models import zhang
from models.config import ConfigError
from models.zhang import ZhangConfig
from preprocess import color, dataset
from train import loop, steps
from train.__main__ import main
from train.config import TrainConfig

TINY = ZhangConfig(base_width=2)


def _bin(a: float, b: float) -> int:
    """Index of the in-gamut bin centred at (a, b)."""
    return int(np.flatnonzero((color.ab_bins() == [a, b]).all(axis=1))[0])


def _batch(size: int = 2, side: int = 32, seed: int = 0) -> dict[str, tf.Tensor]:
    return {
        "gray": tf.random.stateless_uniform([size, side, side, 1], [seed, 1], -1.0, 1.0),
        "color": tf.random.stateless_uniform([size, side, side, 2], [seed, 2], -0.5, 0.5),
    }


# ---------------------------------------------------------------------------------------
# class rebalancing


def test_smoothed_prior_is_a_gaussian_over_the_bin_centres():
    counts = np.zeros(len(color.ab_bins()))
    counts[_bin(0, 0)] = 7
    prior = zhang.smoothed_prior(counts, sigma=5.0)
    assert prior.sum() == pytest.approx(1.0)
    centre = prior[_bin(0, 0)]
    # exp(-d^2 / (2 * 25)): d = 10 -> e^-2, d = 10 sqrt(2) -> e^-4, d = 20 -> e^-8
    assert prior[_bin(10, 0)] / centre == pytest.approx(math.exp(-2))
    assert prior[_bin(-10, 10)] / centre == pytest.approx(math.exp(-4))
    assert prior[_bin(0, -20)] / centre == pytest.approx(math.exp(-8))
    np.testing.assert_array_equal(zhang.smoothed_prior(counts, sigma=0.0), counts / 7)


def test_rebalance_weights_by_hand():
    q = len(color.ab_bins())
    common, rare = _bin(0, 0), _bin(60, 60)
    counts = np.zeros(q)
    counts[common], counts[rare] = 3, 1
    weights = zhang.rebalance_weights(counts, rebalance_lambda=0.5, prior_sigma=0.0)
    # p = 3/4 and 1/4; w proportional to 1 / (p / 2 + 1 / (2 Q)); E_p[w] = 1
    raw = {common: 1 / (0.375 + 0.5 / q), rare: 1 / (0.125 + 0.5 / q), "unseen": 2.0 * q}
    scale = 1 / (0.75 * raw[common] + 0.25 * raw[rare])
    assert weights[common] == pytest.approx(scale * raw[common])
    assert weights[rare] == pytest.approx(scale * raw[rare])
    assert weights[_bin(-20, 30)] == pytest.approx(scale * raw["unseen"])
    assert 0.75 * weights[common] + 0.25 * weights[rare] == pytest.approx(1.0)

    # with smoothing: the expected weight under the smoothed prior is 1; lambda 1 turns rebalancing off
    smoothed = zhang.rebalance_weights(counts, 0.5, 5.0)
    assert (zhang.smoothed_prior(counts, 5.0) * smoothed).sum() == pytest.approx(1.0)
    assert smoothed[rare] > smoothed[common]
    np.testing.assert_allclose(zhang.rebalance_weights(counts, 1.0, 5.0), np.ones(q))
    with pytest.raises(ValueError, match=f"over the {q} ab bins"):
        zhang.rebalance_weights(np.ones(313))


def test_the_loss_weights_each_pixel_by_its_nearest_bin():
    q = len(color.ab_bins())
    logits = tf.random.stateless_normal([1, 1, 2, q], [3, 4])
    ab = tf.constant([[[[2.0, -1.0], [41.0, 19.0]]]])  # Lab units: nearest bins (0, 0) and (40, 20)
    targets = color.soft_encode(ab)
    weights = np.ones(q, np.float32)
    weights[_bin(0, 0)], weights[_bin(40, 20)] = 0.5, 4.0
    rebalanced, plain = steps.weighted_cross_entropy(logits, targets, tf.constant(weights))
    pixel = -tf.reduce_sum(targets * tf.nn.log_softmax(logits), axis=-1)[0, 0].numpy()
    assert float(plain) == pytest.approx(pixel.mean(), rel=1e-5)
    assert float(rebalanced) == pytest.approx((0.5 * pixel[0] + 4.0 * pixel[1]) / 2, rel=1e-5)


# ---------------------------------------------------------------------------------------
# targets and decoding


@pytest.mark.parametrize(("output_stride", "side"), [(4, 8), (2, 16)])
def test_soft_targets_at_the_logits_resolution(output_stride, side):
    config = ZhangConfig(base_width=2, output_stride=output_stride)
    network = zhang.logits_network(config)
    # 4x4 blocks of one colour each, so that the quarter-resolution target is that colour:
    # random bins, a little off their centres
    rng = np.random.default_rng(0)
    chosen = rng.integers(0, len(color.ab_bins()), size=(2, 8, 8))
    blocks = (color.ab_bins()[chosen] + rng.uniform(-4, 4, size=(2, 8, 8, 2))).astype(np.float32)
    ab = np.repeat(np.repeat(blocks, 4, axis=1), 4, axis=2)  # [2, 32, 32, 2] Lab units
    logits = network(tf.zeros([2, 32, 32, 1]))
    assert logits.shape == (2, side, side, len(color.ab_bins())) and logits.dtype == tf.float32

    targets = zhang.soft_targets(tf.constant(ab / color.AB_SCALE), tf.shape(logits)[1:3], config)
    assert targets.shape == logits.shape
    np.testing.assert_allclose(tf.reduce_sum(targets, -1), 1.0, rtol=1e-5)
    assert set(np.count_nonzero(targets.numpy(), axis=-1).ravel()) == {config.soft_neighbours}
    if output_stride == 4:
        np.testing.assert_array_equal(tf.argmax(targets, -1).numpy(), chosen)

    # the colour is averaged down: two halves of a 4x4 cell give their mean's bin
    halves = np.zeros([1, 4, 4, 2], np.float32)
    halves[:, :, :2] = [40.0, 0.0]
    halves[:, :, 2:] = [0.0, 40.0]
    mean = zhang.soft_targets(tf.constant(halves / color.AB_SCALE), [1, 1], config)
    assert int(tf.argmax(mean[0, 0, 0])) == _bin(20, 20)


def test_annealed_mean_goes_from_the_mean_at_t1_to_the_mode_as_t_shrinks():
    q = len(color.ab_bins())
    bins = color.ab_bins()
    logits = tf.random.stateless_normal([2, 3, 3, q], [5, 6])
    mode = tf.one_hot(tf.random.stateless_uniform([2, 3, 3], [7, 8], 0, q, tf.int32), q)
    logits += 10.0 * mode  # a clear favourite per pixel

    mean = np.einsum("bhwq,qc->bhwc", tf.nn.softmax(logits).numpy(), bins) / color.AB_SCALE
    np.testing.assert_allclose(zhang.decode(logits, 1.0), mean, atol=1e-5)
    favourite = bins[np.argmax(logits.numpy(), -1)] / color.AB_SCALE
    np.testing.assert_allclose(zhang.decode(logits, 0.01), favourite, atol=1e-4)
    assert np.abs(zhang.decode(logits, 0.38) - favourite).mean() < np.abs(mean - favourite).mean()
    # one temperature per image
    both = zhang.decode(logits, tf.constant([1.0, 0.01]))
    np.testing.assert_allclose(both[0], mean[0], atol=1e-5)
    np.testing.assert_allclose(both[1], favourite[1], atol=1e-4)
    assert float(tf.reduce_max(tf.abs(both))) <= 1.0


def test_the_generator_decodes_the_network_at_any_temperature():
    generator = models.build("zhang", TINY)["generator"]
    assert generator.trainable_variables and all(
        any(v is w for w in generator.network.trainable_variables) for v in generator.trainable_variables
    )  # no weights of its own
    bias = generator.network.get_layer("conv8_bins").bias  # so that the logits differ between bins
    bias.assign(tf.random.stateless_normal(bias.shape, [1, 2]))
    for shape in [(2, 32, 32), (1, 48, 64)]:
        gray = tf.random.uniform([*shape, 1], -1.0, 1.0, seed=1)
        fake_color = generator(gray, training=False)
        assert fake_color.shape == (*shape, 2) and fake_color.dtype == tf.float32
        assert float(tf.reduce_max(tf.abs(fake_color))) <= 1.0
        logits = generator.network(gray, training=False)
        expected = tf.image.resize(zhang.decode(logits, TINY.temperature), shape[1:])
        np.testing.assert_allclose(fake_color, expected, atol=1e-6)
        default = tf.fill([shape[0]], TINY.temperature)
        np.testing.assert_allclose(generator([gray, default], training=False), fake_color, atol=1e-6)
        hot = generator([gray, tf.fill([shape[0]], 1.0)], training=False)
        assert not np.allclose(hot, fake_color, atol=1e-4)


def test_presets_build_the_paper_network_at_256_and_a_small_one_at_32():
    paper = zhang.logits_network(ZhangConfig(**zhang.PRESETS[256]))
    assert 32.0e6 < paper.count_params() < 32.5e6  # the paper's net with Q bins out
    small = ZhangConfig(**zhang.PRESETS[32])
    assert small.stride == 8 and zhang.logits_network(small).count_params() < 2.1e6


# ---------------------------------------------------------------------------------------
# training


def test_a_compiled_step_gives_finite_losses_and_moves_every_weight():
    """Under tf.function; the eager step runs in the tests below."""
    networks = models.build("zhang", TINY)
    optimizers = {name: keras.optimizers.Adam(1e-3) for name in networks}
    counts = np.arange(len(color.ab_bins())) % 7
    step = tf.function(steps.zhang_step(TINY, ab_prior=counts))
    before = [v.numpy().copy() for v in networks["generator"].trainable_variables]
    losses = step(networks, optimizers, _batch())
    assert set(losses) == {"gen/total", "gen/ce"}
    assert all(math.isfinite(float(value)) for value in losses.values())
    assert float(losses["gen/total"]) != pytest.approx(float(losses["gen/ce"]))  # rebalanced
    moved = [not np.array_equal(old, new.numpy()) for old, new in zip(before, networks["generator"].trainable_variables)]
    assert all(moved)


def test_without_a_prior_every_pixel_counts_the_same(capsys):
    networks = models.build("zhang", TINY)
    optimizers = {name: keras.optimizers.Adam(1e-3) for name in networks}
    losses = steps.make("zhang", TINY, None)(networks, optimizers, _batch())
    assert float(losses["gen/total"]) == pytest.approx(float(losses["gen/ce"]))
    assert capsys.readouterr().out.count("no ab prior; training without class rebalancing") == 1


def test_mixed_precision_keeps_logits_and_colour_in_float32():
    train = TrainConfig(precision="mixed_bfloat16", eager=True)
    with loop.runtime(train):
        training = loop.build("zhang", TINY, train, total_steps=2)
        losses, finite = training.train_step(_batch())
        generator = training.networks["generator"]
        assert generator.network.get_layer("conv4_1").compute_dtype == "bfloat16"
        gray = _batch()["gray"]
        assert generator.network(gray).dtype == tf.float32 and generator(gray).dtype == tf.float32
    assert bool(finite), losses


@pytest.mark.parametrize("precision, layer_module", [("float32", "models.unet"), ("mixed_bfloat16", "keras")])
def test_the_network_takes_the_project_s_convolutions_in_float32_and_keras_s_in_bf16(precision, layer_module):
    """float32 on AVX2 trains 1.2x faster on models/unet.py's gradients; bf16 keeps what AMX was measured with."""
    train = TrainConfig(precision=precision)
    with loop.runtime(train):
        network = loop.build("zhang", TINY, train, total_steps=2).networks["generator"].network
    for name in ("conv1_1", "conv5_1", "conv8_1", "conv8_bins"):
        assert type(network.get_layer(name)).__module__.startswith(layer_module), name


# ---------------------------------------------------------------------------------------
# the command line and the run folder


@pytest.fixture(scope="module")
def shards_with_prior(tiny_shards, tmp_path_factory):
    """tiny_shards with the ab prior `make data` writes: the train split's pixel counts over the bins."""
    out = tmp_path_factory.mktemp("zhang") / "shards"
    shutil.copytree(tiny_shards, out)
    counts = sum(color.ab_histogram(batch["color"].numpy() * color.AB_SCALE)
                 for batch in dataset.load(out, "train", 40, training=False))  # fmt: skip
    manifest = dataset.Shards(out).manifest
    manifest["ab_prior"] = {"counts": counts.tolist()}
    (out / dataset.MANIFEST).write_text(json.dumps(manifest))
    return out


def test_a_run_uses_the_prior_and_rebuilds_from_its_folder(shards_with_prior, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["--model=zhang", f"--data={shards_with_prior}", f"--run={run}", "--base_width=2", "--batch_size=4",
            "--steps=2", "--val_batches=1", "--eager", "--temperature=0.5"]  # fmt: skip
    assert main(argv) == 0
    assert "no ab prior" not in capsys.readouterr().out
    saved = models.read_run_config(run)
    assert saved.model_config == ZhangConfig(base_width=2, temperature=0.5)
    assert (run / "samples" / "step-00000002.png").exists()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"gen/total", "gen/ce"} <= set(records[0]) and any("val/l1" in record for record in records)

    rebuilt = models.build_from_run(run, checkpoint="latest")["generator"]
    assert rebuilt.temperature == 0.5
    assert rebuilt(tf.zeros([1, 24, 40, 1])).shape == (1, 24, 40, 2)


def test_the_loops_checkpoint_restores_into_a_fresh_build(tmp_path):
    """The generator wraps its network: saved once, restored whole by build_from_run."""
    train = TrainConfig(eager=True, precision="float32")  # rebuilt outside training: float32
    with loop.runtime(train):
        training = loop.build("zhang", TINY, train, total_steps=1)
        training.train_step(_batch())
    models.write_run_config(tmp_path, "zhang", TINY, train)
    tf.train.CheckpointManager(training.checkpoint, tmp_path / models.CHECKPOINT_DIR, 1).save(checkpoint_number=1)
    assert list(training.optimizers) == ["generator"]

    rebuilt = models.build_from_run(tmp_path, checkpoint="latest")["generator"]
    gray = tf.random.uniform([2, 32, 32, 1], -1.0, 1.0, seed=2)
    trained = training.networks["generator"]
    np.testing.assert_array_equal(rebuilt.network(gray), trained.network(gray))
    np.testing.assert_array_equal(rebuilt([gray, tf.constant([0.2, 1.0])]), trained([gray, tf.constant([0.2, 1.0])]))
    stored = tf.train.load_checkpoint(str(tmp_path / models.CHECKPOINT_DIR)).get_variable_to_shape_map()
    weights = [key for key in stored if "/.ATTRIBUTES/" in key and "optimizer" not in key and key.startswith("generator")]
    assert len(weights) == len(trained.variables)  # each weight once


def test_make_evaluate_sweeps_the_decoding_temperature(shards_with_prior, tmp_path):
    from evaluate.__main__ import main as evaluate_main

    run = tmp_path / "run"
    argv = ["--model=zhang", f"--data={shards_with_prior}", f"--run={run}", "--base_width=2", "--batch_size=4",
            "--steps=2", "--val_batches=1"]  # fmt: skip
    assert main(argv) == 0
    assert evaluate_main([f"--run={run}", f"--data={shards_with_prior}", "--split=val", "--limit=3",
                          "--temperatures=0.1,1", f"--out={tmp_path}", "--name=sweep"]) == 0  # fmt: skip
    results = json.loads((tmp_path / "sweep" / "metrics.json").read_text())
    assert list(results["models"]) == ["baseline", "run@T=0.1", "run@T=1"]
    cold, warm = (results["models"][name]["mean"] for name in ("run@T=0.1", "run@T=1"))
    assert warm["mae_ab"] != cold["mae_ab"]  # each decoded at its own temperature
    assert (tmp_path / "sweep" / "tradeoff.png").stat().st_size > 0
    assert evaluate_main([f"--run={run}", f"--data={shards_with_prior}", "--temperatures=0,x"]) == 2

    assert evaluate_main([f"--run={run}", f"--data={shards_with_prior}", "--split=val", "--limit=2",
                          "--temperatures=0.38", "--decode-rebalance=0,1", f"--out={tmp_path}", "--name=r"]) == 0  # fmt: skip
    results = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert list(results["models"]) == ["baseline", "run@r=0,T=0.38", "run@r=1,T=0.38"]
    as_trained, rebalanced = (results["models"][name]["mean"] for name in ("run@r=0,T=0.38", "run@r=1,T=0.38"))
    assert as_trained["mae_ab"] != rebalanced["mae_ab"]
    assert evaluate_main([f"--run={run}", f"--data={shards_with_prior}", "--decode-rebalance=-1"]) == 2

    assert evaluate_main([f"--run={run}", f"--data={shards_with_prior}", "--split=val", "--limit=2",
                          "--temperatures=1", "--chroma-gains=1,2", f"--out={tmp_path}", "--name=g"]) == 0  # fmt: skip
    results = json.loads((tmp_path / "g" / "metrics.json").read_text())
    assert list(results["models"]) == ["baseline", "run@g=1,T=1", "run@g=2,T=1"]  # each gain's effect: below
    assert evaluate_main([f"--run={run}", f"--data={shards_with_prior}", "--chroma-gains=0"]) == 2


def test_a_decoding_sweep_gives_each_decoding_what_the_generator_gives_alone():
    from evaluate.__main__ import DecodingSweep
    from export.savedmodel import colorize_pixels

    # logits that follow the photo (an untrained network's barely vary), so each decoding shows
    network = keras.Sequential([keras.Input([None, None, 1]), keras.layers.AveragePooling2D(4),
                                keras.layers.Conv2D(len(color.ab_bins()), 1, bias_initializer="random_normal",
                                                    kernel_initializer=keras.initializers.RandomNormal(0, 3, seed=2))])
    generator = zhang.ZhangGenerator(network, TINY.temperature)
    generator.log_rebalance.assign(tf.random.stateless_normal(generator.log_rebalance.shape, [5, 6]))
    # (temperature, decode_rebalance, chroma_gain)
    decodings = [(0.38, 0.0, 1.0), (1.0, 0.0, 1.0), (0.38, 1.0, 1.0), (0.6, 0.5, 1.0), (0.6, 0.5, 1.5)]
    sweep = DecodingSweep(generator, 32, TINY.stride, decodings)
    one_photo_per_call = DecodingSweep(generator, 32, TINY.stride, decodings, max_pixels=1)
    photos = np.stack([np.random.default_rng(seed).integers(0, 256, [40, 56, 3], dtype=np.uint8) for seed in (0, 1)])
    buffer = np.empty_like(photos)  # one array refilled with the next photos, as a reader may do
    for batch in (photos, photos[::-1]):
        buffer[...] = batch
        swept = [sweep.model(index)(buffer) for index in range(len(decodings))]
        for index, ((temperature, rebalance, gain), colorized) in enumerate(zip(decodings, swept)):
            generator.decode_rebalance, generator.chroma_gain = rebalance, gain
            alone = colorize_pixels(generator, tf.constant(batch), 32, TINY.stride, tf.constant([temperature] * 2))
            assert colorized.shape == batch.shape and colorized.dtype == np.uint8
            assert np.abs(colorized.astype(int) - alone.numpy()).max() <= 1
            np.testing.assert_array_equal(one_photo_per_call.model(index)(buffer), colorized)
        assert len({colorized.tobytes() for colorized in swept}) == len(decodings)  # each its own decoding
    assert not np.array_equal(sweep.model(0)(photos[:1])[0], sweep.model(0)(photos[1:])[0])


def test_rebalancing_at_decoding_multiplies_the_distribution_by_the_weights():
    logits = tf.constant([[[[0.0, 0.0, 3.0]]]])  # [1, 1, 1, Q=3]: bin 2 is the likely one
    log_weights = tf.math.log(tf.constant([10.0, 1.0, 1.0]))
    p = tf.nn.softmax(logits, -1).numpy().ravel()
    expected = p * [10.0, 1.0, 1.0] / (p * [10.0, 1.0, 1.0]).sum()
    bins = tf.constant(color.ab_bins()[:3])
    got = tf.nn.softmax(logits + log_weights, -1).numpy().ravel()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    with_weights = zhang.decode(tf.pad(logits, [[0, 0]] * 3 + [[0, len(color.ab_bins()) - 3]], constant_values=-1e9),
                                1.0, tf.pad(log_weights, [[0, len(color.ab_bins()) - 3]]))  # fmt: skip
    np.testing.assert_allclose(with_weights.numpy().ravel(), (expected @ bins.numpy()) / color.AB_SCALE, rtol=1e-4)


def test_the_chroma_gain_widens_each_photos_colours_around_its_own_mean():
    logits = tf.random.stateless_normal([2, 3, 4, len(color.ab_bins())], [7, 8]) * 3.0
    plain = zhang.decode(logits, 0.5).numpy()
    mean = plain.mean(axis=(1, 2), keepdims=True)
    gained = zhang.decode(logits, 0.5, chroma_gain=tf.constant([1.5, 0.5])).numpy()
    np.testing.assert_allclose(gained[:1], mean[:1] + 1.5 * (plain[:1] - mean[:1]), atol=1e-6)
    np.testing.assert_allclose(gained[1:], mean[1:] + 0.5 * (plain[1:] - mean[1:]), atol=1e-6)
    np.testing.assert_allclose(gained.mean(axis=(1, 2)), mean[:, 0, 0], atol=1e-6)  # each photo's cast kept
    np.testing.assert_allclose(zhang.decode(logits, 0.5, chroma_gain=1.0).numpy(), plain, atol=1e-6)

    generator = models.build("zhang", dataclasses.replace(TINY, chroma_gain=2.0))["generator"]
    gray = tf.random.uniform([2, 32, 32, 1], -1, 1, seed=4)
    logits = generator.network(gray)
    np.testing.assert_allclose(generator(gray).numpy(), tf.image.resize(zhang.decode(logits, 0.38, None, 2.0),
                               [32, 32]).numpy(), atol=1e-6)  # fmt: skip
    with pytest.raises(ConfigError, match="--chroma_gain=0"):
        ZhangConfig(chroma_gain=0.0)


def test_the_step_stores_the_decoding_weights_in_the_generator(shards_with_prior, tmp_path):
    run = tmp_path / "run"
    argv = ["--model=zhang", f"--data={shards_with_prior}", f"--run={run}", "--base_width=2", "--batch_size=4",
            "--steps=1", "--val_batches=1", "--rebalance_lambda=1"]  # fmt: skip
    assert main(argv) == 0
    generator = models.build_from_run(run, checkpoint="latest")["generator"]
    counts = json.loads((shards_with_prior / "manifest.json").read_text())["ab_prior"]["counts"]
    expected = np.log(zhang.rebalance_weights(np.asarray(counts), 0.5, 5.0))
    np.testing.assert_allclose(generator.log_rebalance.numpy(), expected, rtol=1e-5)
    gray = tf.random.uniform([1, 16, 16, 1], -1, 1, seed=1)
    plain = generator(gray).numpy()
    generator.decode_rebalance = 1.0
    assert np.abs(generator(gray).numpy() - plain).max() > 1e-3


class _OldGenerator(tf.Module):  # the generator as saved before it had log_rebalance
    def __init__(self, network):
        self.network = network


def _old_run(run, data) -> dict[str, keras.Model]:
    """A zhang run (data: its training data) whose checkpoint is from before log_rebalance was saved."""
    config = ZhangConfig(base_width=2)
    networks = models.build("zhang", config)
    models.write_run_config(run, "zhang", config, TrainConfig(data=str(data)), data={"tile_size": 16})
    tf.train.Checkpoint(generator=_OldGenerator(networks["generator"].network)).save(str(run / "best" / "ckpt"))
    return networks


def test_a_checkpoint_from_before_log_rebalance_still_loads_and_other_gaps_still_fail(tmp_path):
    networks = _old_run(tmp_path, tmp_path / "data-since-deleted")
    rebuilt = models.build_from_run(tmp_path)["generator"]
    np.testing.assert_array_equal(rebuilt.log_rebalance.numpy(), 0.0)
    gray = tf.random.uniform([1, 16, 16, 1], -1.0, 1.0, seed=3)
    np.testing.assert_array_equal(rebuilt.network(gray), networks["generator"].network(gray))

    other = tmp_path / "other"
    models.write_run_config(other, "zhang", ZhangConfig(base_width=4), TrainConfig())
    shutil.copytree(tmp_path / "best", other / "best")
    with pytest.raises((AssertionError, ValueError)):
        models.build_from_run(other)


def test_an_old_checkpoint_takes_its_decoding_weights_from_its_training_data(shards_with_prior, tmp_path):
    _old_run(tmp_path, shards_with_prior)
    rebuilt = models.build_from_run(tmp_path)["generator"]
    counts = np.asarray(json.loads((shards_with_prior / "manifest.json").read_text())["ab_prior"]["counts"])
    expected = np.log(zhang.rebalance_weights(counts, 0.5, 5.0))  # what the training step sets
    np.testing.assert_allclose(rebuilt.log_rebalance.numpy(), expected, rtol=1e-5)


def test_rebalanced_decoding_without_weights_is_refused_not_ignored(tmp_path, capsys):
    run = tmp_path / "run"
    _old_run(run, tmp_path / "data-since-deleted")
    argv = [f"--run={run}", "--checkpoints=best", f"--data={tmp_path}", "--decode-rebalance=0,0.5"]
    assert evaluate_main(argv) == 2
    assert f"{run}: no rebalancing weights" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no rebalancing weights"):
        export_run(run, tmp_path / "export", decode_rebalance=0.5)
    assert evaluate_main([f"--run={run}", "--checkpoints=best", f"--data={tmp_path / 'none'}",
                          "--decode-rebalance=0"]) == 2  # fmt: skip
    assert "no rebalancing weights" not in capsys.readouterr().err  # decoding as trained needs none
