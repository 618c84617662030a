"""One training step per model, under the same names as `models.MODELS`.

`STEPS[name](model_config)` returns `step(networks, optimizers, batch) -> losses`:
networks and optimizers are the dicts the loop built (keyed by network name), batch is
the dict of preprocess/dataset.py (gray [B, H, W, 1], color [B, H, W, 2], both in about
[-1, 1]), and losses maps names such as "gen/total" to float32 scalars: means over this
replica's part of the batch, in model scaling (an ab error of 0.01 is 1.1 Lab units).

The loop runs a step inside `strategy.run`, compiled by tf.function unless --eager, and
owns everything else (logging, checkpoints, NaN guard). Steps write no summaries.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from models.config import ConfigError
from models.pix2pix import CGANConfig
from models.regression import RegressionConfig

Losses = dict[str, tf.Tensor]
Step = Callable[[dict[str, keras.Model], dict[str, keras.optimizers.Optimizer], dict[str, tf.Tensor]], Losses]


def binary_cross_entropy(target: float, logits: tf.Tensor) -> tf.Tensor:
    """Mean BCE of logits [B, h, w, 1] (float32) against a constant target in [0, 1]."""
    labels = tf.fill(tf.shape(logits), tf.constant(target, logits.dtype))
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))


def reconstruction_loss(real_color: tf.Tensor, fake_color: tf.Tensor, kind: str) -> tf.Tensor:
    """Mean L1 ("l1") or squared ("mse") error between colour maps [B, H, W, 2]."""
    error = fake_color - real_color
    return tf.reduce_mean(tf.abs(error) if kind == "l1" else tf.square(error))


def discriminator_losses(real_logits: tf.Tensor, fake_logits: tf.Tensor, label_smoothing: float) -> Losses:
    """D's BCE with one-sided smoothing: real pairs aim at `label_smoothing` (0.9), fakes at 0."""
    real = binary_cross_entropy(label_smoothing, real_logits)
    fake = binary_cross_entropy(0.0, fake_logits)
    # pix2pix halves D's objective so that D learns more slowly than G.
    return {"disc/total": 0.5 * (real + fake), "disc/real": real, "disc/fake": fake}


def _replica_share(loss: tf.Tensor) -> tf.Tensor:
    """`loss` divided by the replica count: Keras optimizers sum gradients over replicas."""
    return loss / tf.distribute.get_replica_context().num_replicas_in_sync


def _apply(optimizer: keras.optimizers.Optimizer, tape: tf.GradientTape, scaled_loss: tf.Tensor,
           network: keras.Model) -> None:  # fmt: skip
    """One optimizer update; `scaled_loss` must be recorded on `tape` (scale_loss inside the tape)."""
    gradients = tape.gradient(scaled_loss, network.trainable_variables)
    optimizer.apply_gradients(zip(gradients, network.trainable_variables))


def _discriminator_update(discriminator: keras.Model, optimizer: keras.optimizers.Optimizer, gray: tf.Tensor,
                          real_color: tf.Tensor, fake_color: tf.Tensor, label_smoothing: float) -> Losses:  # fmt: skip
    """One D update on real and fake (gray, colour) pairs; its losses."""
    with tf.GradientTape() as tape:
        real_logits = discriminator([gray, real_color], training=True)
        fake_logits = discriminator([gray, fake_color], training=True)
        losses = discriminator_losses(real_logits, fake_logits, label_smoothing)
        scaled = optimizer.scale_loss(_replica_share(losses["disc/total"]))
    _apply(optimizer, tape, scaled, discriminator)
    return losses


def cgan_step(config: CGANConfig) -> Step:
    """pix2pix: one D update, then `g_steps_per_d_step` G updates against the updated D."""

    def step(networks, optimizers, batch):
        generator, discriminator = networks["generator"], networks["discriminator"]
        gen_optimizer, disc_optimizer = optimizers["generator"], optimizers["discriminator"]
        gray, real_color = batch["gray"], batch["color"]

        for g_step in range(config.g_steps_per_d_step):
            with tf.GradientTape() as gen_tape:
                fake_color = generator(gray, training=True)
                if g_step == 0:
                    # As in pix2pix, the first generator forward also feeds the D update,
                    # which saves one forward; G's tape must not record D's update.
                    with gen_tape.stop_recording():
                        disc = _discriminator_update(discriminator, disc_optimizer, gray, real_color,
                                                     tf.stop_gradient(fake_color), config.label_smoothing)  # fmt: skip
                fake_logits = discriminator([gray, fake_color], training=True)
                adversarial = binary_cross_entropy(1.0, fake_logits)
                reconstruction = reconstruction_loss(real_color, fake_color, config.reconstruction)
                total = adversarial + config.lambda_l1 * reconstruction
                gen_scaled = gen_optimizer.scale_loss(_replica_share(total))
            _apply(gen_optimizer, gen_tape, gen_scaled, generator)

        # The generator's losses are those of its last update.
        gen = {"gen/total": total, "gen/adversarial": adversarial, f"gen/{config.reconstruction}": reconstruction}
        return {**gen, **disc}

    return step


def regression_step(config: RegressionConfig) -> Step:
    """Seed 001's CNN baseline: the generator alone on L1 or MSE."""

    def step(networks, optimizers, batch):
        generator, optimizer = networks["generator"], optimizers["generator"]
        with tf.GradientTape() as tape:
            fake_color = generator(batch["gray"], training=True)
            loss = reconstruction_loss(batch["color"], fake_color, config.reconstruction)
            scaled = optimizer.scale_loss(_replica_share(loss))
        _apply(optimizer, tape, scaled, generator)
        return {f"gen/{config.reconstruction}": loss}

    return step


STEPS: dict[str, Callable[..., Step]] = {
    "cgan": cgan_step,
    "regression": regression_step,
}


def get(name: str) -> Callable[..., Step]:
    """The step factory of model `name`; an unknown name lists the valid ones."""
    if name not in STEPS:
        raise ConfigError(f"no training step for model {name!r}; valid: {', '.join(STEPS)}")
    return STEPS[name]
