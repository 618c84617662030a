"""`guided`: Zhang, Zhu, Isola, Geng, Lin, Yu and Efros (2017), colorization steered by hints.

"Real-Time User-Guided Image Colorization with Learned Deep Priors": a U-Net takes the gray
image with local hints (a few pixels of known ab and their mask, see models/hints.py) and
is told the photo's colour distribution (the global hint: ab histogram over the quantised
bins, mean saturation, a given flag) through a small dense network whose output is added,
broadcast over the image, to the features in the middle of the network. Training needs no
human input: both hints are sampled from the photo's own colour (models.hints), the global
one dropped at random, so that the same weights colorize with hints, with a reference
photo, and with none. The loss is the paper's regression branch: smooth L1 (Huber) on ab.

The network follows the paper's: blocks 1-4 (1, 2, 4, 8 x base_width channels, each of
blocks 1-3 ending in a 2x downsampling), blocks 5-6 dilated by 2, block 7, then blocks
8-10 upsample by 2 with a transposed convolution and add a 3x3 convolution of blocks 3,
2 and 1 (the paper's shortcuts), each block ending in BatchNorm; a 1x1 convolution and
tanh give ab. The global hint goes through `global_layers` 1x1 (dense) layers of 8 x
base_width and is added after block 4.

The networks: {"generator": GuidedGenerator}:
    generator(gray)                              -> automatic colorization: no local hints, no global hint
    generator([gray, local_hints, global_hint])  -> guided
with gray [B, H, W, 1] and colour [B, H, W, 2] in [-1, 1]; hints as in models/hints.py.
`generator.network` is the functional network of the three inputs.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from models import hints, unet
from models.config import check
from preprocess import color


@dataclasses.dataclass(frozen=True)
class GuidedConfig(unet.StatisticsSides):
    """Network, hint sampling and loss; the defaults are the paper's (widths 64 ... 512)."""

    base_width: int = 64  # blocks 1-7 have 1, 2, 4, 8, 8, 8, 8 times this many channels; 8-10 have 4, 2, 1
    dilation: int = 2  # of blocks 5 and 6
    global_layers: int = 4  # dense layers of the global hint before it joins block 4's features
    huber_delta: float = 1.0  # smooth L1 on ab: quadratic below this many Lab units (the paper's 1)
    point_probability: float = hints.POINT_PROBABILITY  # local hints per image: geometric, mean (1 - p) / p
    max_points: int = hints.MAX_POINTS  # ... capped here
    # How often training gives the truth's global hint. The rest of the time it is absent,
    # which is what keeps the automatic colorization (no hint at all) trained.
    global_hint_probability: float = 0.5

    def __post_init__(self) -> None:
        check(self.base_width >= 1, f"--base_width={self.base_width}: must be at least 1")
        check(self.dilation >= 1, f"--dilation={self.dilation}: must be at least 1")
        check(self.global_layers >= 1, f"--global_layers={self.global_layers}: must be at least 1")
        check(self.huber_delta > 0.0, f"--huber_delta={self.huber_delta}: must be > 0")
        check(0.0 < self.point_probability <= 1.0, f"--point_probability={self.point_probability}: must be in (0, 1]")
        check(self.max_points >= 0, f"--max_points={self.max_points}: must be >= 0")
        check(0.0 <= self.global_hint_probability <= 1.0,
              f"--global_hint_probability={self.global_hint_probability}: must be in [0, 1]")  # fmt: skip
        super().__post_init__()

    @property
    def stride(self) -> int:
        """Image sides must be multiples of this: blocks 1-3 halve the size three times."""
        return 8


# 64 px (and 32): a quarter of the paper's widths, the size of zhang's small preset.
PRESETS: dict[int, dict[str, object]] = {
    32: {"base_width": 16},
    64: {"base_width": 16},
    256: {},
}

# (width multiple, convolutions) of the encoder blocks 1-7.
_ENCODER = [(1, 2), (2, 2), (4, 3), (8, 3), (8, 3), (8, 3), (8, 3)]
# (width multiple, convolutions after the upsampling) of decoder blocks 8-10, and the block each takes a shortcut from.
_DECODER = [(4, 2, 3), (2, 1, 2), (1, 1, 1)]


def _conv(width: int, name: str, dilation: int = 1) -> keras.layers.Conv2D:
    return unet.convolution_layers().Conv2D(width, 3, padding="same", dilation_rate=dilation, activation="relu",
                                            name=name)  # fmt: skip


