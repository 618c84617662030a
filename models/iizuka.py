"""`iizuka`: Iizuka, Simo-Serra and Ishikawa (2016), global and local image priors fused.

Two paths share a low-level network of strided convolutions. The local path runs it on
the image at its own size and refines it (mid-level network, H/8). The global path runs it
on a copy rescaled to a fixed `global_size` square, then convolutions and fully connected
layers reduce it to one 256-d vector per image; because that copy always has the same
size, the generator takes any input size. The fusion layer broadcasts the vector to every
mid-level position and mixes both with a 1x1 convolution, and the colorization network
upsamples (nearest neighbour) to half the input size and outputs ab through a sigmoid,
which is upsampled bilinearly to the input size.

The sigmoid's [0, 1] is mapped to the project's model scaling by 2 s - 1, so the generator
is gray -> color in [-1, 1] like every other. A classification network on the global
features (the paper's 205 Places scenes; here the manifest's classes, e.g. CIFAR-10's)
is trained jointly with the colour: it makes the global features say what the scene is.

The networks: {"generator": gray -> color} and, when `classes` > 0, {"classifier":
global features [B, 8 base_width] -> class logits [B, classes]}; `with_global_features`
gives the generator's view that the training step uses.
"""

from __future__ import annotations

import dataclasses
import functools

import keras
import tensorflow as tf

from models import unet
from models.config import check

GLOBAL_FEATURES = "global_features"  # the layer whose output the classifier reads


@dataclasses.dataclass(frozen=True)
class IizukaConfig(unet.StatisticsSides):
    """Networks and loss weight; the defaults are the paper's (224 px global view, 64 base width)."""

    base_width: int = 64  # low-level 64-512, mid-level 512/256, global 512 + FC 1024/512/256, fusion 256 (paper)
    global_size: int = 224  # the global path sees the input rescaled to this square; a multiple of 32
    classes: int = 0  # classification outputs; 0: no classifier. `make train` sets the manifest's class count
    lambda_class: float = 1.0 / 300.0  # alpha in the paper: weight of the class cross-entropy

    def __post_init__(self) -> None:
        check(self.base_width >= 2, f"--base_width={self.base_width}: must be at least 2")
        check(self.global_size >= 32 and self.global_size % 32 == 0,
              f"--global_size={self.global_size}: must be a positive multiple of 32")  # fmt: skip
        check(self.classes >= 0, f"--classes={self.classes}: must be >= 0")
        check(self.lambda_class >= 0.0, f"--lambda_class={self.lambda_class}: must be >= 0")
        super().__post_init__()

    @property
    def stride(self) -> int:
        """Image sides should be multiples of this (the low-level network's downsampling);
        other sizes run too, their features rounded up."""
        return 8


# 32 px: a quarter of the paper's widths; the global path sees a 64 px copy (2x2 after its convolutions).
PRESETS: dict[int, dict[str, object]] = {
    32: {"base_width": 16, "global_size": 64},
    256: {},
}


def from_data(shards) -> dict[str, object]:
    """Settings read from the training data (a preprocess.dataset.Shards): one class output per
    label name (0 without labels)."""
    return {"classes": len(shards.label_names or [])}


