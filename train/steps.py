"""One training step per model, under the same names as `models.MODELS`.

`STEPS[name](model_config)` returns `step(networks, optimizers, batch) -> losses`:
networks and optimizers are the dicts the loop built (keyed by network name), batch is
the dict of preprocess/dataset.py (gray [B, H, W, 1], color [B, H, W, 2], both in about
[-1, 1]), and losses maps names such as "gen/total" to float32 scalars: means over this
replica's part of the batch, in model scaling (an ab error of 0.01 is 1.1 Lab units).

A factory that needs to know the training data beyond its batches takes `ab_prior=`
(zhang) or `label_names=` (iizuka); `make` gives each what it takes, from the training
data's `preprocess.dataset.Shards`.

The loop runs a step inside `strategy.run`, compiled by tf.function unless --eager, and
owns everything else (logging, checkpoints, NaN guard). Steps write no summaries. A step
that keeps state of its own between calls (cyclegan's history pools) exposes it as
`step.state`, a dict of trackables that the loop checkpoints with the networks.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from models import cyclegan, guided, hints, iizuka, zhang
from models.config import ConfigError
from models.cyclegan import CycleGANConfig
from models.guided import GuidedConfig
from models.iizuka import IizukaConfig
from models.pix2pix import CGANConfig
from models.regression import RegressionConfig
from models.zhang import ZhangConfig
from preprocess import color

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
    """The regression baseline (Isola et al. 2017's "L1 only"): the generator alone on L1 or MSE."""

    def step(networks, optimizers, batch):
        generator, optimizer = networks["generator"], optimizers["generator"]
        with tf.GradientTape() as tape:
            fake_color = generator(batch["gray"], training=True)
            loss = reconstruction_loss(batch["color"], fake_color, config.reconstruction)
            scaled = optimizer.scale_loss(_replica_share(loss))
        _apply(optimizer, tape, scaled, generator)
        return {f"gen/{config.reconstruction}": loss}

    return step


def weighted_cross_entropy(logits: tf.Tensor, targets: tf.Tensor, weights: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(rebalanced, plain) mean cross-entropy of logits [B, h, w, Q] (float32) against soft targets [B, h, w, Q].

    Each pixel's term is weighted by weights[Q] at the argmax of its target (its nearest bin).
    """
    pixel = -tf.reduce_sum(targets * tf.nn.log_softmax(logits, axis=-1), axis=-1)  # [B, h, w]
    pixel_weight = tf.gather(weights, tf.argmax(targets, axis=-1))  # [B, h, w]
    return tf.reduce_mean(pixel_weight * pixel), tf.reduce_mean(pixel)


def zhang_step(config: ZhangConfig, ab_prior: np.ndarray | None = None) -> Step:
    """Zhang et al.: rebalanced cross-entropy of the logits against soft-encoded colour.

    The rebalancing weights come from the training data's ab prior (pixel counts [Q] over
    color.ab_bins(); see models.zhang.rebalance_weights); without one every pixel counts the same.
    """
    if ab_prior is None:
        print("zhang: the shards' manifest has no ab prior; training without class rebalancing")
        weights = np.ones(len(color.ab_bins()))
    else:
        weights = zhang.rebalance_weights(ab_prior, config.rebalance_lambda, config.prior_sigma)
    weights = tf.constant(weights, tf.float32)  # [Q]
    log_decode_weights = tf.constant(zhang.decoding_log_weights(ab_prior, config.prior_sigma))  # [Q]

    def step(networks, optimizers, batch):
        generator, optimizer = networks["generator"], optimizers["generator"]
        # what --decode_rebalance scales, kept in the generator for evaluation and export
        generator.log_rebalance.assign(log_decode_weights)
        with tf.GradientTape() as tape:
            logits = generator.network(batch["gray"], training=True)  # [B, h, w, Q] float32
            targets = zhang.soft_targets(batch["color"], tf.shape(logits)[1:3], config)  # [B, h, w, Q]
            rebalanced, plain = weighted_cross_entropy(logits, targets, weights)
            scaled = optimizer.scale_loss(_replica_share(rebalanced))
        _apply(optimizer, tape, scaled, generator)
        return {"gen/total": rebalanced, "gen/ce": plain}

    return step


def class_cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean cross-entropy of class logits [B, C] (float32) over the examples with a label (>= 0; -1: none).

    0 when no example of the batch has one.
    """
    labelled = tf.cast(labels >= 0, tf.float32)  # [B]
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.maximum(labels, 0), logits=logits)
    return tf.reduce_sum(per_example * labelled) / tf.maximum(tf.reduce_sum(labelled), 1.0)


