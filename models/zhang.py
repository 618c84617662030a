"""`zhang`: Zhang, Isola and Efros (2016), colorization as classification over quantised ab.

A VGG-style network without pooling maps gray L to logits over the Q in-gamut ab bins of
preprocess/color.py at a quarter of the input resolution. It trains on cross-entropy
against soft-encoded targets, each pixel weighted by how rare its colour is in the
training data (class rebalancing), so that the loss does not pull every pixel towards the
desaturated colours that dominate photos. Colour comes back by the annealed mean of the
predicted distribution: its temperature trades the mean's safe, brownish averages
(T = 1) for the mode's vivid but blotchy picks (T -> 0); the paper uses T = 0.38.

Q is len(color.ab_bins()): 261 for the exact sRGB gamut, where the paper had 313 bins
taken from a wider hull (see preprocess/color.py).

The networks: {"generator": ZhangGenerator}. Its `network` is the trained part, gray ->
logits; the generator itself adds the decoding and has no weights of its own:
    generator(gray)                 -> colour at the config's temperature (training's validation, samples)
    generator([gray, temperature])  -> colour at a temperature [B] per image (the export's signatures)
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from models import unet
from models.config import check
from preprocess import color


@dataclasses.dataclass(frozen=True)
class ZhangConfig(unet.StatisticsSides):
    """Network, classification loss and decoding; the defaults are the paper's (32 M weights)."""

    base_width: int = 64  # blocks 1-8 have 1, 2, 4, 8, 8, 8, 8, 4 times this many channels
    dilation: int = 2  # of blocks 5 and 6 (the paper's "a trous" convolutions)
    output_stride: int = 4  # logits at H / output_stride: 8, 4 (paper), 2 or 1
    soft_neighbours: int = 5  # soft encoding: each pixel's mass goes to its nearest bins ...
    soft_sigma: float = 5.0  # ... weighted by a Gaussian of this width (Lab units)
    rebalance_lambda: float = 0.5  # weight of the uniform distribution mixed into the prior; 1: no rebalancing
    prior_sigma: float = 5.0  # Gaussian smoothing of the training data's ab prior (Lab units); 0: none
    temperature: float = 0.38  # annealed mean at inference: 1 the mean, towards 0 the mode
    # At decoding, the predicted distribution times the training data's rebalancing weights
    # (lambda 0.5, as the paper trains) to this power: 0 as trained; 1 as if trained with
    # rebalancing. Lifts rare, saturated colours where the network finds them plausible.
    decode_rebalance: float = 0.0
    # At decoding, each pixel's ab moved away from the photo's mean ab by this factor (1: as
    # decoded). The annealed mean pulls uncertain pixels towards the photo's overall colour;
    # widening that spread again restores colour where it costs per-pixel accuracy least
    # (BENCHMARKS.md, "Chroma gain").
    chroma_gain: float = 1.0

    def __post_init__(self) -> None:
        check(self.base_width >= 1, f"--base_width={self.base_width}: must be at least 1")
        check(self.dilation >= 1, f"--dilation={self.dilation}: must be at least 1")
        check(self.output_stride in (1, 2, 4, 8), f"--output_stride={self.output_stride}: must be 1, 2, 4 or 8")
        check(self.soft_neighbours >= 1, f"--soft_neighbours={self.soft_neighbours}: must be at least 1")
        check(self.soft_sigma > 0.0, f"--soft_sigma={self.soft_sigma}: must be > 0")
        check(0.0 < self.rebalance_lambda <= 1.0, f"--rebalance_lambda={self.rebalance_lambda}: must be in (0, 1]")
        check(self.prior_sigma >= 0.0, f"--prior_sigma={self.prior_sigma}: must be >= 0")
        check(self.temperature > 0.0, f"--temperature={self.temperature}: must be > 0")
        check(self.decode_rebalance >= 0.0, f"--decode_rebalance={self.decode_rebalance}: must be >= 0")
        check(self.chroma_gain > 0.0, f"--chroma_gain={self.chroma_gain}: must be > 0")
        super().__post_init__()

    @property
    def stride(self) -> int:
        """Image sides must be multiples of this: blocks 1-3 halve the size three times."""
        return 8


# 32 px: a quarter of the paper's widths (2.0 M weights against 32.2 M); logits 8 x 8.
PRESETS: dict[int, dict[str, object]] = {
    32: {"base_width": 16},
    256: {},
}

# (width multiple, convolutions) of blocks 1-7; the last convolution of blocks 1-3 has stride 2.
_BLOCKS = [(1, 2), (2, 2), (4, 3), (8, 3), (8, 3), (8, 3), (8, 3)]


