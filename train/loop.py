"""The training loop: models and optimizers under a tf.distribute strategy, the compiled
step, and the run folder (config, checkpoints, resume, logs, samples, NaN guard).

    RUN/config.json      model name, model config, training config (models.write_run_config)
    RUN/ckpt/            the last `keep_checkpoints` checkpoints, named by step
    RUN/best/            the checkpoint with the best --best_by validation metric, and best.json
    RUN/logs/, RUN/metrics.jsonl, RUN/loss_curves.png, RUN/samples/   (train/summaries.py)

Resume is exact: a checkpoint holds the step, weights, optimizer slots, dropout RNG state
and learning-rate state, and the batches of step s depend on s alone (epoch s //
steps_per_epoch is read with seed + epoch, and the batches already used are skipped).
With --deterministic a resumed run is bit-identical to one that never stopped. Ctrl-C or
SIGTERM (what a preempted cloud VM gets) stops training after the current step with a
checkpoint of that step, so nothing since the last scheduled checkpoint is lost; in a
cluster (--strategy=multi_worker, train/workers.py) a signal to any worker stops every
worker after the same step.

Validation metrics, means over the validation images (the real RGB image is rebuilt from
its L and ab, so only colour counts):
    val/l1                  |fake_color - real_color| in model scaling (as the generator's L1
                            loss; times 110 for Lab units)
    val/psnr                PSNR in dB of the RGB images
    val/auc_rebalanced      Zhang et al.'s (2016) class-rebalanced AuC of the ab error, in [0, 1]:
                            each pixel weighted by 1 / the training prior of its true colour
    val/colorfulness        Hasler and Suesstrunk (2003) of the output, and val/colorfulness_truth
RUN/best keeps the checkpoint with the best `--best_by` metric: by default the rebalanced
AuC, because L1 and PSNR rank the dullest checkpoint first (a brownish average is never
far from any colour), while a rare, saturated colour must be right to count there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import re
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

import models
from evaluate.metrics import AUC_MAX_DISTANCE, rebalancing_weights
from models.config import ConfigError
from preprocess import atomic, color, dataset
from train import steps as steps_lib
from train.config import Settings, TrainConfig, init_checkpoint, resolved_precision
from train.summaries import RunLog

BEST_FILE = "best.json"


class Diverged(RuntimeError):
    """A loss or weight became NaN/Inf; nothing of that step was saved."""


class WorkerLost(RuntimeError):
    """Another worker of the cluster stopped answering (it died, or its machine did) mid-run."""


class Interrupted(RuntimeError):
    """SIGINT or SIGTERM stopped training after a step, and a checkpoint of that step was saved."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


