"""cyclegan: its step, the cycle loss, the history pool, exact resume, --unpaired and export."""

from __future__ import annotations

import io
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import models
from export import __main__ as export_cli
from export import colorize
from models.cyclegan import CycleGANConfig, HistoryPool
from preprocess import color, shards
from preprocess.dataset import DOMAINS, Shards, domain_of
from tests.helpers import photo
from models.config import ConfigError
from train import loop, steps
from train.__main__ import main
from train.config import TrainConfig

TINY = {"resnet_blocks": 1, "resnet_width": 4, "disc_layers": 2, "disc_base_width": 4, "pool_size": 3}
TINY_UNET = {**TINY, "generator": "unet", "depth": 3, "base_width": 4, "max_width": 8, "dropout_blocks": 1}
TINY_ARGS = [f"--{key}={value}" for key, value in TINY.items()]


def _batch(size: int = 2, side: int = 16) -> dict[str, tf.Tensor]:
    return {
        "gray": tf.random.stateless_uniform([size, side, side, 1], [0, 1], -1.0, 1.0),
        "color": tf.random.stateless_uniform([size, side, side, 2], [0, 2], -0.5, 0.5),
        "color_gray": tf.random.stateless_uniform([size, side, side, 1], [0, 3], -1.0, 1.0),
    }


@pytest.mark.parametrize(("config", "compiled"), [(TINY, False), (TINY, True), (TINY_UNET, False)],
                         ids=["resnet-eager", "resnet-tf.function", "unet-eager"])  # fmt: skip
def test_a_step_gives_finite_losses_and_moves_every_weight(config, compiled):
    config = CycleGANConfig(**config)
    networks = models.build("cyclegan", config)
    assert networks["generator"](tf.zeros([3, 16, 16, 1])).shape == (3, 16, 16, 2)  # what export freezes
    optimizers = {name: keras.optimizers.Adam(2e-4, beta_1=0.5) for name in networks}
    before = {name: [v.numpy().copy() for v in network.trainable_variables] for name, network in networks.items()}
    step = steps.make("cyclegan", config)
    losses = (tf.function(step) if compiled else step)(networks, optimizers, _batch())
    assert set(losses) == {"gen/total", "gen/adversarial_color", "gen/adversarial_gray", "gen/cycle_gray",
                           "gen/cycle_color", "gen/identity", "disc/total", "disc/color", "disc/gray"}  # fmt: skip
    assert all(np.isfinite(float(value)) for value in losses.values())
    for name, network in networks.items():
        unmoved = [v.path for v, old in zip(network.trainable_variables, before[name]) if np.array_equal(v.numpy(), old)]
        assert not unmoved, f"{name}: {unmoved}"
    assert set(step.state) == {"pool_color", "pool_gray"}
    assert int(step.state["pool_color"].count) == 2 and step.state["pool_gray"].images.numpy().shape == (3, 16, 16, 1)


