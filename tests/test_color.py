import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from skimage import color as skcolor

from preprocess import color


def random_rgb(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 3))


def delta_e(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(lab1) - np.asarray(lab2), axis=-1)


def test_rgb_to_lab_matches_scikit_image_eagerly():
    rgb = random_rgb(5000)
    assert delta_e(color.rgb_to_lab(rgb), skcolor.rgb2lab(rgb[None])[0]).max() < 0.5


def test_rgb_to_lab_matches_scikit_image_inside_tf_data():
    rgb = random_rgb(512, seed=1).astype(np.float32)
    mapped = tf.data.Dataset.from_tensor_slices(rgb).map(color.rgb_to_lab).batch(512)
    assert delta_e(next(iter(mapped)), skcolor.rgb2lab(rgb[None].astype(np.float64))[0]).max() < 0.5


def test_conversions_work_inside_a_saved_model(tmp_path):
    module = tf.Module()
    module.convert = tf.function(
        lambda rgb: color.lab_to_rgb(color.rgb_to_lab(rgb)), input_signature=[tf.TensorSpec([None, 3], tf.float32)]
    )
    tf.saved_model.save(module, str(tmp_path / "model"))
    reloaded = tf.saved_model.load(str(tmp_path / "model"))
    rgb = random_rgb(100, seed=2).astype(np.float32)
    np.testing.assert_allclose(reloaded.convert(rgb).numpy(), rgb, atol=1e-4)


def test_lab_to_rgb_matches_scikit_image():
    lab = skcolor.rgb2lab(random_rgb(2000, seed=3)[None])[0]
    np.testing.assert_allclose(color.lab_to_rgb(lab).numpy(), skcolor.lab2rgb(lab[None])[0], atol=1e-4)


def test_uint8_round_trip_through_model_scaling_is_within_one_level():
    rgb = np.random.default_rng(4).integers(0, 256, (20000, 3), dtype=np.uint8)
    gray, ab = color.rgb_to_model(rgb)
    back = color.model_to_rgb(gray, ab).numpy().astype(int)
    assert np.abs(back - rgb).max() <= 1


def test_out_of_gamut_lab_is_clipped():
    lab = np.array([[50.0, 127.0, -127.0], [100.0, -120.0, 120.0], [0.0, 90.0, 90.0], [110.0, 0.0, 0.0]])
    rgb = color.lab_to_rgb(lab).numpy()
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    assert np.isfinite(rgb).all()
    np.testing.assert_allclose(rgb[3], [1.0, 1.0, 1.0], atol=1e-6)  # brighter than white -> white


def test_model_scaling_ranges():
    extremes = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255]], np.uint8)
    gray, ab = (t.numpy() for t in color.rgb_to_model(extremes))
    np.testing.assert_allclose(gray[:2, 0], [-1.0, 1.0], atol=1e-4)
    assert np.abs(ab).max() <= 1.0
    np.testing.assert_allclose(ab[2] * color.AB_SCALE, skcolor.rgb2lab(np.array([[[1.0, 0, 0]]]))[0, 0, 1:], atol=0.05)


def test_gradients_are_finite_at_black_and_white():
    rgb = tf.constant([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.2, 0.9]])
    with tf.GradientTape() as tape:
        tape.watch(rgb)
        lab = color.rgb_to_lab(rgb)
    assert np.isfinite(tape.gradient(lab, rgb).numpy()).all()


def test_ab_bins_are_exactly_the_grid_cells_srgb_colours_reach():
    bins = color.ab_bins()
    # independent reference: every uint8 sRGB colour through scikit-image, rounded to the grid
    levels = np.arange(256, dtype=np.uint8)
    everything = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 1, 3)
    reached = np.unique(np.round(skcolor.rgb2lab(everything)[:, 0, 1:] / 10).astype(int), axis=0) * 10
    assert {tuple(b) for b in bins.astype(int)} == {tuple(r) for r in reached}
    assert len(bins) == len(reached) > 200
    assert bins.dtype == np.float32 and bins.shape[1] == 2
    assert not np.any(np.mod(bins, 10))
    assert [0.0, 0.0] in bins.tolist()