def iizuka_step(config: IizukaConfig, label_names: tuple[str, ...] | None = None) -> Step:
    """Iizuka et al.: MSE of the colour plus lambda_class times the class cross-entropy.

    The paper's MSE is on ab scaled to the sigmoid's [0, 1], a quarter of the MSE in model
    scaling reported as "gen/mse"; lambda_class (alpha = 1/300) is relative to the former:
        gen/total = gen/mse / 4 + lambda_class * gen/class
    Without labels in the data (or with --classes=0) the class term is left out.
    """
    labels = len(label_names or ())
    if labels > config.classes > 0:
        raise ConfigError(f"--classes={config.classes}: the shards have {labels} classes")
    with_classes = labels > 0 and config.classes > 0
    if not labels:
        print("iizuka: the shards carry no class labels; training without the classification loss")
    elif not config.classes:
        print(f"iizuka: --classes=0; training without the classification loss on the shards' {labels} classes")
    views: dict[keras.Model, keras.Model] = {}  # generator -> its view with the global features, made once

    def step(networks, optimizers, batch):
        generator, gen_optimizer = networks["generator"], optimizers["generator"]
        if not with_classes:
            with tf.GradientTape() as tape:
                fake_color = generator(batch["gray"], training=True)
                mse = reconstruction_loss(batch["color"], fake_color, "mse")
                total = 0.25 * mse
                scaled = gen_optimizer.scale_loss(_replica_share(total))
            _apply(gen_optimizer, tape, scaled, generator)
            return {"gen/total": total, "gen/mse": mse}

        classifier, class_optimizer = networks["classifier"], optimizers["classifier"]
        if generator not in views:
            views[generator] = iizuka.with_global_features(generator)
        # One loss, two optimizers (each with its own loss scale under mixed_float16): a persistent tape.
        with tf.GradientTape(persistent=True) as tape:
            fake_color, features = views[generator](batch["gray"], training=True)
            class_logits = classifier(features, training=True)  # [B, classes] float32
            mse = reconstruction_loss(batch["color"], fake_color, "mse")
            class_loss = class_cross_entropy(batch["label"], class_logits)
            total = 0.25 * mse + config.lambda_class * class_loss
            gen_scaled = gen_optimizer.scale_loss(_replica_share(total))
            class_scaled = class_optimizer.scale_loss(_replica_share(total))
        _apply(gen_optimizer, tape, gen_scaled, generator)
        _apply(class_optimizer, tape, class_scaled, classifier)
        del tape
        return {"gen/total": total, "gen/mse": mse, "gen/class": class_loss}

    return step


def least_squares(logits: tf.Tensor, target: float) -> tf.Tensor:
    """LSGAN's loss (Mao et al. 2017, as Zhu et al.): mean (logits - target)^2 of logits [B, h, w, 1]."""
    return tf.reduce_mean(tf.square(logits - target))