@contextlib.contextmanager
def stop_requests(enabled: bool = True) -> Iterator[list[int]]:
    """SIGINT (Ctrl-C) and SIGTERM become a request, the list yielded gets the signal's number.

    The loop finishes the step it is in and saves it: a signal that interrupted a step
    half-way (KeyboardInterrupt between the update and the step counter) would leave
    nothing consistent to save. A second Ctrl-C interrupts at once, without saving.
    """
    requested: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield requested  # signal handlers can only be set from the main thread
        return

    def handle(number: int, _frame) -> None:
        requested.append(number)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {number: signal.signal(number, handle) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """default: one device; mirrored: every local GPU (else the CPU); multi_worker: TF_CONFIG's cluster."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _cluster(strategy: tf.distribute.Strategy) -> dict:
    resolver = strategy.cluster_resolver
    return resolver.cluster_spec().as_dict() if resolver else {}


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run folder (the only process, or worker 0 / the chief)."""
    resolver = strategy.cluster_resolver
    cluster = _cluster(strategy)
    if not cluster:
        return True
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """base * decay(step) * scale, from the loop's step counter and plateau scale.

    Not the optimizer's iteration count: G may update several times per step, and a run
    resumed (even with more steps) must continue the same curve.
    """

    def __init__(self, base: float, train: TrainConfig, total_steps: int, step: tf.Variable, scale: tf.Variable):
        self.base = base
        self.linear = train.lr_schedule == "linear"
        self.total_steps = float(total_steps)
        self.decay_steps = max(1.0, (1.0 - train.decay_start) * total_steps)
        self.step = step
        self.scale = scale

    def __call__(self, _iterations: tf.Tensor) -> tf.Tensor:
        rate = self.base * self.scale
        if self.linear:
            remaining = self.total_steps - tf.cast(self.step, tf.float32)
            rate *= tf.clip_by_value(remaining / self.decay_steps, 0.0, 1.0)
        return rate


class FusedAdam(keras.optimizers.Adam):
    """Keras's Adam, each variable updated by TensorFlow's fused ResourceApplyAdam kernel.

    Keras 3 writes Adam as about ten element-wise ops per variable, each a pass over the
    weights in memory; the fused kernel makes one, on every core. Measured with TensorFlow's
    profiler: Keras's ops were 13% of the cgan step at 256 px batch 1 (57 M weights) and 9%
    at 32 px batch 64. Same formula (Kingma and Ba 2015 with Keras's epsilon placement) and
    the same slot variables, so checkpoints of either optimizer restore into the other.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        local_step = tf.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].value.handle, v=self._velocities[index].value.handle,
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), local_step),
            beta2_power=tf.pow(tf.cast(self.beta_2, dtype), local_step),
            lr=tf.cast(learning_rate, dtype), beta1=tf.cast(self.beta_1, dtype), beta2=tf.cast(self.beta_2, dtype),
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype),
        )  # fmt: skip


@contextlib.contextmanager
def runtime(train: TrainConfig) -> Iterator[None]:
    """Seeds, op determinism and the dtype policy of a run; the previous policy comes back after."""
    keras.utils.set_random_seed(train.seed)
    if train.deterministic:
        # Stays on for the rest of the process: TensorFlow has no public switch back.
        tf.config.experimental.enable_op_determinism()
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(resolved_precision(train.precision))
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@dataclasses.dataclass
class Training:
    """The networks, optimizers and loop state of a run, built under `strategy`, and its step.

    `train_step(batch)` takes a batch from `train_batches` (or a plain batch dict under the
    default strategy), advances `state["step"]` and returns
    (losses averaged over replicas, whether all are finite). It is what a benchmark
    times: see `build`.
    """

    strategy: tf.distribute.Strategy
    networks: dict[str, keras.Model]
    optimizers: dict[str, keras.optimizers.Optimizer]
    state: dict[str, tf.Variable]
    checkpoint: tf.train.Checkpoint
    train_step: Callable[[dict], tuple[dict[str, tf.Tensor], tf.Tensor]]
    stop: tf.Variable  # float32 scalar: this process's stop request before a step, every worker's after


def build(model: str, model_config, train: TrainConfig, total_steps: int | None = None,
          strategy: tf.distribute.Strategy | None = None, shards: dataset.Shards | None = None) -> Training:  # fmt: skip
    """Networks, optimizers (variables created, ready to restore), state and compiled step.

    `shards`: the training data, for the steps that need more than its batches (zhang's ab
    prior, iizuka's class labels); without it those train without rebalancing or class loss.

    Call inside `runtime(train)`. For a benchmark:
        with runtime(train): training = build("cgan", config, train)
        batch = {"gray": ..., "color": ...}; training.train_step(batch)  # first call traces
    """
    strategy = strategy or make_strategy(train.strategy)
    total_steps = total_steps or train.steps or 1
    with strategy.scope():
        networks = models.build(model, model_config)
        if strategy.num_replicas_in_sync > 1 and train.sync_batch_norm:
            synchronize_batch_norm(networks)
        state = {
            "step": tf.Variable(0, dtype=tf.int64, trainable=False, name="step"),
            # reduce-on-plateau: multiplier of every learning rate, best val L1 so far, evaluations since
            "lr_scale": tf.Variable(1.0, trainable=False, name="lr_scale"),
            "plateau_best": tf.Variable(math.inf, trainable=False, name="plateau_best"),
            "plateau_wait": tf.Variable(0, dtype=tf.int64, trainable=False, name="plateau_wait"),
            # the --best_by value behind RUN/best, kept apart so that unscheduled validations (the last
            # step of a run) cannot change the plateau state, and a resumed run trains as an unbroken one
            "best_score": tf.Variable(-math.inf, trainable=False, name="best_score"),
        }
        optimizers = {}
        for name, network in networks.items():
            base = train.disc_learning_rate if name.startswith("discriminator") else train.learning_rate
            schedule = LearningRate(base, train, total_steps, state["step"], state["lr_scale"])
            optimizer = FusedAdam(schedule, beta_1=train.beta_1, beta_2=train.beta_2)
            if train.precision == "mixed_float16":
                # float16 gradients underflow without a loss scale; it adapts, and skips steps with Inf gradients.
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            # Slots must exist before a restore, or their saved values would be dropped silently.
            optimizer.build(network.trainable_variables)
            optimizers[name] = optimizer

    step = steps_lib.make(model, model_config, shards)
    if getattr(step, "state", None) and strategy.num_replicas_in_sync > 1:
        # replicas would write the step's variables at once, in no fixed order
        raise ConfigError(f"--model={model} keeps one {' and one '.join(step.state)} per run, so it trains on "
                          f"one replica; use --strategy=default")  # fmt: skip
    checkpoint = tf.train.Checkpoint(
        **state,
        **networks,
        **{f"{name}_optimizer": optimizer for name, optimizer in optimizers.items()},
        # Keras 3 does not expose a layer's SeedGenerator (dropout's RNG state) to
        # tf.train.Checkpoint; listing every variable saves it (the others are stored once).
        **{f"{name}_variables": list(network.variables) for name, network in networks.items()},
        **getattr(step, "state", {}),  # what the step keeps between calls (cyclegan's history pools)
    )

    # This process's stop request (1.0 after SIGINT/SIGTERM), set by the loop; after a step, whether
    # any worker's was: workers stop at the same step, since every save is a collective. Not in
    # the checkpoint, and not mirrored: each process has its own.
    stop = tf.Variable(0.0, trainable=False, name="stop")
    names: list[str] = []  # the step's loss names, in the order of the vector reduced below

    def replica_step(batch):
        losses = step(networks, optimizers, batch)
        names[:] = list(losses)
        # one all-reduce for every loss and the stop request, not one each: each is a round trip
        return tf.stack([tf.cast(value, tf.float32) for value in losses.values()] + [stop.read_value()])

    def train_step(batch):
        reduced = strategy.reduce(tf.distribute.ReduceOp.MEAN, strategy.run(replica_step, args=(batch,)), axis=None)
        losses = dict(zip(names, tf.unstack(reduced[:-1])))
        stop.assign(tf.cast(reduced[-1] > 0.0, tf.float32))
        state["step"].assign_add(1)
        finite = tf.reduce_all(tf.math.is_finite(reduced[:-1]))
        return losses, finite

    if not train.eager:
        train_step = tf.function(train_step, jit_compile=train.jit_compile)
        if train.jit_compile:
            train_step = _refusing_what_xla_cannot_compile(train_step, model)
    return Training(strategy, networks, optimizers, state, checkpoint, train_step, stop)


# XLA names the first operation it has no kernel for: "... on XLA_CPU_JIT: ScaleAndTranslate (No registered ...".
_XLA_UNSUPPORTED = re.compile(r"Detected unsupported operations when trying to compile graph \S* on XLA_\w+: (\w+)")


def _refusing_what_xla_cannot_compile(train_step: Callable, model: str) -> Callable:
    """`train_step`, whose XLA compile failure (when first called, or retraced for a new
    size) is a ConfigError naming the operation instead of a page of graph dump."""

    @functools.wraps(train_step)
    def compiled_step(batch):
        try:
            return train_step(batch)
        except tf.errors.InvalidArgumentError as error:
            unsupported = _XLA_UNSUPPORTED.search(error.message)
            if unsupported is None:
                raise
            raise ConfigError(f"--jit_compile: XLA cannot compile {model}'s training step, it has no kernel for "
                              f"{unsupported.group(1)}; train without --jit_compile") from None  # fmt: skip

    return compiled_step


def synchronize_batch_norm(networks: dict[str, keras.Model]) -> None:
    """BatchNorm statistics over the global batch, not each replica's share, so that N replicas
    at global batch B train as one replica at B (Keras' `synchronized`: an all-reduce of the
    moments per layer and step). Before the first call: a layer reads it when traced."""
    for network in networks.values():
        for layer in network._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True


def train_batches(train: TrainConfig, shards: dataset.Shards, strategy: tf.distribute.Strategy, start: int,
                  per_epoch: int, unpaired: bool = False,
                  gray_shards: dataset.Shards | None = None) -> Iterator:  # fmt: skip
    """The batches of steps start, start+1, ...: each a function of its step number alone.

    unpaired: gray and colour from disjoint halves of the photos; gray_shards (--gray_data):
    gray from those, colour from `shards` (Shards.unpaired_batches). An epoch is `shards`'s."""
    step = start
    sizes = train.scaled_sizes(models.image_size(train.crop_size, shards.tile_size)) if train.scales else ()
    if gray_shards is not None:
        read = functools.partial(shards.unpaired_batches, gray_shards=gray_shards)
    else:
        read = shards.unpaired_batches if unpaired else shards.batches
    while True:
        epoch, offset = divmod(step, per_epoch)

        def worker_batches(context: tf.distribute.InputContext, epoch=epoch, offset=offset) -> tf.data.Dataset:
            # Each worker reads its own part of every global batch (Shards.batches' shard), split
            # further between its replicas, which take one batch each in turn: worker k's batches
            # of step s, together, are its k-th share of the one-worker batch of step s.
            local_replicas = strategy.num_replicas_in_sync // context.num_input_pipelines
            batches = read("train", context.get_per_replica_batch_size(train.batch_size), training=True,
                           crop_size=train.crop_size or None, seed=train.seed + epoch,
                           shard=(context.num_input_pipelines, context.input_pipeline_id),
                           sizes=sizes, batches_per_size=local_replicas)  # fmt: skip
            return batches.take(per_epoch * local_replicas).skip(offset * local_replicas)

        for batch in strategy.distribute_datasets_from_function(worker_batches):
            yield batch
            step += 1


# Validation metrics where higher is better; the others (val/l1) are negated for --best_by.
HIGHER_IS_BETTER = {"val/psnr", "val/auc_rebalanced"}


def colorfulness(rgb: tf.Tensor) -> tf.Tensor:
    """Hasler and Suesstrunk (2003) of uint8 RGB [B, H, W, 3] -> [B]; as preprocess.color.colorfulness."""
    rgb = tf.cast(rgb, tf.float32)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    mean_rg, var_rg = tf.nn.moments(rg, axes=[1, 2])
    mean_yb, var_yb = tf.nn.moments(yb, axes=[1, 2])
    return tf.sqrt(var_rg + var_yb) + 0.3 * tf.sqrt(tf.square(mean_rg) + tf.square(mean_yb))


def rebalanced_auc(real_color: tf.Tensor, fake_color: tf.Tensor, bin_weights: tf.Tensor) -> tf.Tensor:
    """Per-image rebalanced AuC [B] of colour maps [B, H, W, 2] (model scaling); bin_weights [Q].

    As evaluate.metrics.auc_ab: a pixel at ab distance d passes 151 - ceil(d) of the
    thresholds 0..150, weighted by the weight of its true colour's bin.
    """
    distance = tf.norm((fake_color - real_color) * color.AB_SCALE, axis=-1)  # [B, H, W] Lab units
    top = AUC_MAX_DISTANCE + 1.0
    passed = tf.clip_by_value(top - tf.math.ceil(distance), 0.0, top)
    weights = tf.gather(bin_weights, color.nearest_bin(real_color * color.AB_SCALE))  # [B, H, W]
    return tf.reduce_sum(weights * passed, [1, 2]) / (tf.reduce_sum(weights, [1, 2]) * top)


def make_evaluate(generator: keras.Model, train: TrainConfig,
                  ab_prior: np.ndarray | None = None) -> Callable[[tf.data.Dataset], dict[str, float]]:  # fmt: skip
    """A function val batches -> the val/... metrics of the module docstring.

    ab_prior: the training data's ab-bin pixel counts [Q] for the rebalanced AuC; without
    one every pixel weighs the same (plain AuC).
    """
    uniform = np.ones(len(color.ab_bins()))
    bin_weights = tf.constant(uniform if ab_prior is None else rebalancing_weights(ab_prior), tf.float32)

    def errors(gray, real_color):
        fake_color = tf.cast(generator(gray, training=False), tf.float32)
        l1 = tf.reduce_mean(tf.abs(fake_color - real_color), axis=[1, 2, 3])  # [B]
        fake_rgb = color.model_to_rgb(gray, fake_color)
        real_rgb = color.model_to_rgb(gray, real_color)
        mse = tf.reduce_mean(tf.square(tf.cast(fake_rgb, tf.float32) - tf.cast(real_rgb, tf.float32)), axis=[1, 2, 3])
        # identical images would give +inf; 1e-10 caps them at 148 dB
        psnr = 10.0 * tf.math.log(255.0**2 / tf.maximum(mse, 1e-10)) / tf.math.log(10.0)
        return {"val/l1": l1, "val/psnr": psnr, "val/auc_rebalanced": rebalanced_auc(real_color, fake_color, bin_weights),
                "val/colorfulness": colorfulness(fake_rgb), "val/colorfulness_truth": colorfulness(real_rgb)}  # fmt: skip

    if not train.eager:
        errors = tf.function(errors)

    def evaluate(batches: tf.data.Dataset) -> dict[str, float]:
        per_batch = [errors(batch["gray"], batch["color"]) for batch in batches]
        return {name: float(tf.reduce_mean(tf.concat([values[name] for values in per_batch], 0)))
                for name in per_batch[0]}  # fmt: skip

    return evaluate


def selection_score(val: dict[str, float], best_by: str) -> float:
    """The --best_by metric of a validation, signed so that higher is better."""
    name = f"val/{best_by}"
    return val[name] if name in HIGHER_IS_BETTER else -val[name]


def sample_rows(generator: keras.Model, gray: tf.Tensor, real_color: tf.Tensor,
                to_gray: keras.Model | None = None) -> np.ndarray:  # fmt: skip
    """uint8 [N, H, (2 + K)W, 3]: per example, gray | generated | real.

    A generator with a `sample_colors(gray, real_color)` method gives its K generated
    columns itself (guided: automatic, with hints); the others give one. With `to_gray`
    (cyclegan's), a column more before the real one: gray again, to_gray of the generated
    Lab image, which the cycle loss compares with the gray.
    """
    if hasattr(generator, "sample_colors"):
        fakes = generator.sample_colors(gray, real_color)
    else:
        fakes = [generator(gray, training=False)]
    again = []
    if to_gray is not None:
        cycled = to_gray(tf.concat([gray, tf.cast(fakes[0], gray.dtype)], -1), training=False)  # [N, H, W, 1]
        again = [color.model_to_rgb(tf.cast(cycled, tf.float32), tf.zeros_like(real_color))]
    images = [color.model_to_rgb(gray, tf.zeros_like(real_color)), *(color.model_to_rgb(gray, fake) for fake in fakes),
              *again, color.model_to_rgb(gray, real_color)]  # fmt: skip
    return tf.concat(images, axis=2).numpy()


def update_plateau(state: dict[str, tf.Variable], train: TrainConfig, val_l1: float) -> None:
    """Reduce-on-plateau of the validation L1: lower both rates when it stops improving."""
    if val_l1 < float(state["plateau_best"].numpy()):
        state["plateau_best"].assign(val_l1)
        state["plateau_wait"].assign(0)
        return
    state["plateau_wait"].assign_add(1)
    if int(state["plateau_wait"].numpy()) >= train.plateau_patience:
        floor = train.min_learning_rate / train.learning_rate
        state["lr_scale"].assign(max(float(state["lr_scale"].numpy()) * train.plateau_factor, floor))
        state["plateau_wait"].assign(0)


def _all_finite(networks: dict[str, keras.Model]) -> bool:
    return all(bool(tf.reduce_all(tf.math.is_finite(variable))) for network in networks.values()
               for variable in network.variables if keras.backend.is_float_dtype(variable.dtype))  # fmt: skip


def _format(values: dict[str, float]) -> str:
    return "  ".join(f"{name} {value:.4g}" for name, value in values.items())


class _Means:
    """Running means of the step's loss tensors; they become floats only when read."""

    def __init__(self) -> None:
        self.sums: dict[str, tf.Tensor] = {}
        self.count = 0

    def add(self, losses: dict[str, tf.Tensor]) -> None:
        self.sums = {name: self.sums.get(name, 0.0) + value for name, value in losses.items()}
        self.count += 1

    def pop(self) -> dict[str, float]:
        means = {name: float(value) / self.count for name, value in self.sums.items()}
        self.sums, self.count = {}, 0
        return means


def run(settings: Settings, strategy: tf.distribute.Strategy | None = None) -> dict[str, float]:
    """Train (or resume) the run described by `settings`; returns the last metrics logged.

    `strategy` replaces the one --strategy names (tests, notebooks). Raises Diverged when
    a loss or weight becomes NaN/Inf (the checkpoints on disk are all from before),
    Interrupted after SIGINT or SIGTERM (with a checkpoint of the current step saved), and
    ConfigError when the run folder's checkpoint does not fit.
    """
    strategy = strategy or make_strategy(settings.train.strategy)
    # Every worker takes part in a save (a collective); the others' saves go to a scratch
    # folder deleted at the end, as TensorFlow's multi-worker guide prescribes.
    scratch = contextlib.nullcontext() if is_chief(strategy) else tempfile.TemporaryDirectory(prefix="train-worker-")
    with runtime(settings.train), stop_requests() as requested, scratch as scratch_dir:
        return _run(settings, strategy, requested, scratch_dir)


def _run(settings: Settings, strategy: tf.distribute.Strategy, requested: list[int],
         scratch_dir: str | None) -> dict[str, float]:  # fmt: skip
    train = settings.train
    run_dir = Path(train.run)
    chief = scratch_dir is None
    shards, per_epoch = settings.shards, settings.steps_per_epoch
    total = train.steps or train.epochs * per_epoch
    replicas = strategy.num_replicas_in_sync
    if train.batch_size % replicas:
        raise ConfigError(f"--batch_size={train.batch_size} is the global batch, split evenly between {replicas} "
                          f"replicas (workers x devices): use a multiple of {replicas}")  # fmt: skip
    training = build(settings.model, settings.model_config, train, total, strategy, shards)
    own_dir = run_dir if chief else Path(scratch_dir)
    manager = tf.train.CheckpointManager(training.checkpoint, own_dir / models.CHECKPOINT_DIR,
                                         max_to_keep=train.keep_checkpoints)  # fmt: skip
    best_dir = own_dir / models.BEST_DIR
    best_manager = tf.train.CheckpointManager(training.checkpoint, best_dir, max_to_keep=1)
    # Every worker resumes from the chief's checkpoint, so the run folder must be on storage all read.
    latest = tf.train.latest_checkpoint(str(run_dir / models.CHECKPOINT_DIR))
    if latest:
        try:
            status = training.checkpoint.restore(latest)
            models.assert_restored(status, latest, training.networks)
        except (AssertionError, tf.errors.OpError) as error:
            message = str(error).strip().splitlines()[0]
            raise ConfigError(f"{latest} does not fit this model: {message}") from None
    elif train.init_from:
        warm_start(training.networks, train.init_from)
    _check_same_start(strategy, int(training.state["step"].numpy()), run_dir)
    if chief:  # only now: a resume refused above must leave the run's settings as they were
        models.write_run_config(run_dir, settings.model, settings.model_config, train,
                                {"tile_size": shards.tile_size, "steps_per_epoch": per_epoch})  # fmt: skip
    start = int(training.state["step"].numpy())
    if start >= total:
        print(f"{run_dir}: already at step {start} of {total}; nothing to train")
        return {}

    def save(target: tf.train.CheckpointManager, step: int) -> None:
        # The step that breaks the weights still reports the finite losses computed before its update.
        if not _all_finite(training.networks):
            raise Diverged(f"a weight became NaN/Inf by step {step}; {_last_good(manager, run_dir)}")
        target.save(checkpoint_number=step)

    generator = training.networks["generator"]
    evaluate = make_evaluate(generator, train, shards.ab_prior)
    crop = train.crop_size or None
    val_batches = shards.batches("val", train.batch_size, training=False, crop_size=crop).take(train.val_batches)
    fixed = next(iter(shards.batches("val", train.sample_images, training=False, crop_size=crop)))

    log = RunLog(run_dir, start, enabled=chief)
    interval, epoch = _Means(), _Means()
    metrics: dict[str, float] = {}
    interval_start, started = time.perf_counter(), time.perf_counter()
    # A bar only on a terminal (disable=None): in a log file its redraws would be thousands of
    # lines; there the epoch lines below are the record.
    progress = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, disable=None if chief else True,
                    desc=f"{settings.model} {run_dir.name}")  # fmt: skip
    if start:
        progress.write(f"resuming {run_dir} at step {start} of {total}")
    # a model config field: cyclegan's --unpaired (the models that need pairs have none)
    unpaired = getattr(settings.model_config, "unpaired", False)
    batches = islice(train_batches(train, shards, strategy, start, per_epoch, unpaired, settings.gray_shards),
                     total - start)
    try:
        for step, batch in enumerate(batches, start + 1):
            if requested:
                training.stop.assign(1.0)
            losses, finite = training.train_step(batch)
            stopping = bool(training.stop.numpy())  # this process's request or another worker's
            if not bool(finite):
                values = ", ".join(f"{name}={float(value):.4g}" for name, value in losses.items())
                raise Diverged(f"loss became NaN/Inf at step {step} ({values}); {_last_good(manager, run_dir)}")
            interval.add(losses)
            epoch.add(losses)
            progress.update(1)
            epoch_end, final = step % per_epoch == 0, step == total

            if step % train.log_every == 0 or final:
                now = time.perf_counter()
                images = interval.count * train.batch_size
                metrics = interval.pop()
                metrics.update({f"lr/{name}": float(opt.learning_rate) for name, opt in training.optimizers.items()})
                metrics["perf/images_per_second"] = images / (now - interval_start)
                log.scalars(step, metrics)
                shown = [name for name in losses if name.endswith("total")] or list(losses)
                progress.set_postfix({name: f"{metrics[name]:.3g}" for name in shown})
                interval_start = now

            scheduled_eval = step % train.eval_every == 0 or epoch_end
            if scheduled_eval or final:
                val = _agreed(strategy, evaluate(val_batches))
                log.scalars(step, val)
                metrics.update(val)
                # Only scheduled validations move the plateau, so that the training of a run does not
                # depend on where an earlier invocation of it stopped.
                if scheduled_eval and train.lr_schedule == "plateau":
                    update_plateau(training.state, train, val["val/l1"])
                score = selection_score(val, train.best_by)
                if score > float(training.state["best_score"].numpy()):
                    training.state["best_score"].assign(score)
                    save(best_manager, step)
                    if chief:
                        atomic.write_text(best_dir / BEST_FILE, json.dumps({"step": step, **val}) + "\n")

            if step % train.log_every == 0 or scheduled_eval or final:
                log.loss_curves()

            if chief and (step % train.sample_every == 0 or final):
                to_gray = training.networks.get("to_gray")  # cyclegan's: a gray-again column
                log.samples(step, sample_rows(generator, fixed["gray"], fixed["color"], to_gray))

            if step % train.checkpoint_every == 0 or epoch_end or final or stopping:
                save(manager, step)

            if epoch_end:
                minutes = (time.perf_counter() - started) / 60
                rates = {f"lr/{name}": float(opt.learning_rate) for name, opt in training.optimizers.items()}
                progress.write(f"epoch {step // per_epoch}/{math.ceil(total / per_epoch)} (step {step}/{total}, "
                               f"{minutes:.1f} min): {_format({**epoch.pop(), **val, **rates})}")  # fmt: skip

            if stopping and not final:
                number = requested[0] if requested else signal.SIGTERM
                reason = signal.Signals(number).name if requested else "another worker was stopped"
                saved = run_dir / models.CHECKPOINT_DIR / f"ckpt-{step}"
                raise Interrupted(f"{reason}: stopped at step {step} of {total} and saved it in {saved}; "
                                  f"the same command resumes from there", number)  # fmt: skip
    except (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.AbortedError,
            tf.errors.DeadlineExceededError) as error:  # fmt: skip
        if _workers(strategy)[1] == 1:
            raise
        # what MultiWorkerMirroredStrategy's collectives raise when a peer is gone
        cause = str(error).strip().splitlines()[0]
        latest = tf.train.latest_checkpoint(str(run_dir / models.CHECKPOINT_DIR)) or "none yet"
        raise WorkerLost(f"another worker stopped answering ({cause}); the last checkpoint is {latest}: start "
                         f"every worker again to resume from there") from None  # fmt: skip
    finally:
        progress.close()
        log.close()
    print(f"done: step {total}; {_format(metrics)}; best val/{train.best_by} {abs(float(training.state['best_score'].numpy())):.4g} "
          f"in {run_dir / models.BEST_DIR}")  # fmt: skip
    return metrics


def warm_start(networks: dict[str, keras.Model], init_from: str) -> None:
    """The networks' weights from --init_from's checkpoint (fine-tuning); nothing else of that run."""
    source = init_checkpoint(init_from)
    try:
        status = tf.train.Checkpoint(**networks).restore(source)
        status.expect_partial()  # its optimizers and step stay behind
        models.start_missing_statistics(networks, models.assert_restored(status, source, networks))
    except (AssertionError, tf.errors.OpError, ValueError) as error:
        message = str(error).strip().splitlines()[0]
        raise ConfigError(f"--init_from={init_from}: {source} does not fit this model: {message}") from None
    print(f"starting from the network weights of {source}")


def _workers(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """(this process's index, the number of worker processes): (0, 1) outside a cluster."""
    cluster = _cluster(strategy)
    tasks = [(kind, index) for kind in ("chief", "worker") for index in range(len(cluster.get(kind, [])))]
    if len(tasks) <= 1:
        return 0, 1
    resolver = strategy.cluster_resolver
    return tasks.index((resolver.task_type, resolver.task_id)), len(tasks)


def _agreed(strategy: tf.distribute.Strategy, values: dict[str, float]) -> dict[str, float]:
    """The mean over worker processes of each worker's `values` (a collective: every worker calls it).

    Each worker validates on its own, and machines may round differently; what decides a save
    (a best score, the plateau) must be the same everywhere, since a save is a collective too.
    """
    if _workers(strategy)[1] == 1:
        return values
    mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, tf.constant(list(values.values()), tf.float64), axis=None)
    return dict(zip(values, mean.numpy().tolist()))


def _check_same_start(strategy: tf.distribute.Strategy, start: int, run_dir: Path) -> None:
    """ConfigError on every worker unless all resumed at the same step (a collective)."""
    index, count = _workers(strategy)
    if count == 1:
        return
    # a mean over workers of one-hot rows gives every worker's step to every worker
    mine = np.zeros(count)
    mine[index] = start * count
    steps = [round(value) for value in _agreed(strategy, dict(enumerate(mine))).values()]
    if len(set(steps)) > 1:
        raise ConfigError(f"the workers resumed at steps {steps} (worker 0 first): each must read the chief's "
                          f"{run_dir / models.CHECKPOINT_DIR}, so the run folder must be on a file system every "
                          f"worker mounts at the same path (NFS, a ReadWriteMany volume)")  # fmt: skip


def _last_good(manager: tf.train.CheckpointManager, run_dir: Path) -> str:
    latest = manager.latest_checkpoint
    if not latest:
        return "no checkpoint was written yet"
    return f"the last good checkpoint is step {latest.rsplit('-', 1)[-1]} in {run_dir / models.CHECKPOINT_DIR}"
