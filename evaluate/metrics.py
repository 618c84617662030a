"""Colorization metrics of one image: a model's RGB output scored against the colour truth.

Every score starts from the uint8 RGB a user would see (Lab is recomputed from it through
`preprocess.color`), so the grayscale baseline and every model are measured the same way,
gamut clipping and 8-bit rounding included. Units, per image:

    mse_ab, mae_ab       mean over pixels and both channels a, b of the squared / absolute
                         error, in Lab units^2 / Lab units
    psnr                 dB on the RGB values 0..255, capped at PSNR_CAP (identical images)
    ssim                 mean SSIM over the three RGB channels, in [-1, 1] (1 = identical)
    auc, auc_rebalanced  Zhang et al.'s raw accuracy AuC, in [0, 1] (see `auc_ab`)
    accuracy             Nazeri et al.'s pixel accuracy, in [0, 1] (see `nazeri_accuracy`)
    colorfulness         Hasler and Suesstrunk of the output (0 = gray, ~15 slightly colourful)
    colorfulness_truth   the same of the truth
    colorfulness_gap     |colorfulness - colorfulness_truth|
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from skimage.metrics import structural_similarity

from preprocess import color

# Column headers of the report, with units; also the order of the columns.
LABELS = {
    "mse_ab": "MSE ab (Lab²)",
    "mae_ab": "MAE ab (Lab)",
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "auc": "AuC",
    "auc_rebalanced": "AuC rebal.",
    "accuracy": "pixel acc. (t=2)",
    "colorfulness": "colourfulness",
    "colorfulness_truth": "colourfulness of truth",
    "colorfulness_gap": "colourfulness gap",
}

AUC_MAX_DISTANCE = 150  # Zhang et al.: thresholds t = 0, 1, ..., 150 Lab units
PSNR_CAP = 100.0  # dB; identical images have infinite PSNR, which a mean cannot carry


def grayscale(rgb: np.ndarray) -> np.ndarray:
    """The grayscale baseline: uint8 RGB [..., 3] -> uint8 RGB [..., 3] with the same L and a = b = 0."""
    lab = color.rgb_to_lab(rgb)
    gray_lab = tf.concat([lab[..., :1], tf.zeros_like(lab[..., 1:])], axis=-1)
    return tf.cast(tf.round(color.lab_to_rgb(gray_lab) * 255.0), tf.uint8).numpy()


def auc_ab(ab_true: np.ndarray, ab_out: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Zhang et al.'s AuC of raw accuracy for ab [..., 2] in Lab units; in [0, 1].

    The share of pixels whose ab lies within an L2 distance t of the truth, averaged over the
    151 thresholds t = 0..150. With `weights` [...] (one per pixel) the shares are weighted
    averages instead, which is how the class-rebalanced variant is computed.
    """
    distance = np.linalg.norm(np.asarray(ab_out, np.float64) - np.asarray(ab_true, np.float64), axis=-1)
    # A pixel at distance d passes every integer threshold t >= d: 151 - ceil(d) of them, or
    # none beyond 150. Summing that per pixel avoids a [151, H, W] array on large photos.
    passed = np.clip(AUC_MAX_DISTANCE + 1 - np.ceil(distance), 0, AUC_MAX_DISTANCE + 1)
    weights = np.ones_like(distance) if weights is None else np.broadcast_to(weights, distance.shape)
    return float(np.sum(weights * passed) / (np.sum(weights) * (AUC_MAX_DISTANCE + 1)))


def rebalancing_weights(prior: np.ndarray) -> np.ndarray:
    """Per-bin pixel weights [Q] for `auc_rebalanced`: 1 / prior, from ab-bin counts or shares [Q].

    A bin the prior never saw (count 0) is weighted as the rarest bin it did see: a colour
    absent from the training data is at least as rare as its rarest colour, and a finite
    weight keeps one such pixel from outweighing the rest of the image. The scale is
    irrelevant: `auc_ab` divides by the sum of the weights.
    """
    prior = np.asarray(prior, np.float64)
    if prior.shape != (len(color.ab_bins()),) or not np.any(prior > 0):
        raise ValueError(f"prior: expected non-negative counts over the {len(color.ab_bins())} ab bins, "
                         f"got shape {prior.shape}")  # fmt: skip
    prior = prior / prior.sum()
    return 1.0 / np.maximum(prior, prior[prior > 0].min())


def nazeri_accuracy(lab_true: np.ndarray, lab_out: np.ndarray, t: float = 2.0) -> float:
    """Nazeri et al.'s pixel accuracy of Lab [..., 3]; in [0, 1].

    A pixel is right when, on Lab rounded to integers, |dL| <= t and |da|, |db| <= 2.2 t.
    """
    error = np.abs(np.round(np.asarray(lab_out, np.float64)) - np.round(np.asarray(lab_true, np.float64)))
    right = (error[..., 0] <= t) & (error[..., 1] <= 2.2 * t) & (error[..., 2] <= 2.2 * t)
    return float(np.mean(right))


