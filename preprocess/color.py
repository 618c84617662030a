"""sRGB <-> CIE Lab (D65, 2 degree observer), the model scaling, and Zhang et al.'s ab bins.

Every conversion is a plain TensorFlow op, so the same code runs eagerly, inside
`tf.data.Dataset.map` and inside an exported SavedModel graph. Constants follow
scikit-image (`skimage.color.rgb2lab`), which the tests use as the reference.

Value ranges used throughout the project:
    rgb    float in [0, 1] (or uint8 0..255 where a name says so)
    L      [0, 100];  a, b roughly [-110, 110] (sRGB reaches a in [-86, 98], b in [-108, 95])
    gray   L / 50 - 1           in [-1, 1]     -> the model input,  shape [..., 1]
    color  ab / 110             in [-1, 1]     -> the model target, shape [..., 2]
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

# Model scaling: the one place it is defined. tanh outputs map straight onto `color`.
L_OFFSET = 50.0
L_SCALE = 50.0
AB_SCALE = 110.0

# scikit-image's sRGB->XYZ matrix and D65 white, so that both agree to float precision.
_XYZ_FROM_RGB = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])
_DELTA = 6.0 / 29.0

AB_BIN_SIZE = 10.0
AB_GRID_MAX = 110.0  # bin centres -110..110 step 10 cover every sRGB colour


def _power(x: tf.Tensor, exponent: float) -> tf.Tensor:
    """x ** exponent for x > 0 as exp(exponent * log x): TensorFlow's pow runs one element at a
    time on the CPU, exp and log run vectorised, which makes the Lab conversion, the reader's
    costliest step, about twice as fast (BENCHMARKS.md) at float32 rounding (1e-4 in Lab)."""
    return tf.exp(exponent * tf.math.log(x))


def _piecewise(x: tf.Tensor, knee: float, curve, slope: float) -> tf.Tensor:
    """curve(x) above `knee`, below it the line through (knee, curve(knee)) with `slope`.

    Written with max and min instead of tf.where: on the CPU a select costs as much as
    eight elementwise ops, and at full resolution these conversions are most of an export's
    time for a big photo (BENCHMARKS.md). The curve only ever sees x >= knee > 0, so its
    value and gradient stay finite where the line applies (black, for example).
    """
    return curve(tf.maximum(x, knee)) + slope * (tf.minimum(x, knee) - knee)


def _srgb_to_linear(value: np.ndarray) -> np.ndarray:
    return np.where(value > 0.04045, ((value + 0.055) / 1.055) ** 2.4, value / 12.92)


# uint8 levels take their linear value from a table: 256 entries, computed in float64
_LINEAR_FROM_LEVEL = _srgb_to_linear(np.arange(256) / 255.0).astype(np.float32)


# Lab from f = (f(X/Xn), f(Y/Yn), f(Z/Zn)) and back, as one matrix product each: unstacking
# and stacking channels costs more than the multiply-adds.
_LAB_FROM_F = np.array([[0.0, 500.0, 0.0], [116.0, -500.0, 200.0], [0.0, 0.0, -200.0]])
_LAB_OFFSET = np.array([-16.0, 0.0, 0.0])
_F_FROM_LAB = np.linalg.inv(_LAB_FROM_F)


def _linear(rgb: tf.Tensor) -> tf.Tensor:
    """sRGB (uint8 0..255 or float in [0, 1]) -> linear RGB float32."""
    rgb = tf.convert_to_tensor(rgb)
    if rgb.dtype == tf.uint8:
        return tf.gather(tf.constant(_LINEAR_FROM_LEVEL), tf.cast(rgb, tf.int32))
    rgb = tf.cast(rgb, tf.float32)
    return _piecewise(rgb, 0.04045, lambda value: _power((value + 0.055) / 1.055, 2.4), 1.0 / 12.92)


def _f(ratio: tf.Tensor) -> tf.Tensor:
    """CIE's f(t): the cube root, linear near black."""
    return _piecewise(ratio, _DELTA**3, lambda value: _power(value, 1.0 / 3.0), 1.0 / (3.0 * _DELTA**2))


def rgb_to_lab(rgb: tf.Tensor) -> tf.Tensor:
    """sRGB [..., 3] in [0, 1] (any float dtype, or uint8 0..255) -> Lab [..., 3] float32."""
    f = _f(tf.tensordot(_linear(rgb), tf.constant(_XYZ_FROM_RGB.T / _D65_WHITE, tf.float32), axes=1))
    return tf.tensordot(f, tf.constant(_LAB_FROM_F, tf.float32), axes=1) + _LAB_OFFSET.astype(np.float32)


