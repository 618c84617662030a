"""Colorization models by name, and rebuilding them from a run folder.

`MODELS[name]` holds the model's frozen config dataclass (architecture and loss weights,
with the papers' defaults), its builder and its presets per tile size. Every builder
returns named Keras networks; "generator" maps gray [B, H, W, 1] in [-1, 1] to colour
[B, H, W, 2] in [-1, 1] (see preprocess/color.py for the scaling).

How to add a model `foo`:
  1. Write `models/foo.py` with a frozen `FooConfig` dataclass (with a `stride` property:
     image sides must be multiples of it), `PRESETS` ({tile size: overrides}) and
     `build(config) -> {"generator": ..., ...}` with a shape comment per layer. Networks
     whose name starts with "discriminator" train at `--disc_learning_rate`, the others
     at `--learning_rate`. Every network gets its own optimizer and checkpoint entry, so
     networks must not share weights: a part the step needs on its own is an attribute
     (zhang's `generator.network`) or a view built from the same layers (iizuka's
     `with_global_features`). For batch-norm statistics per image size (what --scales
     sets), the config inherits unet.StatisticsSides (first among its bases) and the
     network is a unet.SizeStatisticsNetwork of unet.batch_norm(name, config.sides) layers.
  2. Add `"foo": Model(foo.FooConfig, foo.build, foo.PRESETS)` to MODELS below; settings
     that depend on the training data go in `from_data` (iizuka's class count), which
     gets the data's preprocess.dataset.Shards.
  3. Add a step factory under the same name to STEPS in train/steps.py; a test checks
     that both maps have the same keys. A factory that needs the data's ab prior or class
     names takes `ab_prior=` or `label_names=`. Variables a step keeps between calls
     (cyclegan's history pools) go in `step.state`: the loop checkpoints them.
A config field `temperature` means the generator decodes with one: it takes gray or
[gray, temperature [B]] (zhang; see export/savedmodel.py).

A run folder (written by `python -m train`, read here so that export/ never imports train/):
    RUN/config.json   {"model": name, "model_config": {...}, "train_config": {...},
                       "data": {"tile_size": ..., "steps_per_epoch": ...}, "versions": {...}}
    RUN/ckpt/         the last checkpoints;  RUN/best/  the one with the best validation score (--best_by)
"""

from __future__ import annotations

import preprocess  # noqa: F401  (before TensorFlow: its oneDNN setting)

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from models import cyclegan, guided, iizuka, pix2pix, regression, unet, zhang
from models.config import ConfigError, from_dict
from preprocess import atomic

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "ckpt"
BEST_DIR = "best"


@dataclasses.dataclass(frozen=True)
class Model:
    config: type  # frozen dataclass; its defaults are the paper's
    build: Callable[[Any], dict[str, keras.Model]]
    presets: Mapping[int, Mapping[str, object]]  # tile size -> overrides of the defaults
    # the training data (preprocess.dataset.Shards) -> overrides a new run takes from it, under the user's own settings
    from_data: Callable[[Any], Mapping[str, object]] | None = None


MODELS: dict[str, Model] = {
    "cgan": Model(pix2pix.CGANConfig, pix2pix.build, pix2pix.PRESETS),
    "regression": Model(regression.RegressionConfig, regression.build, regression.PRESETS),
    "zhang": Model(zhang.ZhangConfig, zhang.build, zhang.PRESETS),
    "iizuka": Model(iizuka.IizukaConfig, iizuka.build, iizuka.PRESETS, iizuka.from_data),
    "cyclegan": Model(cyclegan.CycleGANConfig, cyclegan.build, cyclegan.PRESETS),
    "guided": Model(guided.GuidedConfig, guided.build, guided.PRESETS),
}


def get(name: str) -> Model:
    """The registry entry of `name`; an unknown name raises ConfigError listing the valid ones."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    return MODELS[name]


def build(name: str, config: Any) -> dict[str, keras.Model]:
    """The named networks of model `name`, freshly initialised, under the current dtype policy."""
    entry = get(name)
    if not isinstance(config, entry.config):
        raise TypeError(f"model {name} takes a {entry.config.__name__}, got {type(config).__name__}")
    return entry.build(config)


class SavedRun(NamedTuple):
    model: str
    model_config: Any
    train_config: dict  # as saved; train/config.py turns it back into a TrainConfig
    data: Mapping[str, int] = {}  # facts of the training data: tile_size, steps_per_epoch


def write_run_config(run_dir: str | Path, model: str, model_config: Any, train_config: Any,
                     data: Mapping[str, int] | None = None) -> Path:  # fmt: skip
    """Write RUN/config.json: everything needed to rebuild the networks, to resume, and to
    export without the training data (`data`: its tile_size and steps_per_epoch)."""
    path = Path(run_dir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = {
        "model": model,
        "model_config": dataclasses.asdict(model_config),
        "train_config": dataclasses.asdict(train_config),
        "data": dict(data or {}),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    return atomic.write_text(path, json.dumps(saved, indent=2) + "\n")  # a crash mid-write must not leave a run that cannot resume


def read_run_config(run_dir: str | Path) -> SavedRun:
    """RUN/config.json back as (model name, typed model config, train config dict)."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not a run folder (no {CONFIG_FILE})") from None
    entry = get(saved["model"])
    try:
        model_config = from_dict(entry.config, saved["model_config"])
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return SavedRun(saved["model"], model_config, saved["train_config"], saved.get("data", {}))


