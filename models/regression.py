"""`regression`: the pix2pix U-Net trained on L1 or L2 alone: the regression
baseline (Isola et al. 2017's "L1 only"; Iizuka et al. 2016 train on MSE).

No discriminator: each pixel regresses to the mean of its plausible colours, which is why
the results look desaturated next to `cgan`'s; that gap is what this baseline measures.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import keras

from models import unet


@dataclasses.dataclass(frozen=True)
class RegressionConfig(unet.StatisticsSides, unet.UNetConfig):
    """Generator (see UNetConfig) and its loss."""

    reconstruction: Literal["l1", "mse"] = "l1"


PRESETS = unet.PRESETS


def build(config: RegressionConfig) -> dict[str, keras.Model]:
    """{"generator": gray -> fake_color}."""
    return {"generator": unet.unet_generator(config)}