def guided_network(config: GuidedConfig, name: str = "network") -> keras.Model:
    """[gray [B, H, W, 1], local_hints [B, H, W, 3], global_hint [B, G]] -> colour [B, H, W, 2] float32 in (-1, 1).

    H and W must be multiples of 8. Under a mixed-precision policy everything but the
    tanh computes in 16 bits.
    """
    b = config.base_width
    gray = keras.Input([None, None, 1], name="gray")  # [B, H, W, 1]
    local = keras.Input([None, None, 3], name="local_hints")  # [B, H, W, 3]
    global_hint = keras.Input([hints.global_hint_size()], name="global_hint")  # [B, G]

    x = keras.layers.Concatenate(name="inputs")([gray, local])  # [B, H, W, 4]
    skips = {}
    for block, (multiple, convolutions) in enumerate(_ENCODER, start=1):
        # blocks 1-3: [B, H / 2**(block-1), W / 2**(block-1), width] before their downsampling; 4-7: [B, H / 8, W / 8, 8 b]
        dilation = config.dilation if block in (5, 6) else 1
        for i in range(1, convolutions + 1):
            x = _conv(multiple * b, f"conv{block}_{i}", dilation)(x)
        x = unet.batch_norm(f"conv{block}_norm", config.sides)(x)
        if block <= 3:
            skips[block] = x
            # the paper subsamples by 2 (strided slicing); a 2x2 max pool keeps the strongest response instead
            x = keras.layers.MaxPooling2D(2, name=f"conv{block}_down")(x)  # [B, H / 2**block, W / 2**block, width]
        if block == 4:
            # the global hint: dense layers, then added at every position of block 4's output
            g = global_hint
            for i in range(1, config.global_layers + 1):
                g = keras.layers.Dense(8 * b, activation="relu" if i < config.global_layers else None,
                                       name=f"global_{i}")(g)  # [B, 8 b]  # fmt: skip
            g = keras.layers.Reshape([1, 1, 8 * b], name="global_broadcast")(g)  # [B, 1, 1, 8 b]
            x = keras.layers.Add(name="global_fuse")([x, g])  # [B, H / 8, W / 8, 8 b]

    for block, (multiple, convolutions, source) in enumerate(_DECODER, start=8):
        # [B, H / 2**(10-block), W / 2**(10-block), multiple b]
        # unet's: Keras's own sums a transposed convolution's bias gradient in bf16, which stalls
        up = unet.Conv2DTranspose(multiple * b, 4, strides=2, padding="same", name=f"conv{block}_up")(x)
        shortcut = keras.layers.Conv2D(multiple * b, 3, padding="same", name=f"conv{block}_shortcut")(skips[source])
        x = keras.layers.ReLU(name=f"conv{block}_join")(keras.layers.Add(name=f"conv{block}_add")([up, shortcut]))
        for i in range(1, convolutions + 1):
            x = _conv(multiple * b, f"conv{block}_{i}")(x)
        if block < 10:
            x = unet.batch_norm(f"conv{block}_norm", config.sides)(x)

    x = keras.layers.Conv2D(2, 1, name="conv_ab")(x)  # [B, H, W, 2]
    fake_color = keras.layers.Activation("tanh", dtype="float32", name="fake_color")(x)
    return unet.SizeStatisticsNetwork([gray, local, global_hint], fake_color, config.sides, name=name)


class GuidedGenerator(keras.Model):
    """gray [B, H, W, 1], or [gray, local_hints [B, H, W, 3], global_hint [B, G]] -> color [B, H, W, 2] float32.

    gray alone means no hints: zeros for both (the global hint's given flag 0), which is
    what training shows the network when a photo gets no hint. No weights of its own.
    """

    def __init__(self, network: keras.Model, name: str = "generator") -> None:
        super().__init__(name=name, dtype="float32")
        self.network = network
        self.built = True  # `network` is; the wrapper has nothing else to build

    def call(self, inputs: tf.Tensor | list[tf.Tensor], training: bool = False) -> tf.Tensor:
        if isinstance(inputs, (list, tuple)):
            gray, local, global_hint = inputs
        else:
            gray = inputs
            local, global_hint = hints.no_local_hints(gray), hints.no_global_hint(tf.shape(gray)[0])
        return self.network([gray, local, global_hint], training=training)

    def sample_colors(self, gray: tf.Tensor, real_color: tf.Tensor, points: int = 10) -> list[tf.Tensor]:
        """The training loop's sample grid columns: automatic, with `points` local hints of the truth
        (the same ones at every step), with the truth's global hint; each [B, H, W, 2]."""
        local = hints.sample_local_hints(real_color, tf.constant([0, 0], tf.int64), points=points)
        no_local, no_global = hints.no_local_hints(gray), hints.no_global_hint(tf.shape(gray)[0])
        return [self(gray), self([gray, local, no_global]), self([gray, no_local, hints.global_hint(real_color)])]


def build(config: GuidedConfig) -> dict[str, keras.Model]:
    """{"generator": GuidedGenerator, with `.network`: [gray, local_hints, global_hint] -> fake_color}."""
    return {"generator": GuidedGenerator(guided_network(config))}


def huber(real_color: tf.Tensor, fake_color: tf.Tensor, delta: float) -> tf.Tensor:
    """Mean smooth L1 of colour maps [B, H, W, 2] (model scaling), quadratic below `delta` Lab units,
    in model-scaling units (so that it reads as an L1 above delta)."""
    error = tf.abs(tf.cast(fake_color, tf.float32) - tf.cast(real_color, tf.float32))
    delta = delta / color.AB_SCALE  # Lab units -> model scaling
    return tf.reduce_mean(tf.where(error < delta, 0.5 * tf.square(error) / delta, error - 0.5 * delta))