def cyclegan_generator_losses(networks: dict[str, keras.Model], gray: tf.Tensor, color: tf.Tensor,
                              config: CycleGANConfig) -> tuple[Losses, tf.Tensor, tf.Tensor]:  # fmt: skip
    """Both generators' losses (gen/... of cyclegan_step) on gray [B, H, W, 1] and Lab colour [B, H, W, 3].

    Also returns the fakes the discriminators learn from: fake_color, the colorized gray as
    Lab [B, H, W, 3], and fake_gray [B, H, W, 1], the colour photos made gray.
    """
    to_color, to_gray = networks["generator"], networks["to_gray"]
    fake_ab = to_color(gray, training=True)  # [B, H, W, 2]
    fake_color = tf.concat([gray, fake_ab], -1)  # [B, H, W, 3]: a colorization keeps its input's L
    cycled_gray = to_gray(fake_color, training=True)  # [B, H, W, 1]
    fake_gray = to_gray(color, training=True)  # [B, H, W, 1]
    cycled_color = tf.concat([fake_gray, to_color(fake_gray, training=True)], -1)  # [B, H, W, 3]
    # a gray photo is the colourless Lab image (L, 0, 0): to_gray must leave it as it is
    identity_gray = to_gray(tf.concat([gray, tf.zeros_like(fake_ab)], -1), training=True)  # [B, H, W, 1]

    adversarial_color = least_squares(networks["discriminator_color"]([gray, fake_ab], training=True), 1.0)
    adversarial_gray = least_squares(networks["discriminator_gray"](fake_gray, training=True), 1.0)
    cycle_gray = tf.reduce_mean(tf.abs(cycled_gray - gray))
    cycle_color = tf.reduce_mean(tf.abs(cycled_color - color))
    identity = tf.reduce_mean(tf.abs(identity_gray - gray))
    total = (adversarial_color + adversarial_gray + config.lambda_cycle * (cycle_gray + cycle_color)
             + config.lambda_identity * config.lambda_cycle * identity)  # fmt: skip
    losses = {"gen/total": total, "gen/adversarial_color": adversarial_color, "gen/adversarial_gray": adversarial_gray,
              "gen/cycle_gray": cycle_gray, "gen/cycle_color": cycle_color, "gen/identity": identity}  # fmt: skip
    return losses, fake_color, fake_gray


def cyclegan_step(config: CycleGANConfig) -> Step:
    """CycleGAN (Zhu et al. 2017): both generators on one loss, then both discriminators on pooled fakes.

    The batch's "gray" is the gray domain; the colour domain is the Lab image ("color_gray",
    "color"), where an unpaired batch (--unpaired) carries other photos' own L as
    "color_gray" and a paired one has none (its colour photos' L is "gray"). Losses:
        gen/total = gen/adversarial_color + gen/adversarial_gray
                    + lambda_cycle * (gen/cycle_gray + gen/cycle_color)
                    + lambda_identity * lambda_cycle * gen/identity
        disc/total = disc/color + disc/gray, each 0.5 * (real term + fake term) as Zhu et al.
    The history pools are `step.state` (see models/cyclegan.py), one per run, so the loop
    refuses more than one replica; their generators are seeded from Python's `random`,
    which --seed sets (keras.utils.set_random_seed).
    """
    pools = {
        "color": cyclegan.HistoryPool(config.pool_size, 3, random.getrandbits(32), name="pool_color"),
        "gray": cyclegan.HistoryPool(config.pool_size, 1, random.getrandbits(32), name="pool_gray"),
    }

    def step(networks, optimizers, batch):
        gray = batch["gray"]  # [B, H, W, 1] the gray domain
        color = tf.concat([batch.get("color_gray", gray), batch["color"]], -1)  # [B, H, W, 3] the colour domain, Lab

        with tf.GradientTape(persistent=True) as tape:
            gen, fake_color, fake_gray = cyclegan_generator_losses(networks, gray, color, config)
            total = gen["gen/total"]
            # one loss, two optimizers (each with its own loss scale under mixed_float16)
            scaled = {name: optimizers[name].scale_loss(_replica_share(total)) for name in ("generator", "to_gray")}
        for name in ("generator", "to_gray"):
            _apply(optimizers[name], tape, scaled[name], networks[name])
        del tape

        disc = {}
        pooled = {"color": pools["color"](tf.stop_gradient(fake_color)), "gray": pools["gray"](tf.stop_gradient(fake_gray))}
        reals = {"color": [color[..., :1], color[..., 1:]], "gray": gray}
        fakes = {"color": [pooled["color"][..., :1], pooled["color"][..., 1:]], "gray": pooled["gray"]}
        for domain in ("color", "gray"):
            name = f"discriminator_{domain}"
            discriminator, optimizer = networks[name], optimizers[name]
            with tf.GradientTape() as tape:
                real = least_squares(discriminator(reals[domain], training=True), 1.0)
                fake = least_squares(discriminator(fakes[domain], training=True), 0.0)
                disc[domain] = 0.5 * (real + fake)  # Zhu et al. halve D's objective to slow D against G
                scaled_loss = optimizer.scale_loss(_replica_share(disc[domain]))
            _apply(optimizer, tape, scaled_loss, discriminator)

        return {**gen, "disc/total": disc["color"] + disc["gray"], "disc/color": disc["color"], "disc/gray": disc["gray"]}

    step.state = {f"pool_{domain}": pool for domain, pool in pools.items()}
    return step


