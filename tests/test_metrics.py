"""Each metric of evaluate.metrics against values worked out by hand on tiny arrays."""

import numpy as np
import pytest
import tensorflow as tf

from evaluate import metrics
from preprocess import color

UNIFORM_PRIOR = np.ones(len(color.ab_bins()))


def colourful(height: int = 24, width: int = 24, seed: int = 0) -> np.ndarray:
    """uint8 RGB [H, W, 3]: smooth random colour blobs."""
    coarse = np.random.default_rng(seed).uniform(0, 255, (1, 3, 3, 3)).astype(np.float32)
    return tf.cast(tf.round(tf.image.resize(coarse, [height, width])), tf.uint8).numpy()[0]


def lab_to_uint8(lab: np.ndarray) -> np.ndarray:
    return tf.cast(tf.round(color.lab_to_rgb(lab) * 255.0), tf.uint8).numpy()


def integer_ab(seed: int = 0) -> np.ndarray:
    """ab [6, 6, 2] of whole Lab units, so that shifted copies differ by exactly the shift."""
    return np.random.default_rng(seed).integers(-60, 60, (6, 6, 2)).astype(np.float64)


def test_identical_images_score_perfectly():
    truth = colourful()
    scores = metrics.score_image(truth, truth.copy(), UNIFORM_PRIOR)
    assert scores["mse_ab"] == 0.0 and scores["mae_ab"] == 0.0
    assert scores["psnr"] == metrics.PSNR_CAP
    assert scores["ssim"] == pytest.approx(1.0)
    assert scores["auc"] == pytest.approx(1.0)
    assert scores["auc_rebalanced"] == pytest.approx(1.0)
    assert scores["accuracy"] == 1.0
    assert scores["colorfulness_gap"] == 0.0
    assert scores["colorfulness"] == scores["colorfulness_truth"] > 20.0
    assert set(scores) == set(metrics.LABELS)


def test_auc_counts_a_pixel_at_every_threshold_from_its_distance_up():
    ab = integer_ab()
    # distance exactly 10 (6, 8 is a 3-4-5 triangle): passes t = 10..150, 141 of the 151 thresholds
    assert metrics.auc_ab(ab, ab + [6.0, 8.0]) == pytest.approx(141 / 151, abs=1e-12)
    assert metrics.auc_ab(ab, ab) == 1.0
    assert metrics.auc_ab(ab, ab + [151.0, 0.0]) == 0.0  # beyond the last threshold
    # half the pixels exact, half at distance 5
    half = ab.copy()
    half[:3] += [3.0, -4.0]
    assert metrics.auc_ab(ab, half) == pytest.approx((1 + 146 / 151) / 2, abs=1e-12)


def test_auc_equals_the_mean_share_over_thresholds_on_random_distances():
    rng = np.random.default_rng(1)
    ab_true, ab_out = rng.uniform(-100, 100, (2, 20, 20, 2))
    distance = np.linalg.norm(ab_out - ab_true, axis=-1)
    by_definition = np.mean([np.mean(distance <= t) for t in range(151)])
    assert metrics.auc_ab(ab_true, ab_out) == pytest.approx(by_definition, abs=1e-12)


def test_rebalancing_weights_are_the_inverse_prior_with_unseen_bins_as_the_rarest_seen():
    counts = np.zeros(len(color.ab_bins()))
    counts[1], counts[2] = 2, 4  # shares 1/3 and 2/3
    weights = metrics.rebalancing_weights(counts)
    assert weights[1] == pytest.approx(3.0) and weights[2] == pytest.approx(1.5)
    assert weights[0] == weights[-1] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="ab bins"):
        metrics.rebalancing_weights(np.ones(7))


def test_rebalanced_auc_weights_rare_true_colours_up():
    # 2 pixels of a common colour predicted exactly, 2 of a colour three times rarer off by 10
    ab_true = np.array([[0.0, 0.0], [0.0, 0.0], [40.0, 40.0], [40.0, 40.0]])
    ab_out = ab_true + [[0, 0], [0, 0], [6, 8], [6, 8]]
    counts = np.zeros(len(color.ab_bins()))
    bins = color.nearest_bin(ab_true).numpy()
    counts[bins[0]], counts[bins[2]] = 300, 100
    weights = metrics.rebalancing_weights(counts)[bins]
    assert metrics.auc_ab(ab_true, ab_out) == pytest.approx((1 + 141 / 151) / 2)
    assert metrics.auc_ab(ab_true, ab_out, weights) == pytest.approx((1 * 1 + 3 * 141 / 151) / 4)


def test_score_image_weights_by_the_truths_colours_not_the_outputs():
    truth = np.zeros((16, 16, 3), np.uint8)
    truth[:, :8] = 128  # gray half, which the grayscale output gets right
    truth[:, 8:] = [200, 40, 40]  # red half, which it gets wrong
    output = metrics.grayscale(truth)
    counts = np.ones(len(color.ab_bins()))
    counts[color.nearest_bin([0.0, 0.0]).numpy()] = 1e9  # gray is everywhere, red is rare
    scores = metrics.score_image(truth, output, counts)
    red_lab = color.rgb_to_lab(truth[:, 8:]).numpy()
    red_auc = metrics.auc_ab(red_lab[..., 1:], color.rgb_to_lab(output[:, 8:]).numpy()[..., 1:])
    assert scores["auc"] == pytest.approx((1 + red_auc) / 2, abs=0.01)
    assert scores["auc_rebalanced"] == pytest.approx(red_auc, abs=1e-3)
    assert "auc_rebalanced" not in metrics.score_image(truth, output)