def test_nearest_bin_matches_brute_force():
    ab = skcolor.rgb2lab(random_rgb(3000, seed=5)[None])[0, :, 1:]
    bins = color.ab_bins()
    expected = np.argmin(((ab[:, None] - bins[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(color.nearest_bin(ab).numpy(), expected)


def test_ab_histogram_counts_every_pixel_in_its_nearest_bin():
    ab = skcolor.rgb2lab(random_rgb(4096, seed=6).reshape(64, 64, 3))[..., 1:]
    counts = color.ab_histogram(ab)
    assert counts.sum() == 64 * 64
    np.testing.assert_array_equal(counts, np.bincount(color.nearest_bin(ab).numpy().ravel(), minlength=len(counts)))


def test_soft_encoding_uses_five_nearest_bins_with_gaussian_weights():
    bins = color.ab_bins()
    centre = bins[np.argmin(np.abs(bins).sum(1))]  # (0, 0): its four neighbours are 10 away
    ab = np.concatenate([centre[None], skcolor.rgb2lab(random_rgb(500, seed=7)[None])[0, :, 1:]])
    encoded = color.soft_encode(ab).numpy()
    np.testing.assert_allclose(encoded.sum(-1), 1.0, atol=1e-5)
    assert ((encoded > 0).sum(-1) == 5).all()
    first = encoded[0]
    assert first.argmax() == np.argmin(np.abs(bins - centre).sum(1))
    neighbours = np.sort(first)[::-1][1:5]
    np.testing.assert_allclose(neighbours / first.max(), np.exp(-100 / (2 * 5.0**2)), rtol=1e-3)


@pytest.mark.parametrize(
    "rgb, expected",
    [
        (np.full((8, 8, 3), 128, np.uint8), 0.0),
        # half pure red, half pure green: rg = +-255 (std 255), yb = 127.5 (std 0),
        # mean rg 0, mean yb 127.5 -> 255 + 0.3 * 127.5
        (np.concatenate([np.tile([255, 0, 0], (4, 8, 1)), np.tile([0, 255, 0], (4, 8, 1))]).astype(np.uint8),
         255 + 0.3 * 127.5),
    ],
)  # fmt: skip
def test_colorfulness_worked_by_hand(rgb, expected):
    assert color.colorfulness(rgb) == pytest.approx(expected, abs=1e-6)


def test_the_bins_can_first_be_asked_for_inside_a_traced_function():
    """ab_bins is computed once per process; a validation step may be the first to ask."""
    code = ("import tensorflow as tf\nfrom preprocess import color\n"
            "def caller(ab):\n    return color.nearest_bin(ab * 1.0)\n"
            "print(int(tf.function(lambda ab: caller(ab))(tf.zeros([1, 2])).numpy()[0]))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) == int(color.nearest_bin(tf.zeros([1, 2])).numpy()[0])


def test_uint8_pixels_convert_like_their_float_values():
    # uint8 takes a lookup table for the sRGB curve, floats take the formula: both must agree
    # with scikit-image, at every level of every channel
    rgb = np.random.default_rng(5).integers(0, 256, (20000, 3), dtype=np.uint8)
    rgb[:256] = np.arange(256, dtype=np.uint8)[:, None]
    reference = skcolor.rgb2lab((rgb / 255.0)[None])[0]
    from_levels = color.rgb_to_lab(rgb).numpy()
    from_floats = color.rgb_to_lab((rgb / 255.0).astype(np.float32)).numpy()
    np.testing.assert_allclose(from_levels, reference, atol=1e-3)
    np.testing.assert_allclose(from_levels, from_floats, atol=3e-4)


def test_lightness_is_the_l_of_the_whole_conversion():
    rgb = np.random.default_rng(8).integers(0, 256, (20000, 3), dtype=np.uint8)
    rgb[:256] = np.arange(256, dtype=np.uint8)[:, None]  # every gray level, black included
    reference = skcolor.rgb2lab((rgb / 255.0)[None])[0][:, :1]
    np.testing.assert_allclose(color.lightness(rgb).numpy(), reference, atol=1e-3)
    np.testing.assert_allclose(color.lightness((rgb / 255.0).astype(np.float32)).numpy(), reference, atol=1e-3)


def test_model_to_rgb_is_lab_to_rgb_of_model_to_lab_rounded():
    rng = np.random.default_rng(9)
    gray = rng.uniform(-1, 1, (20000, 1)).astype(np.float32)
    fake = rng.uniform(-1, 1, (20000, 2)).astype(np.float32)  # out of gamut too: clipped alike
    gray[:2], fake[:2] = -1.0, 0.0  # black
    expected = np.round(color.lab_to_rgb(color.model_to_lab(gray, fake)).numpy() * 255.0)
    got = color.model_to_rgb(gray, fake).numpy()
    assert got.dtype == np.uint8
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert (got[:2] == 0).all()


def test_rgb_to_lab_keeps_gradients_finite_at_black_and_white():
    rgb = tf.constant([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.01, 0.5, 0.99]])
    with tf.GradientTape() as tape:
        tape.watch(rgb)
        lab = color.rgb_to_lab(rgb)
    assert np.isfinite(tape.gradient(lab, rgb).numpy()).all()