class Resize(keras.layers.Layer):
    """Bilinear resize to a fixed [size, size], or to the spatial size of a second input.

    Antialiased when it shrinks, so a large photo shrunk for the global path keeps its
    averages. When it enlarges, the antialiasing filter is plain bilinear interpolation (the
    same values to 1e-7) in an op 2 to 6 times as slow, with a slower gradient: at the 32 px
    preset both resizes enlarge, and took a sixth of the training step.
    """

    def __init__(self, size: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.size = size

    def call(self, x: tf.Tensor, like: tf.Tensor | None = None) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        size = tf.constant([self.size, self.size]) if like is None else tf.shape(like)[1:3]
        static_size = (self.size, self.size) if like is None else tuple(like.shape[1:3])
        if None not in static_size and None not in tuple(x.shape[1:3]):
            # Chosen when traced where the sides are known, as in training on fixed-size tiles:
            # a graph conditional would keep XLA from compiling the step (it has no antialiased
            # resize, even in the branch not taken) and is one more call per resize.
            enlarges = all(new >= old for new, old in zip(static_size, x.shape[1:3]))
            return tf.cast(tf.image.resize(x, size, method="bilinear", antialias=not enlarges), self.compute_dtype)
        resized = tf.cond(
            tf.reduce_all(size >= tf.shape(x)[1:3]),
            lambda: tf.image.resize(x, size, method="bilinear"),
            lambda: tf.image.resize(x, size, method="bilinear", antialias=True),
        )
        return tf.cast(resized, self.compute_dtype)


class Broadcast(keras.layers.Layer):
    """vector [B, C] and a map [B, h, w, D] -> the vector at every position [B, h, w, C]."""

    def call(self, vector: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
        shape = tf.concat([tf.shape(like)[:3], tf.shape(vector)[1:]], axis=0)
        return tf.broadcast_to(vector[:, None, None, :], shape)


def _conv(x: keras.KerasTensor, width: int, name: str, strides: int = 1, kernel: int = 3,
          sides: tuple[int, ...] = ()) -> keras.KerasTensor:  # fmt: skip
    """Convolution, BatchNorm (statistics per side of `sides`), ReLU: every layer of the paper but the outputs."""
    x = unet.convolution_layers().Conv2D(width, kernel, strides=strides, padding="same", use_bias=False, name=name)(x)
    x = unet.batch_norm(f"{name}_norm", sides)(x)
    return keras.layers.ReLU(name=f"{name}_act")(x)


def _dense(x: keras.KerasTensor, width: int, name: str, sides: tuple[int, ...] = ()) -> keras.KerasTensor:
    x = keras.layers.Dense(width, use_bias=False, name=name)(x)
    x = unet.batch_norm(f"{name}_norm", sides)(x)
    return keras.layers.ReLU(name=f"{name}_act")(x)


def low_level_network(config: IizukaConfig) -> keras.Model:
    """gray [B, H, W, 1] -> features [B, H / 8, W / 8, 8 b]; shared by the local and global paths."""
    b = config.base_width
    conv = functools.partial(_conv, sides=config.sides)
    gray = keras.Input([None, None, 1], name="gray")
    x = conv(gray, b, "low1", strides=2)  # [B, H / 2, W / 2, b]
    x = conv(x, 2 * b, "low2")  # [B, H / 2, W / 2, 2 b]
    x = conv(x, 2 * b, "low3", strides=2)  # [B, H / 4, W / 4, 2 b]
    x = conv(x, 4 * b, "low4")  # [B, H / 4, W / 4, 4 b]
    x = conv(x, 4 * b, "low5", strides=2)  # [B, H / 8, W / 8, 4 b]
    x = conv(x, 8 * b, "low6")  # [B, H / 8, W / 8, 8 b]
    return keras.Model(gray, x, name="low_level")


def generator(config: IizukaConfig, name: str = "generator") -> keras.Model:
    """gray [B, H, W, 1] in [-1, 1] -> fake_color [B, H, W, 2] float32 in [-1, 1]."""
    b, g = config.base_width, config.global_size
    conv, dense = functools.partial(_conv, sides=config.sides), functools.partial(_dense, sides=config.sides)
    low_level = low_level_network(config)
    gray = keras.Input([None, None, 1], name="gray")  # [B, H, W, 1]

    local = low_level(gray)  # [B, H / 8, W / 8, 8 b]
    mid = conv(local, 8 * b, "mid1")  # [B, H / 8, W / 8, 8 b]
    mid = conv(mid, 4 * b, "mid2")  # [B, H / 8, W / 8, 4 b]

    x = low_level(Resize(g, name="global_view")(gray))  # [B, g / 8, g / 8, 8 b]
    x = conv(x, 8 * b, "global1", strides=2)  # [B, g / 16, g / 16, 8 b]
    x = conv(x, 8 * b, "global2")
    x = conv(x, 8 * b, "global3", strides=2)  # [B, g / 32, g / 32, 8 b]
    x = conv(x, 8 * b, "global4")
    x = keras.layers.Flatten(name="global_flatten")(x)  # [B, (g / 32)**2 * 8 b]
    x = dense(x, 16 * b, "global_fc1")  # [B, 16 b]
    features = dense(x, 8 * b, "global_fc2")  # [B, 8 b]: what the classifier reads
    features = keras.layers.Identity(name=GLOBAL_FEATURES)(features)
    vector = dense(features, 4 * b, "global_fc3")  # [B, 4 b]: the 256-d vector of the paper

    # Fusion: the global vector at every mid-level position, mixed with the local features by a 1x1 convolution.
    spread = Broadcast(name="global_broadcast")(vector, like=mid)  # [B, H / 8, W / 8, 4 b]
    x = keras.layers.Concatenate(name="fusion_concat")([mid, spread])  # [B, H / 8, W / 8, 8 b]
    x = conv(x, 4 * b, "fusion", kernel=1)  # [B, H / 8, W / 8, 4 b]

    x = conv(x, 2 * b, "color1")  # [B, H / 8, W / 8, 2 b]
    x = keras.layers.UpSampling2D(2, interpolation="nearest", name="color_up1")(x)  # [B, H / 4, W / 4, 2 b]
    x = conv(x, b, "color2")  # [B, H / 4, W / 4, b]
    x = conv(x, b, "color3")
    x = keras.layers.UpSampling2D(2, interpolation="nearest", name="color_up2")(x)  # [B, H / 2, W / 2, b]
    x = conv(x, b // 2, "color4")  # [B, H / 2, W / 2, b / 2]
    x = keras.layers.Conv2D(2, 3, padding="same", name="color_out")(x)  # [B, H / 2, W / 2, 2]
    x = keras.layers.Activation("sigmoid", dtype="float32", name="sigmoid")(x)  # ab / 220 + 0.5, in [0, 1]
    x = Resize(dtype="float32", name="upsample")(x, like=gray)  # [B, H, W, 2]
    fake_color = keras.layers.Rescaling(2.0, offset=-1.0, dtype="float32", name="fake_color")(x)  # [-1, 1]
    return unet.SizeStatisticsNetwork(gray, fake_color, config.sides, name=name)


def classifier(config: IizukaConfig, name: str = "classifier") -> keras.Model:
    """Global features [B, 8 b] -> class logits [B, classes] float32 (the paper's classification network).

    One set of batch-norm statistics whatever --statistics_sides: it runs in training mode
    only (train/steps.py), on each batch's own moments, and never reads them.
    """
    features = keras.Input([8 * config.base_width], name=GLOBAL_FEATURES)
    x = _dense(features, 4 * config.base_width, "class_fc1")  # [B, 4 b]
    x = keras.layers.Dense(config.classes, name="class_fc2")(x)  # [B, classes]
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(features, logits, name=name)


def with_global_features(generator: unet.SizeStatisticsNetwork) -> keras.Model:
    """The same layers and weights as `generator`, as gray -> [fake_color, global features [B, 8 b]],
    with the same choice of batch-norm statistics by size."""
    outputs = [generator.outputs[0], generator.get_layer(GLOBAL_FEATURES).output]
    return unet.SizeStatisticsNetwork(generator.inputs, outputs, generator.sides, f"{generator.name}_with_features")


def build(config: IizukaConfig) -> dict[str, keras.Model]:
    """{"generator": gray -> fake_color} and, when config.classes > 0, {"classifier": features -> logits}."""
    networks = {"generator": generator(config)}
    if config.classes:
        networks["classifier"] = classifier(config)
    return networks