def lightness(rgb: tf.Tensor) -> tf.Tensor:
    """sRGB [..., 3] like `rgb_to_lab`'s -> L [..., 1], from the luminance alone: a third of the
    work of the whole conversion."""
    luminance = tf.tensordot(_linear(rgb), tf.constant(_XYZ_FROM_RGB[1:2].T, tf.float32), axes=1)
    return 116.0 * _f(luminance) - 16.0


def _encoded(linear: tf.Tensor) -> tf.Tensor:
    """Linear RGB -> sRGB, clipped to [0, 1] (after the curve, which is rising: the same as before
    it, and exact at black, where the two pieces' float32 sum is off by 1e-8)."""
    encoded = _piecewise(linear, 0.0031308, lambda value: 1.055 * _power(value, 1.0 / 2.4) - 0.055, 12.92)
    return tf.clip_by_value(encoded, 0.0, 1.0)


def _rgb_from_f(f: tf.Tensor) -> tf.Tensor:
    """(f(X/Xn), f(Y/Yn), f(Z/Zn)) -> sRGB in [0, 1]: the common end of `lab_to_rgb` and `model_to_rgb`."""
    xyz = _piecewise(f, _DELTA, lambda value: value * value * value, 3.0 * _DELTA**2)
    return _encoded(tf.tensordot(xyz, tf.constant((_RGB_FROM_XYZ * _D65_WHITE).T, tf.float32), axes=1))


def lab_to_rgb(lab: tf.Tensor) -> tf.Tensor:
    """Lab [..., 3] -> sRGB [..., 3] float32 in [0, 1]; out-of-gamut colours are clipped."""
    lab = tf.cast(lab, tf.float32) - _LAB_OFFSET.astype(np.float32)
    return _rgb_from_f(tf.tensordot(lab, tf.constant(_F_FROM_LAB, tf.float32), axes=1))


