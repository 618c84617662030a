"""guided: the hints (models/hints.py), the hint-guided model, its step and exact resume."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import models
from evaluate import hints as hints_eval
from evaluate.metrics import psnr
from models import guided, hints
from models.guided import GuidedConfig
from preprocess import color, schema
from preprocess.dataset import Shards
from tests.helpers import make_run, photo
from train import loop, steps
from train.__main__ import main
from train.config import TrainConfig


def _color(size: int = 2, side: int = 16, seed: int = 0) -> tf.Tensor:
    return tf.random.stateless_uniform([size, side, side, 2], [seed, 2], -0.6, 0.6)


# ---------------------------------------------------------------------------------------
# hints


def test_empty_hints_have_the_documented_shapes():
    size = len(color.ab_bins()) + 2
    assert hints.GLOBAL_HINT_SIZE == hints.global_hint_size() == size
    assert hints.no_global_hint(3).shape == (3, size) and not np.any(hints.no_global_hint(3))
    local = hints.no_local_hints(tf.zeros([2, 8, 12, 1]))
    assert local.shape == (2, 8, 12, 3) and local.dtype == tf.float32 and not np.any(local)


def test_global_hint_of_a_one_colour_image_puts_all_its_mass_in_that_colours_bin():
    ab = np.array([40.0, -30.0], np.float32)  # Lab units: a green-blue
    image = np.broadcast_to(ab / color.AB_SCALE, [1, 8, 8, 2])
    hint = hints.global_hint(image).numpy()[0]
    q = len(color.ab_bins())
    expected = int(color.nearest_bin(ab))
    assert hint.shape == (q + 2,)
    assert hint[expected] == pytest.approx(1.0) and np.delete(hint[:q], expected).max() == 0.0
    assert hint[q] == pytest.approx(np.hypot(40.0, 30.0) / color.AB_SCALE, rel=1e-5)  # mean saturation
    assert hint[q + 1] == 1.0  # given


def test_global_hint_sums_to_one_and_ignores_pixels_of_weight_zero():
    image = np.zeros([2, 4, 4, 2], np.float32)
    image[:, :, :2] = [0.5, 0.2]  # left half coloured, right half gray
    weights = np.zeros([2, 4, 4], np.float32)
    weights[:, :, :2] = 1.0
    full, left = hints.global_hint(image).numpy(), hints.global_hint(image, weights).numpy()
    q = len(color.ab_bins())
    np.testing.assert_allclose(full[:, :q].sum(1), 1.0, rtol=1e-6)
    assert full[0, int(color.nearest_bin([0.0, 0.0]))] == pytest.approx(0.5)
    assert left[0, int(color.nearest_bin([55.0, 22.0]))] == pytest.approx(1.0)
    assert left[0, q] == pytest.approx(2 * full[0, q], rel=1e-5)  # gray pixels lowered the full image's saturation


def test_sample_global_hint_is_the_truths_or_nothing():
    image = _color(size=400)
    hint = hints.sample_global_hint(image, tf.random.Generator.from_seed(0), 0.3).numpy()
    given = hint[:, -1] == 1.0
    assert 0.22 < given.mean() < 0.38
    np.testing.assert_allclose(hint[given], hints.global_hint(image).numpy()[given], atol=1e-6)
    assert not np.any(hint[~given])


def test_sampled_local_hints_are_patches_of_the_truths_mean_colour():
    image = _color(size=300, side=24)
    local = hints.sample_local_hints(image, tf.random.Generator.from_seed(1), points=1).numpy()
    assert local.shape == (300, 24, 24, 3)
    mask = local[..., 2]
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert not np.any(local[..., :2][mask == 0])
    sides = []
    for hint, truth in zip(local, image.numpy()):
        rows, cols = np.nonzero(hint[..., 2])
        side = rows.max() - rows.min() + 1
        assert cols.max() - cols.min() + 1 == side and len(rows) == side**2  # one square
        sides.append(side)
        np.testing.assert_allclose(hint[rows, cols, :2], np.broadcast_to(truth[rows, cols].mean(0), [len(rows), 2]),
                                   atol=1e-6)  # fmt: skip
    assert set(sides) == set(range(1, 10))  # every patch side of the paper, 1 to 9


def test_the_number_of_sampled_points_is_geometric():
    # single pixels on a large image, so that points rarely land on one another
    image = tf.zeros([1500, 96, 96, 2])
    local = hints.sample_local_hints(image, tf.random.Generator.from_seed(2), patch_sizes=(1,))
    counts = local[..., 2].numpy().sum(axis=(1, 2))
    p = hints.POINT_PROBABILITY
    assert counts.mean() == pytest.approx((1 - p) / p, abs=0.6)  # 7; the sample mean's deviation is 0.19
    for n in (0, 1, 5):
        assert (counts == n).mean() == pytest.approx((1 - p) ** n * p, abs=0.03)


def test_sampling_with_a_seed_is_the_same_eagerly_in_a_graph_and_in_tf_data():
    image = _color(size=4)
    seed = tf.constant([3, 4], tf.int64)
    eager = hints.sample_local_hints(image, seed).numpy()
    graph = tf.function(hints.sample_local_hints)(image, seed).numpy()
    mapped = next(iter(tf.data.Dataset.from_tensors(image).map(lambda c: hints.sample_local_hints(c, seed)))).numpy()
    np.testing.assert_array_equal(eager, graph)
    np.testing.assert_array_equal(eager, mapped)
    other = hints.sample_local_hints(image, tf.constant([3, 5], tf.int64)).numpy()
    assert not np.array_equal(eager, other)


def test_local_hints_from_points_centre_squares_and_clip_them_at_the_edges():
    local = hints.local_hints_from_points([[0, 0], [4, 5]], [[0.1, -0.2], [0.3, 0.4]], 6, 7, patch=3).numpy()
    assert local.shape == (1, 6, 7, 3)
    mask = local[0, ..., 2]
    expected = np.zeros([6, 7])
    expected[0:2, 0:2] = 1  # the corner point's square, clipped
    expected[3:6, 4:7] = 1
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_allclose(local[0, 0, 0, :2], [0.1, -0.2])
    np.testing.assert_allclose(local[0, 5, 6, :2], [0.3, 0.4])
    single = hints.local_hints_from_points([[2, 3]], [[0.5, 0.5]], 6, 7).numpy()
    assert single[0, ..., 2].sum() == 1 and single[0, 2, 3, 2] == 1


# ---------------------------------------------------------------------------------------
# the model and its step

TINY = {"base_width": 2, "global_layers": 2}
TINY_ARGS = [f"--{key}={value}" for key, value in TINY.items()]


def _batch(size: int = 4, side: int = 16) -> dict[str, tf.Tensor]:
    return {"gray": tf.random.stateless_uniform([size, side, side, 1], [0, 1], -1.0, 1.0), "color": _color(size, side)}


def test_the_generator_without_hints_is_the_generator_with_empty_hints():
    generator = models.build("guided", GuidedConfig(**TINY))["generator"]
    gray = _batch()["gray"]
    automatic = generator(gray)
    assert automatic.shape == (4, 16, 16, 2) and automatic.dtype == tf.float32
    assert np.abs(automatic.numpy()).max() <= 1.0
    empty = generator([gray, hints.no_local_hints(gray), hints.no_global_hint(4)])
    np.testing.assert_array_equal(automatic.numpy(), empty.numpy())
    guided = generator([gray, hints.sample_local_hints(_color(4), tf.constant([1, 1]), points=5),
                        hints.global_hint(_color(4))])  # fmt: skip
    assert guided.shape == (4, 16, 16, 2) and not np.allclose(guided.numpy(), automatic.numpy())
    assert generator.network.input_shape == [(None, None, None, 1), (None, None, None, 3), (None, hints.GLOBAL_HINT_SIZE)]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_a_step_gives_finite_losses_and_moves_every_weight(compiled):
    config = GuidedConfig(**TINY, global_hint_probability=1.0)  # the global layers learn only from given hints
    networks = models.build("guided", config)
    generator = networks["generator"]
    optimizers = {"generator": keras.optimizers.Adam(1e-3)}
    before = [v.numpy().copy() for v in generator.trainable_variables]
    step = steps.make("guided", config)
    assert set(step.state) == {"hint_rng"}
    losses = (tf.function(step) if compiled else step)(networks, optimizers, _batch())
    assert set(losses) == {"gen/total", "gen/hint_pixels"}
    assert np.isfinite(float(losses["gen/total"])) and float(losses["gen/hint_pixels"]) >= 0.0
    unmoved = [v.path for v, old in zip(generator.trainable_variables, before) if np.array_equal(v.numpy(), old)]
    assert not unmoved


def test_huber_is_quadratic_below_delta_and_l1_above():
    truth = tf.zeros([1, 1, 2, 2])
    small = tf.fill([1, 1, 2, 2], 0.5 / color.AB_SCALE)  # half a Lab unit off
    large = tf.fill([1, 1, 2, 2], 0.2)
    assert float(guided.huber(truth, small, 1.0)) == pytest.approx(0.5 * 0.5**2 / color.AB_SCALE, rel=1e-4)
    assert float(guided.huber(truth, large, 1.0)) == pytest.approx(0.2 - 0.5 / color.AB_SCALE, rel=1e-4)


def test_the_sample_grid_shows_automatic_hinted_and_reference_columns():
    generator = models.build("guided", GuidedConfig(**TINY))["generator"]
    batch = _batch(size=2)
    rows = loop.sample_rows(generator, batch["gray"], batch["color"])
    assert rows.shape == (2, 16, 5 * 16, 3) and rows.dtype == np.uint8  # gray | automatic | 10 hints | global | truth
    np.testing.assert_array_equal(rows, loop.sample_rows(generator, batch["gray"], batch["color"]))  # same hints each time


def _checkpoint_values(path: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(path)
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH" and not key.startswith("save_counter")}  # fmt: skip


def test_a_resumed_run_equals_one_that_never_stopped(tiny_shards, tmp_path):
    common = [f"--data={tiny_shards}", "--model=guided", *TINY_ARGS, "--batch_size=4", "--crop_size=16",
              "--val_batches=1", "--sample_images=2", "--deterministic", "--checkpoint_every=2"]  # fmt: skip
    stopped, unbroken = tmp_path / "stopped", tmp_path / "unbroken"
    assert main([*common, f"--run={stopped}", "--steps=2"]) == 0
    assert main(["--model=guided", f"--run={stopped}", "--steps=4"]) == 0
    assert main([*common, f"--run={unbroken}", "--steps=4"]) == 0
    resumed = _checkpoint_values(str(stopped / "ckpt" / "ckpt-4"))
    reference = _checkpoint_values(str(unbroken / "ckpt" / "ckpt-4"))
    assert resumed.keys() == reference.keys()
    assert any(key.startswith("hint_rng/") for key in reference), "the hints' generator is not checkpointed"
    for key in reference:
        np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)
    assert (stopped / "samples" / "step-00000004.png").exists()


# ---------------------------------------------------------------------------------------
# evaluate.hints: PSNR against the number of hints


def test_same_class_partners_are_other_photos_of_the_class():
    labels = np.array([0, 1, 0, 2, 1, 0, -1])
    partners = hints_eval.same_class_partners(labels, np.array([0, 1, 3, 6]))
    assert partners[0] in (2, 5) and partners[1] == 4
    assert partners[2] == -1 and partners[3] == -1  # alone in its class; no label


def test_the_hint_curve_scores_the_photos_make_evaluate_scores(tiny_shards, tmp_path, capsys):
    run = tmp_path / "run"
    generator = models.build("guided", GuidedConfig(**TINY))["generator"]
    models.write_run_config(run, "guided", GuidedConfig(**TINY), TrainConfig(data=str(tiny_shards)), {"tile_size": 32})
    tf.train.Checkpoint(generator=generator).save(str(run / models.CHECKPOINT_DIR / "ckpt"))

    shards = Shards(tiny_shards)
    expected_ids = sorted(record["source_id"].numpy().decode() for record in shards.records("val", 5))
    ids, _ = hints_eval.split_labels(shards, "val")
    chosen = hints_eval.evaluated_indices(len(ids), 5)
    assert sorted(ids[i] for i in chosen) == expected_ids
    truth = hints_eval.split_tiles(shards, "val", chosen)
    tiles = {record["source_id"].numpy().decode(): record["rgb"].numpy() for record in shards.records("val")}
    np.testing.assert_array_equal(truth, np.stack([tiles[ids[i]] for i in chosen]))

    assert hints_eval.main([f"--run={run}", f"--data={tiny_shards}", "--split=val", "--limit=5", "--points=0,2,30",
                            f"--out={tmp_path / 'reports'}", "--name=t", f"--plot={tmp_path / 'docs' / 'h.png'}",
                            "--reference=automatic=20.5"]) == 0  # fmt: skip
    results = json.loads((tmp_path / "reports" / "t" / "hints.json").read_text())
    assert results["photos"] == 5 and results["points"] == [0, 2, 30] and results["patch"] == 1
    assert set(results["psnr"]) == {"none", "own"}  # the tiny shards have no labels: no same-class reference
    assert all(set(curve) == {"0", "2", "30"} for curve in results["psnr"].values())
    # no hints at all is the automatic colorization, scored as make evaluate scores it
    gray, _ = color.rgb_to_model(truth)
    automatic = color.model_to_rgb(gray, generator(gray)).numpy()
    assert results["psnr"]["none"]["0"] == pytest.approx(np.mean([psnr(t, o) for t, o in zip(truth, automatic)]), abs=1e-4)
    gray_rgb = color.model_to_rgb(gray, tf.zeros_like(gray[..., :1]) * tf.zeros([1, 1, 1, 2])).numpy()
    assert results["gray_psnr"] == pytest.approx(np.mean([psnr(t, g) for t, g in zip(truth, gray_rgb)]), abs=1e-6)
    for path in (tmp_path / "reports" / "t" / "hints.png", tmp_path / "docs" / "h.png"):
        assert Image.open(path).format == "PNG"
    # the picture: 5 photos a row each (32 px shown at 96), gray with 2 hints marked | no hint |
    # 2 hints | the photo's own global hint | truth; its first row's "no hint" is the automatic output
    grid = np.asarray(Image.open(tmp_path / "reports" / "t" / "grid.png"))
    assert grid.shape == (5 * 104, 5 * 96 + 8, 3)
    np.testing.assert_array_equal(grid[4:100:3, 4 + 96:4 + 192:3], automatic[0])
    np.testing.assert_array_equal(grid[4:100:3, 4 + 4 * 96:4 + 5 * 96:3], truth[0])
    printed = capsys.readouterr().out
    assert "none" in printed and "gray, 2 hints marked | no hint | 2 hints | global hint: own | truth" in printed


def test_the_grid_marks_each_hint_in_the_truths_colour_on_the_gray_photo():
    truth = np.zeros((12, 12, 3), np.uint8)
    truth[2:5, 6:9] = [200, 30, 30]
    truth[8:10, 1:3] = [[10, 200, 20], [30, 220, 40]]
    marked = hints_eval.marked_gray(truth, np.array([[2, 6], [8, 1]]), np.array([3, 2]))
    np.testing.assert_array_equal(marked[2:5, 6:9], np.broadcast_to([200, 30, 30], (3, 3, 3)))
    np.testing.assert_array_equal(marked[8:10, 1:3], np.broadcast_to([20, 210, 30], (2, 2, 3)))
    assert not marked[1, 5:10].any() and not marked[5, 5:10].any()  # the black frame around the first
    assert (marked[0, 0] == marked[0, 0, 0]).all()  # elsewhere gray


def test_the_hint_curve_refuses_runs_of_other_models_and_bad_settings(tiny_shards, tmp_path, capsys):
    run = make_run(tmp_path / "run")  # a regression run
    assert hints_eval.main([f"--run={run}", f"--data={tiny_shards}"]) == 2
    assert "MODEL=regression" in capsys.readouterr().err
    assert hints_eval.main([f"--run={run}", f"--data={tiny_shards}", "--points=1,x"]) == 2
    assert "--points=1,x" in capsys.readouterr().err
    assert hints_eval.main([f"--run={run}", f"--data={tiny_shards}", "--patch=10"]) == 2
    assert "--patch must be in 0..9" in capsys.readouterr().err


def test_the_same_class_reference_is_another_photo_of_the_class(tmp_path):
    # a labelled test split of six 16 px tiles, classes 0 and 1 in turn
    data = tmp_path / "labelled"
    data.mkdir()
    tiles = np.stack([photo(16, 16, seed=i) for i in range(6)])
    name = schema.shard_name("test", 0, 1)
    with tf.io.TFRecordWriter(str(data / name)) as writer:
        for i, tile in enumerate(tiles):
            writer.write(schema.encode(tile, f"test/{i}", label=i % 2))
    manifest = {"schema_version": schema.SCHEMA_VERSION, "splits": {"test": {"shards": [name], "tiles": 6}},
                "options": {"size": 16, "compression": None}, "label_names": ["even", "odd"]}  # fmt: skip
    (data / "manifest.json").write_text(json.dumps(manifest))
    run = tmp_path / "run"
    generator = models.build("guided", GuidedConfig(**TINY))["generator"]
    models.write_run_config(run, "guided", GuidedConfig(**TINY), TrainConfig(data=str(data)), {"tile_size": 16})
    tf.train.Checkpoint(generator=generator).save(str(run / models.CHECKPOINT_DIR / "ckpt"))

    assert hints_eval.main([f"--run={run}", f"--data={data}", "--points=0", f"--out={tmp_path}", "--name=r"]) == 0
    results = json.loads((tmp_path / "r" / "hints.json").read_text())
    assert results["split"] == "test" and results["photos"] == 6
    partners = hints_eval.same_class_partners(np.arange(6) % 2, np.arange(6))
    assert all(p != i and p % 2 == i % 2 for i, p in enumerate(partners))
    gray, _ = color.rgb_to_model(tiles)
    reference = hints.global_hint(color.rgb_to_model(tiles[partners])[1])
    output = color.model_to_rgb(gray, generator([gray, hints.no_local_hints(gray), reference])).numpy()
    expected = np.mean([psnr(t, o) for t, o in zip(tiles, output)])
    assert results["psnr"]["same_class"]["0"] == pytest.approx(expected, abs=1e-4)