def test_the_cycle_losses_are_zero_when_the_generators_undo_each_other():
    # Colour that is a function of lightness, ab = (0.5 L, -0.3 L): to_color computes it from
    # gray, to_gray takes the L channel back, so to_color o to_gray is the identity on such images.
    gray_in = keras.Input([None, None, 1])
    to_color = keras.Model(gray_in, keras.layers.Lambda(lambda g: tf.concat([0.5 * g, -0.3 * g], -1))(gray_in))
    lab_in = keras.Input([None, None, 3])
    to_gray = keras.Model(lab_in, keras.layers.Lambda(lambda lab: lab[..., :1])(lab_in))
    # the tiny discriminators, whose losses do not matter here
    networks = {**models.build("cyclegan", CycleGANConfig(**TINY)), "generator": to_color, "to_gray": to_gray}
    gray = tf.random.stateless_uniform([2, 8, 8, 1], [1, 1], -1.0, 1.0)
    light = tf.random.stateless_uniform([2, 8, 8, 1], [1, 2], -1.0, 1.0)
    color = tf.concat([light, 0.5 * light, -0.3 * light], -1)
    losses, fake_color, fake_gray = steps.cyclegan_generator_losses(networks, gray, color, CycleGANConfig(**TINY))
    assert float(losses["gen/cycle_gray"]) == 0.0 and float(losses["gen/cycle_color"]) == 0.0
    assert float(losses["gen/identity"]) == 0.0  # to_gray keeps a colourless image's L
    np.testing.assert_array_equal(fake_gray.numpy(), light.numpy())
    np.testing.assert_array_equal(fake_color.numpy()[..., :1], gray.numpy())  # a colorization keeps its L
    # and a generator that does not undo the other gives a cycle loss
    networks["generator"] = keras.Model(gray_in, keras.layers.Lambda(lambda g: tf.concat([g, g], -1))(gray_in))
    losses, _, _ = steps.cyclegan_generator_losses(networks, gray, color, CycleGANConfig(**TINY))
    assert float(losses["gen/cycle_color"]) > 0.1


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_the_pool_returns_the_image_while_filling_then_a_past_one_half_the_time(compiled):
    pool = HistoryPool(size=10, channels=1, seed=0)
    query = tf.function(pool.__call__) if compiled else pool
    # image n is filled with the value n, so a returned image tells which one it is
    images = lambda first, count: tf.reshape(tf.range(first, first + count, dtype=tf.float32), [count, 1, 1, 1]) * tf.ones([1, 4, 4, 1])  # noqa: E731
    for first in (0, 5):  # two batches of 5 fill the pool: every image comes back itself
        np.testing.assert_array_equal(query(images(first, 5)).numpy(), images(first, 5).numpy())
    assert int(pool.count) == 10
    returned, given = [], []
    for first in range(10, 2010, 8):
        out = query(images(first, 8)).numpy()
        assert (out == out[:, :1, :1]).all()  # whole images, not mixtures
        returned += list(out[:, 0, 0, 0])
        given += list(range(first, first + 8))
    returned, given = np.array(returned), np.array(given)
    past = returned != given
    assert abs(past.mean() - 0.5) < 0.03  # 2000 draws: the standard deviation of the share is 0.011
    assert (returned[past] < given[past]).all()  # a past image, never a later one
    assert int(pool.count) == 10


def test_the_pool_resumes_from_a_checkpoint(tmp_path):
    pool = HistoryPool(size=4, channels=2, seed=3)
    images = tf.random.stateless_uniform([6, 4, 4, 2], [2, 0])
    pool(images)
    path = tf.train.Checkpoint(pool=pool).save(str(tmp_path / "pool"))
    expected = pool(images[::-1]).numpy()
    restored = HistoryPool(size=4, channels=2, seed=99)
    tf.train.Checkpoint(pool=restored).restore(path).assert_consumed()
    np.testing.assert_array_equal(restored(images[::-1]).numpy(), expected)
    # images of another size (a resume with another --crop_size) start the pool afresh
    larger = tf.random.stateless_uniform([3, 8, 8, 2], [2, 1])
    np.testing.assert_array_equal(restored(larger).numpy(), larger.numpy())
    assert int(restored.count) == 3 and restored.images.numpy().shape == (4, 8, 8, 2)


def _checkpoint_values(path: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(path)
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH" and not key.startswith("save_counter")}  # fmt: skip


def _args(data, run, *extra: str) -> list[str]:
    return ["--model=cyclegan", f"--data={data}", f"--run={run}", "--batch_size=2", "--crop_size=16", *TINY_ARGS,
            "--val_batches=1", "--sample_images=2", *extra]  # fmt: skip


def _stopped_and_resumed_equals_unbroken(tiny_shards, tmp_path, common: list[str]) -> tuple[Path, dict]:
    """Trains 2 of 4 steps, resumes the run by its folder alone (the saved config), trains 4
    straight, and asserts both ckpt-4 hold the same values; (the unbroken run, its values)."""
    stopped, unbroken = tmp_path / "stopped", tmp_path / "unbroken"
    assert main(_args(tiny_shards, stopped, *common, "--steps=2")) == 0
    assert main(["--model=cyclegan", f"--run={stopped}", "--steps=4"]) == 0
    assert main(_args(tiny_shards, unbroken, *common)) == 0
    resumed = _checkpoint_values(str(stopped / "ckpt" / "ckpt-4"))
    reference = _checkpoint_values(str(unbroken / "ckpt" / "ckpt-4"))
    assert resumed.keys() == reference.keys()
    for key in reference:
        np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)
    return unbroken, reference