def build_from_run(run_dir: str | Path, checkpoint: str = "best") -> dict[str, keras.Model]:
    """The networks of a run with trained weights: checkpoint "best", "latest" or a checkpoint path."""
    run_dir = Path(run_dir)
    saved = read_run_config(run_dir)
    networks = build(saved.model, saved.model_config)
    folders = {"best": run_dir / BEST_DIR, "latest": run_dir / CHECKPOINT_DIR}
    path = tf.train.latest_checkpoint(folders[checkpoint]) if checkpoint in folders else checkpoint
    if not path:
        raise FileNotFoundError(f"{run_dir}: no {checkpoint} checkpoint in {folders[checkpoint]}")
    # Optimizer slots and loop state are in the file too; only the weights are wanted here.
    status = tf.train.Checkpoint(**networks).restore(path).expect_partial()
    missing = assert_restored(status, path, networks)
    if "log_rebalance" in missing:
        # what the training step would have set, from the run's data while it is still there
        prior = training_prior(saved)
        if prior is not None:
            networks["generator"].log_rebalance.assign(zhang.decoding_log_weights(prior, saved.model_config.prior_sigma))
    start_missing_statistics(networks, missing)
    return networks


def training_prior(saved: SavedRun) -> np.ndarray | None:
    """The ab prior (pixel counts [Q]) in the manifest of the run's training data; None when
    those shards are gone or have none."""
    from preprocess.dataset import Shards

    try:
        return Shards(saved.train_config.get("data", "")).ab_prior
    except (OSError, ValueError, KeyError):
        return None


def require_decoding_weights(generator: keras.Model, run: str | Path) -> None:
    """A ConfigError unless zhang's generator has rebalancing weights for --decode_rebalance > 0."""
    if not np.any(generator.log_rebalance.numpy()):
        raise ConfigError(f"{run}: no rebalancing weights to decode with: its checkpoint is from before they were "
                          f"saved and its training data (the ab prior in the shards' manifest) cannot be read, or "
                          f"that data had no ab prior; decode it with rebalancing 0")  # fmt: skip


# Weights added to a model after checkpoints of it exist, which such checkpoints may lack:
# they keep their initial values (zhang's log_rebalance: zeros, no rebalancing at decoding),
# except the extra batch-norm statistics sets, which start as copies of the first set.
ADDED_LATER = re.compile(r"log_rebalance|moving_(mean|variance)_\d+")


def start_missing_statistics(networks: dict[str, keras.Model], missing: list[str]) -> None:
    """Batch-norm statistics sets that a checkpoint lacked (`missing`, from `assert_restored`)
    start as copies of the first set, the statistics the checkpoint's network had."""
    if any(name.startswith("moving_") for name in missing):
        for network in networks.values():
            unet.copy_first_statistics(network)


def assert_restored(status, path: str, networks: dict[str, keras.Model]) -> list[str]:
    """`status.assert_existing_objects_matched()`, except for ADDED_LATER weights missing from
    `path`: the names of those."""
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        stored = {name for name, _ in tf.train.list_variables(path)}
        missing = [variable.name for network in networks.values() for variable in network.variables
                   if ADDED_LATER.fullmatch(variable.name)
                   and not any(f"/{variable.name}/" in name for name in stored)]  # fmt: skip
        if not missing or f"Found {len(missing)} Python objects" not in str(error):
            raise
        return missing
    return []


def image_size(crop_size: int, tile_size: int) -> int:
    """The side of the images a run trains on: its crop size, else the tiles' size."""
    return crop_size or tile_size


def working_size(saved: SavedRun) -> int:
    """The side a run trained at, from its config.json alone."""
    tile_size = saved.data.get("tile_size")
    if tile_size is None:  # a run from before config.json recorded it: ask its shards, if still there
        from preprocess.dataset import Shards

        data = saved.train_config.get("data", "")
        try:
            tile_size = Shards(data).tile_size
        except (OSError, ValueError, KeyError) as error:
            if not saved.train_config.get("crop_size"):
                raise ConfigError(f"cannot tell the run's tile size from its data {data!r} ({error}); "
                                  f"pass --size") from None  # fmt: skip
    return image_size(int(saved.train_config.get("crop_size") or 0), int(tile_size or 0))