def lab_to_model(lab: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Lab [..., 3] -> (gray [..., 1] in [-1, 1], color [..., 2] in about [-1, 1])."""
    return (lab[..., :1] - L_OFFSET) / L_SCALE, lab[..., 1:] / AB_SCALE


def model_to_lab(gray: tf.Tensor, color: tf.Tensor) -> tf.Tensor:
    """Inverse of `lab_to_model`: gray [..., 1] and color [..., 2] -> Lab [..., 3]."""
    gray = tf.cast(gray, tf.float32)
    color = tf.cast(color, tf.float32)
    return tf.concat([gray * L_SCALE + L_OFFSET, color * AB_SCALE], axis=-1)


def rgb_to_model(rgb: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """uint8 (or [0, 1] float) RGB [..., 3] -> (gray [..., 1], color [..., 2]) in model scaling."""
    return lab_to_model(rgb_to_lab(rgb))


def model_to_rgb(gray: tf.Tensor, color: tf.Tensor) -> tf.Tensor:
    """(gray [..., 1], color [..., 2]) in model scaling -> uint8 RGB [..., 3], rounded and clipped.

    `lab_to_rgb` of `model_to_lab`, without joining L and ab into one tensor first: an export
    runs this on every pixel of a photo, and the join costs more than the whole matrix product.
    """
    fy = (tf.cast(gray, tf.float32) * L_SCALE + (L_OFFSET - _LAB_OFFSET[0])) * _F_FROM_LAB[0, 1]
    ab_part = tf.tensordot(tf.cast(color, tf.float32), tf.constant(_F_FROM_LAB[1:] * AB_SCALE, tf.float32), axes=1)
    return tf.cast(tf.round(_rgb_from_f(fy + ab_part) * 255.0), tf.uint8)


def gray_levels(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [..., 3] -> uint8 [..., 1]: per pixel the sRGB level v of the neutral gray
    (v, v, v) with the same luminance Y, hence the same L (its a and b are 0 under D65), to
    within 8-bit rounding. A gray pixel (R = G = B) keeps its value, since the Y row of the
    sRGB matrix sums to one. NumPy in float64, for the preprocessing workers (DOMAIN=gray)."""
    value = np.asarray(rgb, np.float64) / 255.0
    linear = _srgb_to_linear(value)
    luminance = linear @ _XYZ_FROM_RGB[1]
    encoded = np.where(luminance > 0.0031308, 1.055 * np.maximum(luminance, 0.0031308) ** (1 / 2.4) - 0.055,
                       12.92 * luminance)  # fmt: skip
    return np.clip(np.round(encoded * 255.0), 0, 255).astype(np.uint8)[..., None]


def colorfulness(rgb: np.ndarray) -> float:
    """Hasler and Suesstrunk (2003) colourfulness of one uint8 RGB image [H, W, 3]; 0 for gray.

    Around 15 is "slightly colourful", above 100 "extremely colourful". NumPy, because it
    scores single images in the preprocessing workers and in reports, never in a graph.
    """
    rgb = np.asarray(rgb, np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


# ---------------------------------------------------------------------------------------
# Zhang et al.'s quantised ab space


def _grid_centres() -> np.ndarray:
    return np.arange(-AB_GRID_MAX, AB_GRID_MAX + 1.0, AB_BIN_SIZE)


def _grid_index(ab: np.ndarray) -> np.ndarray:
    """Row-major index of the nearest grid centre on the full 23x23 grid."""
    n = len(_grid_centres())
    ij = np.clip(np.round((ab + AB_GRID_MAX) / AB_BIN_SIZE), 0, n - 1).astype(np.int64)
    return ij[..., 0] * n + ij[..., 1]


@functools.cache
def ab_bins() -> np.ndarray:
    """The in-gamut ab bins [Q, 2] (float32, Lab units), computed from the sRGB gamut.

    Every one of the 2**24 uint8 sRGB colours is converted to Lab and assigned to its nearest
    centre on a grid of size 10; the bins kept are the ones some colour reaches. Zhang et al.
    shipped Q = 313 points taken from a hull slightly wider than sRGB; the exact sRGB gamut
    under the D65 conversion above reaches fewer (261), and those are all a colour photo can
    produce. Computed once per process (about a second).
    """
    levels = np.arange(256, dtype=np.uint8)
    reached = np.zeros(len(_grid_centres()) ** 2, bool)
    # Eagerly even when the first caller is being traced (a tf.function or tf.data map).
    with tf.init_scope():
        for reds in np.split(levels, 16):  # 16 slices of 2**20 colours keep memory small
            rgb = np.stack(np.meshgrid(reds, levels, levels, indexing="ij"), axis=-1)
            ab = rgb_to_lab(rgb)[..., 1:].numpy()
            reached |= np.bincount(_grid_index(ab).ravel(), minlength=reached.size) > 0
    centres = _grid_centres()
    grid = np.stack(np.meshgrid(centres, centres, indexing="ij"), axis=-1).reshape(-1, 2)
    return grid[reached].astype(np.float32)


@functools.cache
def _grid_to_bin() -> np.ndarray:
    """For each of the 23x23 grid cells, the index of the nearest in-gamut bin."""
    bins = ab_bins()
    centres = _grid_centres()
    grid = np.stack(np.meshgrid(centres, centres, indexing="ij"), axis=-1).reshape(-1, 2)
    return np.argmin(((grid[:, None, :] - bins[None, :, :]) ** 2).sum(-1), axis=1).astype(np.int32)


# Plain TF ops: AutoGraph has nothing to convert, and converting the cached table's builder
# inside a traced caller fails (functools.cache wrappers confuse it).
@tf.autograph.experimental.do_not_convert
def nearest_bin(ab: tf.Tensor) -> tf.Tensor:
    """ab [..., 2] in Lab units -> int32 index [...] of the nearest in-gamut bin."""
    n = len(_grid_centres())
    ij = tf.clip_by_value(tf.round((tf.cast(ab, tf.float32) + AB_GRID_MAX) / AB_BIN_SIZE), 0.0, n - 1.0)
    index = tf.cast(ij[..., 0] * n + ij[..., 1], tf.int32)
    return tf.gather(tf.constant(_grid_to_bin()), index)


def ab_histogram(ab: np.ndarray) -> np.ndarray:
    """Pixel counts [Q] (int64) of ab values [..., 2] (Lab units) over the in-gamut bins."""
    index = _grid_to_bin()[_grid_index(np.asarray(ab, np.float32))]
    return np.bincount(index.ravel(), minlength=len(ab_bins())).astype(np.int64)


def soft_encode(ab: tf.Tensor, neighbours: int = 5, sigma: float = 5.0) -> tf.Tensor:
    """ab [..., 2] in Lab units -> soft targets [..., Q] over the in-gamut bins.

    Zhang et al.: each pixel's mass goes to its `neighbours` nearest bins, weighted by a
    Gaussian of width `sigma` on the distance, and sums to one.
    """
    ab = tf.cast(ab, tf.float32)
    bins = tf.constant(ab_bins())
    sq_dist = tf.reduce_sum(tf.square(ab[..., None, :] - bins), axis=-1)  # [..., Q]
    # A pixel exactly between bins would otherwise keep every tied bin; a tiny per-bin offset
    # (far below the 1e2 spacing of squared distances) breaks ties by bin order.
    sq_dist += tf.range(len(ab_bins()), dtype=tf.float32) * 1e-4
    kth_nearest = -tf.math.top_k(-sq_dist, k=neighbours).values[..., -1:]
    weights = tf.where(sq_dist <= kth_nearest, tf.exp(-sq_dist / (2.0 * sigma**2)), 0.0)
    return weights / tf.reduce_sum(weights, axis=-1, keepdims=True)