def test_a_resumed_unpaired_run_equals_one_that_never_stopped_and_exports(tiny_shards, tmp_path):
    # The pools (size 3, batch 2) are full by step 2, so the resumed half draws from restored pools.
    # Eager steps: three traces of the step would take most of a minute on two cores, and the
    # pool under tf.function has its own test above.
    common = ["--steps=4", "--deterministic", "--lr_schedule=linear", "--checkpoint_every=2", "--unpaired", "--eager"]
    unbroken, reference = _stopped_and_resumed_equals_unbroken(tiny_shards, tmp_path, common)
    pool_keys = [key for key in reference if key.startswith(("pool_color/", "pool_gray/"))]
    assert {key.split("/")[1] for key in pool_keys} >= {"images", "count", "rng"}, pool_keys
    assert any(key.startswith("to_gray_optimizer/") for key in reference)
    assert any(key.startswith("discriminator_gray_optimizer/") for key in reference)

    # the generator is what export freezes, and the export colorizes
    assert export_cli.main([f"--run={unbroken}", f"--out={tmp_path / 'exports'}"]) == 0
    Image.fromarray(photo(20, 28)).save(tmp_path / "in.png")
    assert colorize.main(["--model", str(tmp_path / "exports" / "cyclegan"), "--output", str(tmp_path / "out"),
                          str(tmp_path / "in.png")]) == 0  # fmt: skip
    assert np.asarray(Image.open(tmp_path / "out" / "in.png")).shape == (20, 28, 3)


def test_unpaired_batches_take_gray_and_colour_from_photos_with_no_id_in_common(tiny_shards):
    shards = Shards(tiny_shards)
    ids = [record["source_id"].numpy() for record in shards.records("train")]
    sides = {side: {i for i in ids if int(domain_of(tf.constant(i))) == DOMAINS.index(side)} for side in DOMAINS}
    assert sides["gray"] and sides["color"] and not sides["gray"] & sides["color"]
    assert sides["gray"] | sides["color"] == set(ids)

    # every gray image is the L of a gray-side tile, every colour one the Lab of a colour-side tile
    tiles = {side: [] for side in DOMAINS}
    for record in shards.records("train"):
        side = DOMAINS[int(domain_of(record["source_id"]))]
        tiles[side].append(color.rgb_to_model(record["rgb"][None]))
    batches = shards.unpaired_batches("train", 4, training=False).take(12)  # more than an epoch of either side

    def found(image: np.ndarray, side: str, index: int) -> bool:
        return any(np.array_equal(image, tile[index][0].numpy()) for tile in tiles[side])

    for batch in batches:
        for gray, ab, color_gray in zip(batch["gray"].numpy(), batch["color"].numpy(), batch["color_gray"].numpy()):
            assert found(gray, "gray", 0) and not found(gray, "color", 0)
            assert found(ab, "color", 1) and found(color_gray, "color", 0)


def test_bad_settings_say_what_is_wrong(tiny_shards, tmp_path, capsys):
    assert main(_args(tiny_shards, tmp_path / "a", "--steps=1", "--pool_size=-1")) == 2
    assert "--pool_size=-1: must be >= 0" in capsys.readouterr().err
    cgan = ["--model=cgan", f"--data={tiny_shards}", f"--run={tmp_path / 'b'}", "--unpaired"]
    assert main(cgan) == 2
    assert "unknown setting --unpaired for --model=cgan" in capsys.readouterr().err


def test_more_than_one_replica_is_refused_before_any_step():
    # conftest.py gives the CPU two logical devices
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    train = TrainConfig(strategy="mirrored", precision="float32")
    with loop.runtime(train), pytest.raises(ConfigError, match="keeps one pool_color and one pool_gray per run"):
        loop.build("cyclegan", CycleGANConfig(**TINY), train, total_steps=2, strategy=strategy)


@pytest.fixture(scope="module")
def gray_shards(tmp_path_factory):
    """Gray-only shards (make data DOMAIN=gray) of 32 px, as tiny_shards: 16 tiles of 8 gray photos."""
    root = tmp_path_factory.mktemp("old_scans")
    for number in range(8):
        Image.fromarray(photo(32, 48, seed=100 + number)[..., 1]).save(root / f"scan{number}.png")
    out = root / "shards"
    options = shards.Options(source=f"folder:{root}", size=32, mode="random", crops=2, val_fraction=0.0, domain="gray")
    shards.write(options, out, workers=1, log=io.StringIO())
    return out