def logits_network(config: ZhangConfig, name: str = "network") -> keras.Model:
    """gray [B, H, W, 1] in [-1, 1] -> logits [B, H / output_stride, W / output_stride, Q] float32.

    3x3 convolutions with ReLU (4x4 transposed ones where block 8 upsamples); blocks 1-7
    end in BatchNorm, as in the paper's Caffe model. H and W must be multiples of 8.
    """
    bins = len(color.ab_bins())
    b = config.base_width
    layers = unet.convolution_layers()
    gray = keras.Input([None, None, 1], name="gray")  # [B, H, W, 1]
    x = gray
    for block, (multiple, convolutions) in enumerate(_BLOCKS, start=1):
        # blocks 1-3: [B, H / 2**block, W / 2**block, width]; blocks 4-7: [B, H / 8, W / 8, 8 b]
        dilation = config.dilation if block in (5, 6) else 1
        for i in range(1, convolutions + 1):
            strides = 2 if block <= 3 and i == convolutions else 1
            x = layers.Conv2D(multiple * b, 3, strides=strides, padding="same", dilation_rate=dilation,
                              activation="relu", name=f"conv{block}_{i}")(x)  # fmt: skip
        x = unet.batch_norm(f"conv{block}_norm", config.sides)(x)

    # Block 8: three layers of 4 b channels; the first log2(8 / output_stride) upsample by 2.
    upsamplings = int(math.log2(8 // config.output_stride))
    for i in range(1, 4):
        if i <= upsamplings:  # [B, H / 2**(3-i), W / 2**(3-i), 4 b]
            x = layers.Conv2DTranspose(4 * b, 4, strides=2, padding="same", activation="relu",
                                       name=f"conv8_{i}")(x)  # fmt: skip
        else:  # [B, H / output_stride, W / output_stride, 4 b]
            x = layers.Conv2D(4 * b, 3, padding="same", activation="relu", name=f"conv8_{i}")(x)
    x = layers.Conv2D(bins, 1, name="conv8_bins")(x)  # [B, H / output_stride, W / output_stride, Q]
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return unet.SizeStatisticsNetwork(gray, logits, config.sides, name=name)


def decode(logits: tf.Tensor, temperature: tf.Tensor | float, log_weights: tf.Tensor | None = None,
           chroma_gain: tf.Tensor | float | None = None) -> tf.Tensor:  # fmt: skip
    """The annealed mean: logits [B, h, w, Q] and temperature (scalar or [B]) -> color [B, h, w, 2] float32.

    softmax(log p / T) re-weights the predicted distribution p; since log p is the logits
    minus a per-pixel constant, that is softmax(logits / T). With `log_weights` [Q] (or
    [B, 1, 1, Q], one per image), p is first multiplied by exp(log_weights) (a rebalancing at
    decoding). The colour is the expectation of the bin centres under it, in model scaling
    (ab / 110). With `chroma_gain` g (scalar or [B]), each pixel's colour c becomes
    m + g (c - m), m the image's mean colour; for g > 1 it may leave [-1, 1], which the
    conversion to RGB clips.
    """
    temperature = tf.reshape(tf.cast(temperature, tf.float32), [-1, 1, 1, 1])
    logits = tf.cast(logits, tf.float32)
    if log_weights is not None:
        logits += log_weights
    annealed = tf.nn.softmax(logits / temperature, axis=-1)
    ab = tf.einsum("bhwq,qc->bhwc", annealed, tf.constant(color.ab_bins()))  # Lab units
    if chroma_gain is not None:
        mean = tf.reduce_mean(ab, axis=[1, 2], keepdims=True)
        ab = mean + tf.reshape(tf.cast(chroma_gain, tf.float32), [-1, 1, 1, 1]) * (ab - mean)
    return ab / color.AB_SCALE


class ZhangGenerator(keras.Model):
    """gray [B, H, W, 1], or [gray, temperature [B]] -> color [B, H, W, 2] float32.

    `network`'s logits decoded by the annealed mean (at `temperature` unless one is given),
    rebalanced by `decode_rebalance` x `log_rebalance`, spread by `chroma_gain` (see `decode`),
    and upsampled bilinearly to the input size (in [-1, 1] unless `chroma_gain` > 1). Its
    only weight of its own is `log_rebalance` [Q], the log rebalancing weights of the
    training data, which the training step keeps set (zeros until then): it is saved with
    the checkpoint and the export, which therefore need no training data. The loop gives
    the generator one optimizer; `network`'s weights are saved once.
    """

    def __init__(self, network: keras.Model, temperature: float, decode_rebalance: float = 0.0,
                 chroma_gain: float = 1.0, name: str = "generator") -> None:  # fmt: skip
        super().__init__(name=name, dtype="float32")  # decoding in float32 under any policy
        self.network = network
        self.temperature = temperature
        self.decode_rebalance = decode_rebalance
        self.chroma_gain = chroma_gain
        self.log_rebalance = self.add_weight(shape=[len(color.ab_bins())], initializer="zeros", trainable=False,
                                             name="log_rebalance", aggregation="only_first_replica")  # fmt: skip
        self.built = True  # `network` is; the wrapper has nothing else to build

    def call(self, inputs: tf.Tensor | list[tf.Tensor], training: bool = False) -> tf.Tensor:
        gray, temperature = inputs if isinstance(inputs, (list, tuple)) else (inputs, self.temperature)
        log_weights = self.decode_rebalance * self.log_rebalance if self.decode_rebalance else None
        gain = self.chroma_gain if self.chroma_gain != 1.0 else None
        fake_color = decode(self.network(gray, training=training), temperature, log_weights, gain)  # [B, h, w, 2]
        return tf.image.resize(fake_color, tf.shape(gray)[1:3], method="bilinear")  # [B, H, W, 2]

    def decode_each(self, gray: tf.Tensor, temperatures: tf.Tensor, rebalances: tf.Tensor,
                    chroma_gains: tf.Tensor) -> tf.Tensor:  # fmt: skip
        """N photos' gray [N, H, W, 1] each decoded D ways from one pass of the network: at
        temperatures [D], decode_rebalance values [D] and chroma gains [D] -> color [N * D, H, W, 2],
        photo n's decodings at n * D .. n * D + D - 1, each what `call` gives at those settings
        (what a sweep of decodings needs: the network's cost once)."""
        logits = self.network(gray)
        photos = tf.shape(gray)[0]
        log_weights = tf.reshape(tf.cast(rebalances, tf.float32), [-1, 1, 1, 1]) * self.log_rebalance
        fake_color = decode(tf.repeat(logits, tf.size(temperatures), axis=0), tf.tile(temperatures, [photos]),
                            tf.tile(log_weights, [photos, 1, 1, 1]), tf.tile(chroma_gains, [photos]))  # fmt: skip
        return tf.image.resize(fake_color, tf.shape(gray)[1:3], method="bilinear")


def build(config: ZhangConfig) -> dict[str, keras.Model]:
    """{"generator": gray -> fake_color, with `.network`: gray -> logits}."""
    return {"generator": ZhangGenerator(logits_network(config), config.temperature, config.decode_rebalance,
                                        config.chroma_gain)}  # fmt: skip


# ---------------------------------------------------------------------------------------
# training targets


def soft_targets(real_color: tf.Tensor, size: tf.Tensor, config: ZhangConfig) -> tf.Tensor:
    """color [B, H, W, 2] in model scaling -> soft targets [B, h, w, Q] at the logits' size [h, w].

    The colour is averaged down (area resize) to the logits' resolution, then soft-encoded:
    its `soft_neighbours` nearest bins, Gaussian-weighted, summing to one.
    """
    ab = tf.image.resize(tf.cast(real_color, tf.float32) * color.AB_SCALE, size, method="area")
    return color.soft_encode(ab, config.soft_neighbours, config.soft_sigma)


def smoothed_prior(counts: np.ndarray, sigma: float = 5.0) -> np.ndarray:
    """The empirical ab prior [Q] (float64, sums to 1) from pixel counts [Q] over color.ab_bins().

    Smoothed by a Gaussian of width `sigma` (Lab units) over the bin centres:
    p_q proportional to sum_r counts_r exp(-|c_q - c_r|^2 / (2 sigma^2)); sigma 0 leaves it as counted.
    """
    bins = color.ab_bins().astype(np.float64)
    counts = np.asarray(counts, np.float64)
    if counts.shape != (len(bins),) or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"ab prior: expected non-negative pixel counts over the {len(bins)} ab bins, "
                         f"not all zero; got shape {counts.shape}")  # fmt: skip
    prior = counts
    if sigma > 0:
        squared = ((bins[:, None, :] - bins[None, :, :]) ** 2).sum(-1)  # [Q, Q]
        prior = np.exp(-squared / (2.0 * sigma**2)) @ counts
    return prior / prior.sum()


def rebalance_weights(counts: np.ndarray, rebalance_lambda: float = 0.5, prior_sigma: float = 5.0) -> np.ndarray:
    """Per-bin loss weights [Q] (float64) from the training data's ab-bin pixel counts [Q].

    The smoothed prior p (see `smoothed_prior`) mixed with the uniform distribution, inverted:
        w_q proportional to 1 / ((1 - lambda) p_q + lambda / Q),
    normalised so that the expected weight under p is 1. Rare colours then count more;
    lambda = 1 gives every bin weight 1.
    """
    prior = smoothed_prior(counts, prior_sigma)
    weights = 1.0 / ((1.0 - rebalance_lambda) * prior + rebalance_lambda / len(prior))
    return weights / (prior * weights).sum()


# The rebalancing that --decode_rebalance raises to its power: the paper's lambda.
DECODING_LAMBDA = 0.5


def decoding_log_weights(counts: np.ndarray | None, prior_sigma: float) -> np.ndarray:
    """ZhangGenerator.log_rebalance [Q] (float32) for training data with these ab-bin pixel
    counts [Q]; zeros (nothing to rebalance) without them."""
    if counts is None:
        return np.zeros(len(color.ab_bins()), np.float32)
    return np.log(rebalance_weights(counts, DECODING_LAMBDA, prior_sigma)).astype(np.float32)
