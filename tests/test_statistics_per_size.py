"""Batch-norm statistics per image size (--statistics_sides) in every model that trains with
--scales: a training step updates only the set of its batch's size (also on two replicas),
every photo is normalised with the set of the side nearest its size (eagerly and traced), a
checkpoint with one set starts them all, --scales sets the sides, and the export picks the
set by the photo's size."""

from __future__ import annotations

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from export import __main__ as export_cli
from export.inference import Colorizer
from models import unet
from models.config import ConfigError
from tests.helpers import TrainSettings, photo
from train import loop, steps
from train.config import TrainConfig, resolve

# Tiny networks whose sides may be any multiple of 8.
TINY = {
    "cgan": {"depth": 3, "base_width": 2, "max_width": 4, "dropout_blocks": 1, "disc_layers": 2, "disc_base_width": 2},
    "regression": {"depth": 3, "base_width": 2, "max_width": 4, "dropout_blocks": 1},
    "zhang": {"base_width": 2},
    "iizuka": {"base_width": 2, "global_size": 32},
    "guided": {"base_width": 2},
}
# iizuka's step with classes runs the generator's view with the global features, not the generator
CLASSES = ("red", "green", "blue")
DATA = types.SimpleNamespace(ab_prior=None, label_names=CLASSES)  # what labelled shards tell a step


def _config(model: str, sides: str = "64,32", **extra: object):
    return models.get(model).config(**TINY[model], statistics_sides=sides, **extra)


def _batch(side: int, seed: int = 0) -> dict[str, tf.Tensor]:
    return {
        "gray": tf.random.stateless_uniform([4, side, side, 1], [seed, 1], -1.0, 1.0),
        "color": tf.random.stateless_uniform([4, side, side, 2], [seed, 2], -0.5, 0.5),
        "label": tf.constant([0, 1, 2, -1], tf.int64),
    }


def _sets(generator: keras.Model, indices: tuple[int, ...] = (0, 1)) -> list[np.ndarray]:
    """Those statistics sets of the generator's batch norms, each every moving mean and variance concatenated."""
    norms = unet.batch_norms(generator)
    return [np.concatenate([v.numpy() for norm in norms for v in norm.statistics(index)]) for index in indices]


def _visible(generator: keras.Model) -> None:
    """Kernels twice He's scale (the initial ones give colours near gray everywhere), so that
    the colours show which statistics normalised them."""
    rng = np.random.default_rng(0)
    for weight in generator.weights:
        if weight.path.endswith("kernel"):
            weight.assign(rng.normal(0.0, 2.0 * np.prod(weight.shape[:-1]) ** -0.5, weight.shape).astype(np.float32))


def _move_set(generator: keras.Model, index: int) -> None:
    """Statistics set `index` far from where it was, so that a photo normalised with it shows it."""
    for norm in unet.batch_norms(generator):
        mean, variance = norm.statistics(index)
        mean.assign(mean - 0.5)
        variance.assign(variance * 0.5)


@pytest.mark.parametrize("model", TINY)
def test_a_training_step_updates_only_the_set_of_its_batch_size(model):
    config = _config(model, **({"classes": len(CLASSES)} if model == "iizuka" else {}))
    networks = models.build(model, config)
    optimizers = {name: keras.optimizers.Adam(1e-3) for name in networks}
    step = steps.make(model, config, DATA)
    generator = networks["generator"]
    before = _sets(generator)
    tf.function(step)(networks, optimizers, _batch(32))  # traced: every set's branch built, the 32 px one run
    after_small = _sets(generator)
    np.testing.assert_array_equal(after_small[0], before[0])
    assert not np.allclose(after_small[1], before[1])
    step(networks, optimizers, _batch(64, seed=1))  # eagerly
    after_large = _sets(generator)
    np.testing.assert_array_equal(after_large[1], after_small[1])
    assert not np.allclose(after_large[0], after_small[0])


def test_two_replicas_with_synchronised_statistics_keep_a_set_per_size_as_one_does():
    """tf.distribute refuses the synchronised moments' all-reduce inside control flow, such as
    a tf.switch_case of the network per set: the set is chosen without any."""
    # without dropout: each replica draws its own
    config, train = _config("regression", "32,16", dropout=0.0), TrainConfig(precision="float32")
    sets = []
    for strategy in (tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
        with loop.runtime(train):
            training = loop.build("regression", config, train, total_steps=2, strategy=strategy)
            initial = _sets(training.networks["generator"])
            for side in (32, 16):
                for batch in strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(_batch(side))):
                    training.train_step(batch)
        sets.append(_sets(training.networks["generator"]))
        assert all(not np.allclose(after, before) for after, before in zip(sets[-1], initial))
    for one, two in zip(*sets):
        np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", TINY)