def test_gray_data_batches_take_gray_from_the_gray_shards_and_colour_from_data(tiny_shards, gray_shards):
    data, gray = Shards(tiny_shards), Shards(gray_shards)
    scans = [color.rgb_to_model(tf.repeat(r["gray"][None], 3, -1))[0][0].numpy() for r in gray.records("train")]
    tiles = [color.rgb_to_model(r["rgb"][None]) for r in data.records("train")]
    assert len(scans) == 16
    batches = data.unpaired_batches("train", 4, gray_shards=gray, training=False).take(12)  # 3 epochs of the scans
    seen = set()
    for batch in batches:
        for gray_image, ab, color_gray in zip(batch["gray"].numpy(), batch["color"].numpy(), batch["color_gray"].numpy()):
            matches = [i for i, scan in enumerate(scans) if np.array_equal(gray_image, scan)]
            assert matches, "a gray image that is no scan"
            seen.update(matches)
            assert any(np.array_equal(ab, tile[1][0].numpy()) and np.array_equal(color_gray, tile[0][0].numpy())
                       for tile in tiles)  # fmt: skip
    assert seen == set(range(16))


def test_gray_only_shards_are_refused_where_colour_truth_is_needed(gray_shards, tiny_shards, exported, tmp_path,
                                                                  capsys):  # fmt: skip
    for model in ("cgan", "zhang", "cyclegan"):
        assert main([f"--model={model}", f"--data={gray_shards}", f"--run={tmp_path / model}", "--steps=1"]) == 2
        error = capsys.readouterr().err
        assert error.strip() == (f"make train: {gray_shards} has only gray photos (DOMAIN=gray); train MODEL=cyclegan "
                                 f"with GRAY_DATA={gray_shards} and colour shards as DATA")  # fmt: skip
        assert not (tmp_path / model).exists()
    cgan = ["--model=cgan", f"--data={tiny_shards}", f"--run={tmp_path / 'cgan'}", f"--gray_data={gray_shards}"]
    assert main(cgan) == 2
    assert "--gray_data is for unpaired training (--model=cyclegan)" in capsys.readouterr().err
    assert main(_args(tiny_shards, tmp_path / "both", f"--gray_data={gray_shards}", "--unpaired")) == 2
    assert "--gray_data and --unpaired both choose the gray photos" in capsys.readouterr().err
    assert main(_args(tiny_shards, tmp_path / "big", f"--gray_data={gray_shards}", "--batch_size=17")) == 2
    assert f"--gray_data={gray_shards}: 16 training tiles, fewer than --batch_size=17" in capsys.readouterr().err

    from evaluate.__main__ import main as evaluate_main

    assert evaluate_main([f"--data={gray_shards}", f"--export={exported}", f"--out={tmp_path / 'reports'}"]) == 2
    assert "has only gray photos (DOMAIN=gray); evaluate on colour shards" in capsys.readouterr().err


def test_a_run_on_gray_data_resumes_bit_identically_under_the_compiled_step(tiny_shards, gray_shards, tmp_path):
    # The pools (size 3, batch 2) are full by step 2, so the resumed half draws from restored pools;
    # both halves and the unbroken run trace the compiled step (no --eager) on their own.
    common = ["--steps=4", "--deterministic", "--lr_schedule=linear", "--checkpoint_every=2", f"--gray_data={gray_shards}"]
    unbroken, reference = _stopped_and_resumed_equals_unbroken(tiny_shards, tmp_path, common)
    assert int(reference["pool_gray/count/.ATTRIBUTES/VARIABLE_VALUE"]) == 3

    # validated on DATA's val split (the scans have no colour truth); samples: gray | colorized | gray again | real
    saved = json.loads((unbroken / "config.json").read_text())
    assert saved["train_config"]["gray_data"] == str(gray_shards)
    assert "val/psnr" in json.loads((unbroken / "best" / "best.json").read_text())
    grid = np.asarray(Image.open(sorted((unbroken / "samples").glob("*.png"))[-1]))
    assert grid.shape[1] == 4 * grid.shape[0] // 2  # 2 rows of 16 px crops, 4 columns