def guided_step(config: GuidedConfig) -> Step:
    """Zhang et al. 2017: smooth L1 of the colour given hints sampled from the batch's own truth.

    Each photo gets local hints (a geometric number of patches of its true mean colour,
    models.hints.sample_local_hints) and, with probability global_hint_probability, its
    own global hint; the rest get none. The hints' random generator is `step.state`, so a
    resumed run samples the hints an unbroken one would; it is seeded from Python's
    `random`, which --seed sets (keras.utils.set_random_seed).
        gen/total = gen/huber (smooth L1 on ab in model scaling, quadratic below huber_delta Lab units)
    """
    rng = tf.random.Generator.from_seed(random.getrandbits(32))

    def step(networks, optimizers, batch):
        generator, optimizer = networks["generator"], optimizers["generator"]
        gray, real_color = batch["gray"], batch["color"]
        local = hints.sample_local_hints(real_color, rng, point_probability=config.point_probability,
                                         max_points=config.max_points)  # fmt: skip
        global_hint = hints.sample_global_hint(real_color, rng, config.global_hint_probability)
        with tf.GradientTape() as tape:
            fake_color = generator([gray, local, global_hint], training=True)
            loss = guided.huber(real_color, fake_color, config.huber_delta)
            scaled = optimizer.scale_loss(_replica_share(loss))
        _apply(optimizer, tape, scaled, generator)
        return {"gen/total": loss, "gen/hint_pixels": tf.reduce_mean(tf.reduce_sum(local[..., 2], [1, 2]))}

    step.state = {"hint_rng": rng}
    return step


STEPS: dict[str, Callable[..., Step]] = {
    "cgan": cgan_step,
    "regression": regression_step,
    "zhang": zhang_step,
    "iizuka": iizuka_step,
    "cyclegan": cyclegan_step,
    "guided": guided_step,
}


def get(name: str) -> Callable[..., Step]:
    """The step factory of model `name`; an unknown name lists the valid ones."""
    if name not in STEPS:
        raise ConfigError(f"no training step for model {name!r}; valid: {', '.join(STEPS)}")
    return STEPS[name]


# What a step factory may take from the training data: attributes of preprocess.dataset.Shards.
DATA_FACTS = ("ab_prior", "label_names")


def make(name: str, config, shards=None) -> Step:
    """The step of model `name`. `shards` (a preprocess.dataset.Shards, or anything with its
    ab_prior and label_names) gives the factories that take them those facts; None: unknown."""
    factory = get(name)
    wanted = [key for key in inspect.signature(factory).parameters if key in DATA_FACTS]
    return factory(config, **{key: getattr(shards, key, None) for key in wanted})