def psnr(truth: np.ndarray, output: np.ndarray) -> float:
    """PSNR in dB of uint8 RGB [H, W, 3] on 0..255, min(PSNR_CAP, 10 log10(255^2 / MSE))."""
    mse = np.mean((np.asarray(truth, np.float64) - np.asarray(output, np.float64)) ** 2)
    return PSNR_CAP if mse == 0 else float(min(PSNR_CAP, 10.0 * np.log10(255.0**2 / mse)))


def ssim(truth: np.ndarray, output: np.ndarray) -> float:
    """SSIM of uint8 RGB [H, W, 3] (both sides >= 11 px), the mean over the RGB channels.

    scikit-image with Wang et al.'s (2004) settings: an 11x11 Gaussian window of sigma 1.5,
    population covariances, K1 = 0.01, K2 = 0.03, data range 255; these are also
    `tf.image.ssim`'s, so figures agree with TF-based papers. NumPy, because it scores one
    photo at its native size, with no graph to build per image size.
    """
    return float(
        structural_similarity(
            truth, output, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False,
        )
    )  # fmt: skip


@dataclass(frozen=True)
class Truth:
    """What scoring needs of the colour truth, computed once per photo however many outputs
    are scored against it (`make evaluate` scores every model on each photo)."""

    rgb: np.ndarray  # uint8 [H, W, 3]
    lab: np.ndarray  # float64 [H, W, 3]
    colorfulness: float
    ab_weights: np.ndarray | None  # [H, W] rebalancing weight of each pixel's true colour, with a prior

    @classmethod
    def of(cls, rgb: np.ndarray, bin_weights: np.ndarray | None = None) -> Truth:
        """bin_weights: `rebalancing_weights` of the training data's prior, for `auc_rebalanced`;
        without them that score is left out."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected a uint8 RGB truth [H, W, 3], got {rgb.dtype} {rgb.shape}")
        return cls.of_batch(rgb[None], bin_weights)[0]

    @classmethod
    def of_batch(cls, rgb: np.ndarray, bin_weights: np.ndarray | None = None) -> list[Truth]:
        """As `of`, for photos of one size [N, H, W, 3]: one Lab conversion for them all."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected uint8 RGB truths [N, H, W, 3], got {rgb.dtype} {rgb.shape}")
        labs = color.rgb_to_lab(rgb).numpy().astype(np.float64)
        # weighted by the rarity of the TRUE colour, so a model cannot earn weight by its output
        weights = [None] * len(rgb) if bin_weights is None else bin_weights[color.nearest_bin(labs[..., 1:]).numpy()]
        return [cls(photo, lab, color.colorfulness(photo), weight) for photo, lab, weight in zip(rgb, labs, weights)]


def score_image(truth: np.ndarray | Truth, output: np.ndarray, prior: np.ndarray | None = None) -> dict[str, float]:
    """Every metric of the module docstring for one image: uint8 RGB truth and output [H, W, 3].

    prior: ab-bin counts or shares [Q] of the training data (a manifest's "ab_prior" counts)
    for `auc_rebalanced`; without it that key is left out. A `Truth` brings its own.
    """
    if not isinstance(truth, Truth):
        truth = Truth.of(truth, None if prior is None else rebalancing_weights(prior))
    return score_batch([truth], np.asarray(output)[None])[0]


def score_batch(truths: list[Truth], outputs: np.ndarray) -> list[dict[str, float]]:
    """`score_image` of each of N outputs [N, H, W, 3] against its truth, photos of one size:
    one Lab conversion for them all (TensorFlow's per-call cost outweighs a small photo's work)."""
    outputs = np.asarray(outputs)
    shape = (len(truths), *truths[0].rgb.shape) if truths else (0,)
    if outputs.shape != shape or outputs.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB images of the truth's shape, one per truth: {shape}, got "
                         f"{outputs.dtype} {outputs.shape}")  # fmt: skip
    labs_out = color.rgb_to_lab(outputs).numpy().astype(np.float64)
    return [_scores(truth, output, lab_out) for truth, output, lab_out in zip(truths, outputs, labs_out)]


def _scores(truth: Truth, output: np.ndarray, lab_out: np.ndarray) -> dict[str, float]:
    ab_error = lab_out[..., 1:] - truth.lab[..., 1:]
    colorfulness = color.colorfulness(output)
    scores = {
        "mse_ab": float(np.mean(ab_error**2)),
        "mae_ab": float(np.mean(np.abs(ab_error))),
        "psnr": psnr(truth.rgb, output),
        "ssim": ssim(truth.rgb, output),
        "auc": auc_ab(truth.lab[..., 1:], lab_out[..., 1:]),
        "accuracy": nazeri_accuracy(truth.lab, lab_out),
        "colorfulness": colorfulness,
        "colorfulness_truth": truth.colorfulness,
        "colorfulness_gap": abs(colorfulness - truth.colorfulness),
    }
    if truth.ab_weights is not None:
        scores["auc_rebalanced"] = auc_ab(truth.lab[..., 1:], lab_out[..., 1:], truth.ab_weights)
    return scores


def aggregate(scores: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over images (PSNR too: the mean of per-image PSNRs, not the
    PSNR of the mean MSE, so every image counts the same whatever its size)."""
    if not scores:
        raise ValueError("no images to aggregate")
    return {key: float(np.mean([score[key] for score in scores])) for key in scores[0]}