def test_a_truth_computed_once_scores_every_output_as_the_arrays_do():
    truth, counts = colourful(seed=1), np.arange(1.0, len(color.ab_bins()) + 1)
    once = metrics.Truth.of(truth, metrics.rebalancing_weights(counts))
    for output in (metrics.grayscale(truth), colourful(seed=2), truth.copy()):
        assert metrics.score_image(once, output) == metrics.score_image(truth, output, counts)
    with pytest.raises(ValueError, match="uint8 RGB truth"):
        metrics.Truth.of(truth.astype(np.float32))


def test_nazeri_accuracy_thresholds_rounded_lab():
    lab = np.concatenate([np.full((4, 4, 1), 50.0), integer_ab()[:4, :4]], axis=-1)
    shifts = np.zeros_like(lab)
    shifts[0] = [2.0, 4.0, -4.0]  # on every bound: right
    shifts[1] = [2.4, 0.0, 0.0]  # rounds to 2: right
    shifts[2] = [3.0, 0.0, 0.0]  # |dL| > 2: wrong (right for t = 3)
    shifts[3] = [0.0, 0.0, 7.0]  # |db| > 4.4 (and > 6.6): wrong
    assert metrics.nazeri_accuracy(lab, lab + shifts) == 0.5
    assert metrics.nazeri_accuracy(lab, lab + shifts, t=3) == 0.75
    # the ab bound is 2.2 t: 11 at t = 5
    assert metrics.nazeri_accuracy(lab, lab + [5.0, 11.0, -11.0], t=5) == 1.0
    assert metrics.nazeri_accuracy(lab, lab + [0.0, 12.0, 0.0], t=5) == 0.0


def test_a_known_ab_shift_through_rgb():
    lab = np.zeros((16, 16, 3))
    lab[..., 0] = np.linspace(40, 70, 16)[:, None]
    lab[..., 1], lab[..., 2] = 10.0, 20.0
    truth, output = lab_to_uint8(lab), lab_to_uint8(lab + [0.0, 10.0, 0.0])
    scores = metrics.score_image(truth, output)
    # a shifted by 10, b by 0: MAE over both channels 5, MSE 50; 8-bit RGB moves ab by < 1
    assert scores["mae_ab"] == pytest.approx(5.0, abs=0.5)
    assert scores["mse_ab"] == pytest.approx(50.0, abs=8.0)
    assert scores["auc"] == pytest.approx(141 / 151, abs=1.5 / 151)
    assert scores["accuracy"] == 0.0  # |da| = 10 > 4.4 everywhere


def test_psnr_of_known_errors():
    truth = colourful()
    assert metrics.psnr(truth, truth) == metrics.PSNR_CAP
    off_by_one = np.where(truth < 255, truth + 1, truth - 1).astype(np.uint8)  # MSE exactly 1
    assert metrics.psnr(truth, off_by_one) == pytest.approx(10 * np.log10(255**2), abs=1e-9)
    black, white = np.zeros_like(truth), np.full_like(truth, 255)
    assert metrics.psnr(black, white) == 0.0


def test_ssim_uses_wang_et_al_settings_like_tensorflow():
    truth = colourful(32, 32)
    noisy = np.clip(truth + np.random.default_rng(2).normal(0, 20, truth.shape), 0, 255).astype(np.uint8)
    expected = float(tf.image.ssim(tf.constant(truth), tf.constant(noisy), max_val=255))
    assert metrics.ssim(truth, noisy) == pytest.approx(expected, abs=1e-5)
    assert 0.2 < expected < 0.95
    assert metrics.ssim(truth, truth) == pytest.approx(1.0)


def test_grayscale_keeps_lightness_and_has_no_colour():
    truth = colourful()
    gray = metrics.grayscale(truth)
    truth_lab, gray_lab = color.rgb_to_lab(truth).numpy(), color.rgb_to_lab(gray).numpy()
    np.testing.assert_allclose(gray_lab[..., 0], truth_lab[..., 0], atol=0.5)
    np.testing.assert_allclose(gray_lab[..., 1:], 0.0, atol=1.0)
    scores = metrics.score_image(truth, gray)
    assert scores["colorfulness"] < 0.5
    assert scores["colorfulness_gap"] == pytest.approx(scores["colorfulness_truth"] - scores["colorfulness"])


def test_score_image_rejects_mismatched_images():
    with pytest.raises(ValueError, match="of the truth.s shape"):
        metrics.score_image(colourful(24, 24), colourful(24, 20))
    with pytest.raises(ValueError, match="uint8"):
        metrics.score_image(colourful(), colourful().astype(np.float32))


def test_aggregate_is_the_mean_over_images():
    assert metrics.aggregate([{"psnr": 20.0, "auc": 0.5}, {"psnr": 40.0, "auc": 1.0}]) == {"psnr": 30.0, "auc": 0.75}
    with pytest.raises(ValueError, match="no images"):
        metrics.aggregate([])
