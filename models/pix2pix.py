"""`cgan`: pix2pix (Isola et al. 2017) for colorization, a U-Net generator against a PatchGAN.

The discriminator judges overlapping patches of (gray, colour) pairs, so it asks "is this
colour plausible for this gray here" rather than "is this a colour photo". Training
tricks live in the config: L1 weighted by 100 (Isola et al. 2017; or MSE, Iizuka et al.
2016's loss), one-sided label smoothing 0.9 (Salimans et al. 2016, "Improved techniques
for training GANs"), G trained twice per D step (Nazeri et al. 2018).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import keras

from models import unet
from models.config import check


@dataclasses.dataclass(frozen=True)
class CGANConfig(unet.StatisticsSides, unet.UNetConfig):
    """Generator (see UNetConfig), discriminator and loss weights; defaults are pix2pix at 256 px."""

    disc_layers: int = 3  # stride-2 blocks: 3 -> 70x70 receptive field (pix2pix), 2 -> 34x34, 1 -> 16x16
    disc_base_width: int = 64
    disc_norm: Literal["batch", "instance"] = "batch"
    lambda_l1: float = 100.0  # weight of the reconstruction term against the adversarial one
    reconstruction: Literal["l1", "mse"] = "l1"  # mse: the squared error Iizuka et al. (2016) train on
    label_smoothing: float = 0.9  # target for real pairs in the D loss; fakes stay 0 (one-sided)
    g_steps_per_d_step: int = 1  # Nazeri et al. (2018) used 2 when D won too early

    def __post_init__(self) -> None:
        super().__post_init__()
        check(1 <= self.disc_layers <= self.depth,
              f"--disc_layers={self.disc_layers}: must be in [1, depth={self.depth}]")  # fmt: skip
        check(self.disc_base_width >= 1, f"--disc_base_width={self.disc_base_width}: must be at least 1")
        check(self.lambda_l1 >= 0.0, f"--lambda_l1={self.lambda_l1}: must be >= 0")
        check(0.0 < self.label_smoothing <= 1.0, f"--label_smoothing={self.label_smoothing}: must be in (0, 1]")
        check(self.g_steps_per_d_step >= 1, f"--g_steps_per_d_step={self.g_steps_per_d_step}: must be >= 1")


PRESETS: dict[int, dict[str, object]] = {
    32: {**unet.PRESETS[32], "disc_layers": 2},
    256: {**unet.PRESETS[256]},
}


def patchgan_discriminator(config: CGANConfig, name: str = "discriminator",
                           inputs: tuple[str, ...] = ("gray", "color")) -> keras.Model:  # fmt: skip
    """[gray [B, H, W, 1], color [B, H, W, 2]] -> logits [B, H / 2**disc_layers, W / 2**disc_layers, 1].

    One float32 logit per patch (real > 0). With 4x4 kernels the receptive field is 70 px
    for disc_layers=3, 34 for 2, 16 for 1. `inputs=("gray",)` judges a gray image alone
    (cyclegan's discriminator_gray); any config with the disc_* fields and kernel_size serves.
    """
    init = keras.initializers.RandomNormal(stddev=unet.INITIALIZER_STDDEV)

    def norm(layer_name: str) -> keras.layers.Layer:
        if config.disc_norm == "instance":
            # One group per channel is instance norm; it does not mix the examples of a batch.
            return keras.layers.GroupNormalization(groups=-1, name=layer_name)
        # One set of moving statistics whatever --statistics_sides: the discriminator runs in
        # training mode only (train/steps.py), on each batch's own moments, and never reads them.
        return unet.batch_norm(layer_name)

    channels = {"gray": 1, "color": 2}
    images = [keras.Input([None, None, channels[key]], name=key) for key in inputs]  # [B, H, W, 1], [B, H, W, 2]
    x = keras.layers.Concatenate(name="pair")(images) if len(images) > 1 else images[0]  # [B, H, W, 3] (or 1)
    for i in range(config.disc_layers + 1):
        # i < disc_layers: [B, H / 2**(i+1), W / 2**(i+1), width]; the last block keeps the size
        strides = 2 if i < config.disc_layers else 1
        width = min(config.disc_base_width * 2**i, 8 * config.disc_base_width)
        x = unet.Conv2D(width, config.kernel_size, strides=strides, padding="same", use_bias=i == 0,
                                kernel_initializer=init, name=f"block{i + 1}_conv")(x)  # fmt: skip
        if i > 0:  # pix2pix: no norm on the first block
            x = norm(f"block{i + 1}_norm")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"block{i + 1}_act")(x)
    # [B, H / 2**disc_layers, W / 2**disc_layers, 1]
    x = unet.Conv2D(1, config.kernel_size, padding="same", kernel_initializer=init, name="logits_conv")(x)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(images if len(images) > 1 else images[0], logits, name=name)


def build(config: CGANConfig) -> dict[str, keras.Model]:
    """{"generator": gray -> fake_color, "discriminator": (gray, color) -> patch logits}."""
    return {"generator": unet.unet_generator(config), "discriminator": patchgan_discriminator(config)}