def test_photos_use_the_set_of_the_nearest_side_and_a_one_set_checkpoint_starts_every_set(model, tmp_path):
    networks = models.build(model, _config(model))
    generator = networks["generator"]
    _visible(generator)
    _move_set(generator, 1)
    two_sets = tf.train.Checkpoint(**networks).save(str(tmp_path / "two" / "ckpt"))
    # the same weights with one set, holding the two-set network's set 0 or set 1 in turn
    single = models.build(model, _config(model, ""))
    tf.train.Checkpoint(**single).restore(two_sets).expect_partial()
    photos = {side: tf.random.stateless_uniform([1, side, side, 1], [side, 0], -1.0, 1.0) for side in (32, 40, 56, 64)}

    def traced(network):
        return tf.function(lambda gray: network(gray), input_signature=[tf.TensorSpec([None, None, None, 1])])

    # Each call is compared with the one-set network called the same way, op by op or traced:
    # a traced graph rounds the transposed convolutions' phases (unet._transpose) differently,
    # and guided's deep network, with these kernels, magnifies that to 2e-3.
    single_calls = {"op by op": single["generator"], "traced": traced(single["generator"])}
    expected = {}
    for index in (0, 1):
        for norm, source in zip(unet.batch_norms(single["generator"]), unet.batch_norms(generator)):
            for target, value in zip(norm.statistics(0), source.statistics(index)):
                target.assign(value)
        expected[index] = {(way, side): call(gray).numpy() for way, call in single_calls.items()
                           for side, gray in photos.items()}  # fmt: skip
    assert np.abs(expected[0]["op by op", 32] - expected[1]["op by op", 32]).max() > 0.05
    calls = {"op by op": generator, "traced": traced(generator)}  # one trace serves every size
    for side, gray in photos.items():
        for way, call in calls.items():  # the set is chosen as it runs
            np.testing.assert_allclose(call(gray), expected[1 if side <= 40 else 0][way, side], atol=1e-4,
                                       err_msg=f"{side} px, {way}")  # fmt: skip

    # a checkpoint from before the sets (a fine-tune's source) starts each as a copy of its one set
    one_set = tf.train.Checkpoint(**single).save(str(tmp_path / "one" / "ckpt"))
    fresh = models.build(model, _config(model))
    status = tf.train.Checkpoint(**fresh).restore(one_set).expect_partial()
    models.start_missing_statistics(fresh, models.assert_restored(status, one_set, fresh))
    (source,) = _sets(single["generator"], (0,))
    for restored in _sets(fresh["generator"]):
        np.testing.assert_array_equal(restored, source)
    with pytest.raises(ConfigError, match="statistics_sides"):
        _config(model, "64,x")


@pytest.mark.parametrize("model", [*TINY, "cyclegan"])
def test_scales_set_the_sides_and_only_cyclegan_keeps_one_set(model, tiny_shards, tmp_path, capsys):
    tiny = [f"--{key}={value}" for key, value in TINY.get(model, {}).items()]
    settings = resolve([f"--model={model}", f"--data={tiny_shards}", f"--run={tmp_path / 'run'}", *tiny,
                        "--scales=1,0.5"])  # fmt: skip
    error = capsys.readouterr().err
    if model == "cyclegan":  # paired: it may train at several sizes, with one set
        assert "--model=cyclegan's batch norms keep one set of statistics" in error
    else:
        assert settings.model_config.sides == (32, 16) and "keep one set" not in error


@pytest.mark.parametrize("model", TINY)
def test_the_export_picks_the_set_by_the_photos_size(model, tmp_path, monkeypatch):
    config = _config(model, "32,16")
    networks = models.build(model, config)
    generator = networks["generator"]
    _visible(generator)
    _move_set(generator, 1)
    run = tmp_path / "run"
    models.write_run_config(run, model, config, TrainSettings(crop_size=32))
    # test_export checks exports with saved_model_cli in a fresh process: most of an export's time
    monkeypatch.setattr(export_cli, "check", lambda *args: None)
    for _ in range(2):  # the 16 px set moved, then back to the 32 px set's values
        tf.train.Checkpoint(**networks).save(str(run / models.BEST_DIR / "ckpt"))
        assert export_cli.main([f"--run={run}", f"--out={tmp_path / 'exports'}"]) == 0
        unet.copy_first_statistics(generator)
    moved, same = (Colorizer(tmp_path / "exports" / model, version=version) for version in (1, 2))
    large, small = photo(32, 32), photo(16, 16)
    # The two graphs differ only in the small photos' constants; the runtime optimises each
    # frozen graph on its own, which once left one value of 3,072 a level apart on a fresh clone.
    large_difference = np.abs(moved.colorize(large).astype(int) - same.colorize(large))
    assert large_difference.max() <= 1 and np.count_nonzero(large_difference) <= 3
    assert np.abs(moved.colorize(small).astype(int) - same.colorize(small)).max() > 3
