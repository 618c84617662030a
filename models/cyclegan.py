"""`cyclegan`: unpaired colorization with CycleGAN (Zhu et al., ICCV 2017).

Two generators map between the domains and each is trained to undo the other:
    generator              gray L [B, H, W, 1] -> colour ab [B, H, W, 2]   (what `make export` freezes)
    to_gray                colour Lab [B, H, W, 3] = (L, ab) -> gray [B, H, W, 1]
    discriminator_color    Lab image (L, ab) -> patch logits: real colour photo or coloured gray photo?
    discriminator_gray     gray image -> patch logits: real gray photo or gray made from colour?
All values in model scaling (preprocess/color.py): L / 50 - 1 and ab / 110, in [-1, 1].

A colour image is the full Lab image, not its ab alone: a colorization is the gray input
with the generated ab beside it, so discriminator_color judges (L, ab) pairs and can tell
colours that do not fit their lightness; pix2pix's PatchGAN (models/pix2pix.py) takes
exactly such a pair. The gray domain need not be the L of colour photos: with real
black-and-white photos, to_gray learns what film and scanner did to them, which is why
CycleGAN can learn from photos that never had colour.

Identity loss. Zhu et al. add ||G(y) - y|| for y already in G's target domain, weighted
0.5 x lambda_cycle, where the two domains share one representation (photos <-> paintings,
both RGB). Here they do not: a gray image embeds in Lab exactly as (L, 0, 0), so to_gray's
identity is well defined (a gray photo given as a colourless Lab image must come back
unchanged), but a colour photo in to_color's 1-channel input is only its L, and asking
to_color(L) to return that photo's ab would be paired supervision from the colour photos'
own lightness: the synthetic gray that unpaired training exists to avoid. So the identity
term (`lambda_identity`) applies to to_gray only.

The history pools (Shrivastava et al. 2017, as Zhu et al. use them): each discriminator
learns from a pool of the last `pool_size` (50) generated images rather than only the
newest, which damps the oscillation of G and D chasing each other. `HistoryPool` keeps the
images and its random number generator in tf.Variables, so a checkpoint holds them and a
resumed run draws the same images as one that never stopped. The pools are not weights of
any network (export must not carry them, and a network's weights have fixed shapes while
the pool takes the shape of the first training batch); the step owns them and exposes them
as `step.state`, which train/loop.py adds to its checkpoint beside the networks.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import keras
import tensorflow as tf

from models import pix2pix, unet
from models.config import check


@dataclasses.dataclass(frozen=True)
class CycleGANConfig(unet.UNetConfig):
    """Generators, discriminators, losses and pools; the defaults are Zhu et al.'s at 256 px.

    The U-Net fields (depth, base_width, ...) apply with `generator="unet"` only.
    """

    generator: Literal["resnet", "unet"] = "resnet"  # resnet: Johnson et al. (2016), as Zhu et al.
    resnet_blocks: int = 9  # Zhu et al.: 9 at 256 px, 6 at 128 px and below
    resnet_width: int = 64  # channels of the first block; 2x and 4x after the two downsamplings
    disc_layers: int = 3  # stride-2 blocks of each PatchGAN: 3 -> 70x70 receptive field, 2 -> 34x34
    disc_base_width: int = 64
    disc_norm: Literal["batch", "instance"] = "instance"  # Zhu et al. use instance norm in D too
    lambda_cycle: float = 10.0  # weight of both cycle losses against the least-squares GAN losses
    lambda_identity: float = 0.5  # to_gray's identity loss, relative to lambda_cycle (see module docstring)
    pool_size: int = 50  # generated images each discriminator draws from; 0: only the newest
    unpaired: bool = False  # gray and colour from disjoint halves of the training photos (preprocess/dataset.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.resnet_blocks >= 0, f"--resnet_blocks={self.resnet_blocks}: must be >= 0")
        check(self.resnet_width >= 1, f"--resnet_width={self.resnet_width}: must be at least 1")
        check(self.disc_layers >= 1, f"--disc_layers={self.disc_layers}: must be at least 1")
        check(self.disc_base_width >= 1, f"--disc_base_width={self.disc_base_width}: must be at least 1")
        check(self.lambda_cycle >= 0.0, f"--lambda_cycle={self.lambda_cycle}: must be >= 0")
        check(self.lambda_identity >= 0.0, f"--lambda_identity={self.lambda_identity}: must be >= 0")
        check(self.pool_size >= 0, f"--pool_size={self.pool_size}: must be >= 0")

    @property
    def stride(self) -> int:
        """Image sides must be multiples of this: the ResNet generator downsamples twice."""
        return 4 if self.generator == "resnet" else 2**self.depth


# Zhu et al.: 9 residual blocks at 256 px, 6 at 128 px. The small tiles get 6 narrower
# blocks and a 34 px PatchGAN (70 px would see a whole 32 or 64 px tile as one patch);
# the U-Net option follows unet.PRESETS (depth = log2 of the tile side).
PRESETS: dict[int, dict[str, object]] = {
    32: {"resnet_blocks": 6, "resnet_width": 32, "disc_layers": 2, "depth": 5, "dropout_blocks": 2},
    64: {"resnet_blocks": 6, "resnet_width": 32, "disc_layers": 2, "depth": 6, "dropout_blocks": 2},
    128: {"resnet_blocks": 6, "depth": 7},
    256: {},
}


class ReflectionPadding2D(keras.layers.Layer):
    """[B, H, W, C] -> [B, H + 2p, W + 2p, C], mirrored at the borders (Zhu et al.'s padding:
    zeros would give the 7x7 convolutions a dark frame to learn around)."""

    def __init__(self, padding: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.padding = padding

    def call(self, x):
        p = self.padding
        return keras.ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")

    def get_config(self) -> dict:
        return {**super().get_config(), "padding": self.padding}


def instance_norm(name: str) -> keras.layers.GroupNormalization:
    """One group per channel: instance norm, which does not mix the examples of a batch."""
    return keras.layers.GroupNormalization(groups=-1, epsilon=1e-5, name=name)


def resnet_generator(config: CycleGANConfig, channels: tuple[int, int], name: str) -> keras.Model:
    """[B, H, W, channels[0]] in [-1, 1] -> [B, H, W, channels[1]] float32 in (-1, 1); H, W multiples of 4.

    Johnson et al. (2016) as in Zhu et al.: c7s1-w, d2w, d4w, `resnet_blocks` x R4w, u2w,
    uw, c7s1-out. Convolutions followed by instance norm have no bias: the norm subtracts it.
    """
    init = keras.initializers.RandomNormal(stddev=unet.INITIALIZER_STDDEV)
    width = config.resnet_width

    def conv(x, filters: int, kernel: int, layer: str, strides: int = 1, padding: str = "valid"):
        return unet.convolution_layers().Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False,
                                                kernel_initializer=init, name=f"{layer}_conv")(x)  # fmt: skip

    inputs = keras.Input([None, None, channels[0]], name="gray" if channels[0] == 1 else "color")  # [B, H, W, c_in]
    x = ReflectionPadding2D(3, name="in_pad")(inputs)  # [B, H + 6, W + 6, c_in]
    x = conv(x, width, 7, "in")  # [B, H, W, w]
    x = keras.layers.ReLU(name="in_act")(instance_norm("in_norm")(x))
    for i in (1, 2):
        # [B, H / 2**i, W / 2**i, w * 2**i]
        x = conv(x, width * 2**i, 3, f"down{i}", strides=2, padding="same")
        x = keras.layers.ReLU(name=f"down{i}_act")(instance_norm(f"down{i}_norm")(x))
    for i in range(1, config.resnet_blocks + 1):
        # [B, H / 4, W / 4, 4w] throughout
        y = ReflectionPadding2D(1, name=f"res{i}_pad1")(x)
        y = instance_norm(f"res{i}_norm1")(conv(y, 4 * width, 3, f"res{i}_1"))
        y = keras.layers.ReLU(name=f"res{i}_act")(y)
        y = ReflectionPadding2D(1, name=f"res{i}_pad2")(y)
        y = instance_norm(f"res{i}_norm2")(conv(y, 4 * width, 3, f"res{i}_2"))
        x = keras.layers.Add(name=f"res{i}_add")([x, y])
    for i in (2, 1):
        # [B, H / 2**(i-1), W / 2**(i-1), w * 2**(i-1)]
        x = keras.layers.Conv2DTranspose(width * 2 ** (i - 1), 3, strides=2, padding="same", use_bias=False,
                                         kernel_initializer=init, name=f"up{i}_conv")(x)  # fmt: skip
        x = keras.layers.ReLU(name=f"up{i}_act")(instance_norm(f"up{i}_norm")(x))
    x = ReflectionPadding2D(3, name="out_pad")(x)  # [B, H + 6, W + 6, w]
    x = keras.layers.Conv2D(channels[1], 7, kernel_initializer=init, name="out_conv")(x)  # [B, H, W, c_out]
    outputs = keras.layers.Activation("tanh", dtype="float32", name="fake_color" if channels[1] == 2 else "fake_gray")(x)
    return keras.Model(inputs, outputs, name=name)


def build(config: CycleGANConfig) -> dict[str, keras.Model]:
    """{"generator": gray -> ab, "to_gray": Lab -> gray, "discriminator_color": (L, ab) -> logits,
    "discriminator_gray": gray -> logits}; shapes in the module docstring."""
    if config.generator == "resnet":
        to_color = resnet_generator(config, (1, 2), "generator")
        to_gray = resnet_generator(config, (3, 1), "to_gray")
    else:
        to_color = unet.unet_generator(config)
        to_gray = unet.unet_generator(config, name="to_gray", channels=(3, 1))
    return {
        "generator": to_color,
        "to_gray": to_gray,
        "discriminator_color": pix2pix.patchgan_discriminator(config, name="discriminator_color"),
        "discriminator_gray": pix2pix.patchgan_discriminator(config, name="discriminator_gray", inputs=("gray",)),
    }


class HistoryPool(tf.Module):
    """The last `size` generated images a discriminator learns from (Shrivastava et al. 2017).

    `pool(images)` takes generated images [B, H, W, C] and returns as many: while the pool
    fills, each image is stored and returned itself; once full, each is returned with
    probability 1/2, and otherwise a random stored image is returned and replaced by it
    (Zhu et al.'s ImagePool, image by image in batch order). Images, fill count and the
    random generator are variables, so a checkpoint of the pool resumes it exactly. The
    images variable takes its [size, H, W, C] shape from the first batch, and the pool
    starts afresh when images of another size come.
    """

    def __init__(self, size: int, channels: int, seed: int, name: str | None = None) -> None:
        super().__init__(name=name)
        self.size = size
        self.images = tf.Variable(tf.zeros([0, 0, 0, channels]), trainable=False, name="images",
                                  shape=tf.TensorShape([None, None, None, channels]))  # fmt: skip
        self.count = tf.Variable(0, dtype=tf.int32, trainable=False, name="count")
        self.rng = tf.random.Generator.from_seed(seed)

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        images = tf.convert_to_tensor(images, tf.float32)
        if self.size == 0:
            return images
        batch = tf.shape(images)[0]
        # Drawn for every image whether used or not, so the generator's state depends on the step alone.
        keep_new = self.rng.uniform([batch]) >= 0.5  # [B]
        slots = self.rng.uniform([batch], 0, self.size, dtype=tf.int32)  # [B]

        # A pool of other-sized images (a run resumed with another --crop_size) starts afresh,
        # as an empty one does: from zeros of the batch's image shape.
        same_size = tf.reduce_all(tf.shape(self.images)[1:] == tf.shape(images)[1:])
        count = tf.where(same_size, self.count, 0)
        empty = lambda: tf.zeros(tf.concat([[self.size], tf.shape(images)[1:]], 0))  # noqa: E731
        pool = tf.cond(count > 0, self.images.read_value, empty)  # [size, H, W, C]

        def body(i, pool, count, returned):
            filling = count < self.size
            take_stored = tf.logical_and(tf.logical_not(filling), tf.logical_not(keep_new[i]))
            slot = tf.where(filling, count, slots[i])
            stored = pool[slot]  # [H, W, C]
            # a filling or swapping image takes the slot; an image returned as itself leaves it alone
            pool = tf.tensor_scatter_nd_update(pool, [[slot]], tf.where(tf.logical_or(filling, take_stored),
                                                                        images[i], stored)[None])  # fmt: skip
            returned = returned.write(i, tf.where(take_stored, stored, images[i]))
            return i + 1, pool, count + tf.cast(filling, tf.int32), returned

        # The loop works on a copy; the variables take the result once, after it.
        _, pool, count, returned = tf.while_loop(
            lambda i, *_: i < batch, body, (tf.constant(0), pool, count,
                                            tf.TensorArray(tf.float32, size=batch)))  # fmt: skip
        self.images.assign(pool)
        self.count.assign(count)
        return tf.reshape(returned.stack(), tf.shape(images))
