"""The training config and the command line: `--key=value` for every field, checked.

    python -m train --model=cgan --data=DATA --run=RUN --steps=N [--epochs=N] [--key=value ...]

Keys are `--model`, `--preset` and the fields of TrainConfig and of the model's config
dataclass (see models/). A bool field also takes the bare `--flag` for true. A run folder
that already has a config.json is resumed: its saved settings are the base, training
settings may change (more steps, other intervals), model settings may not. `--verbose`
shows TensorFlow's own log lines.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Literal, NamedTuple

import models
from models.config import ConfigError, check, comma_separated, field_types, from_dict, override
from preprocess import cpu_has_bf16_units
from preprocess.dataset import GrayOnly, Shards


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, intervals and paths; the defaults are pix2pix's (Adam 2e-4, beta_1 0.5)."""

    data: str = ""  # shard folder from `make data`
    run: str = ""  # run folder: config.json, checkpoints, logs, samples
    gray_data: str = ""  # unpaired models: gray-only shards (`make data DOMAIN=gray`), the gray domain
    steps: int = 0  # total steps of the run; 0: epochs * steps per epoch
    epochs: int = 20  # used when steps is 0
    batch_size: int = 16  # global: split across replicas
    crop_size: int = 0  # random crops of this side (centre crops for validation); 0: whole tiles
    learning_rate: float = 2e-4  # generator (every network but the discriminators)
    disc_learning_rate: float = 2e-4  # D's own rate: Heusel et al. 2017's two time-scale rule
    beta_1: float = 0.5
    beta_2: float = 0.999
    lr_schedule: Literal["constant", "linear", "plateau"] = "constant"
    decay_start: float = 0.5  # linear: constant until this fraction of the steps, then down to 0
    plateau_factor: float = 0.5  # plateau: multiply both rates by this ...
    plateau_patience: int = 3  # ... after this many evaluations without a better validation L1 ...
    min_learning_rate: float = 1e-6  # ... but never take the generator's rate below this
    log_every: int = 100  # steps between scalars in TensorBoard, metrics.jsonl and loss_curves.png
    eval_every: int = 1000  # steps between validations (also at every epoch end and the last step)
    sample_every: int = 1000  # steps between sample grids of the fixed validation batch
    checkpoint_every: int = 1000  # steps between checkpoints (also at every epoch end and the last step)
    keep_checkpoints: int = 3
    best_by: Literal["auc_rebalanced", "psnr", "l1"] = "auc_rebalanced"  # what RUN/best keeps (see train/loop.py)
    val_batches: int = 20  # validation looks at most at this many batches of the val split
    sample_images: int = 8  # rows of the sample grid
    seed: int = 0
    deterministic: bool = False  # op determinism: bit-exact reruns and resumes, slower input pipeline
    eager: bool = False  # run the step eagerly, for debugging
    jit_compile: bool = False  # XLA-compile the step (default strategy only)
    # auto: mixed_bfloat16 on a CPU with bf16 units and no GPU (see default_precision), else float32
    precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"] = "auto"
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"  # multi_worker reads TF_CONFIG
    # several replicas: BatchNorm statistics over the global batch, as one replica would compute them
    sync_batch_norm: bool = True
    # Fine-tuning: the network weights of this run folder's latest checkpoint (or of this
    # checkpoint path) start a new run; the step, optimizer state and schedule start afresh.
    init_from: str = ""
    # Several scales, comma-separated factors of the tile size (e.g. 1,0.5): the batches of
    # step s are resized (antialiased, in sRGB) by factor s mod n, so that a model trained on
    # 64 px photos also colours photos that are smaller (CIFAR-10's 32 px) at their own size.
    scales: str = ""

    def __post_init__(self) -> None:
        positive = ["epochs", "batch_size", "log_every", "eval_every", "sample_every", "checkpoint_every",
                    "keep_checkpoints", "val_batches", "sample_images", "plateau_patience"]  # fmt: skip
        for key in positive:
            check(getattr(self, key) >= 1, f"--{key}={getattr(self, key)}: must be at least 1")
        check(self.steps >= 0 and self.crop_size >= 0, "--steps and --crop_size must be >= 0")
        for key in ["learning_rate", "disc_learning_rate", "min_learning_rate"]:
            check(getattr(self, key) > 0.0, f"--{key}={getattr(self, key)}: must be > 0")
        check(0.0 <= self.beta_1 < 1.0 and 0.0 <= self.beta_2 < 1.0, "--beta_1 and --beta_2 must be in [0, 1)")
        check(0.0 <= self.decay_start < 1.0, f"--decay_start={self.decay_start}: must be in [0, 1)")
        check(0.0 < self.plateau_factor < 1.0, f"--plateau_factor={self.plateau_factor}: must be in (0, 1)")
        check(not (self.jit_compile and self.strategy != "default"),
              "--jit_compile works with --strategy=default only")  # fmt: skip
        self.scale_factors  # noqa: B018 (checks --scales)

    @property
    def scale_factors(self) -> tuple[float, ...]:
        """--scales as numbers; () without it."""
        factors = comma_separated("scales", self.scales, float, "numbers, e.g. 1,0.5")
        check(all(0.0 < factor <= 1.0 for factor in factors), f"--scales={self.scales}: each must be in (0, 1]")
        return factors

    def scaled_sizes(self, image_size: int) -> tuple[int, ...]:
        """The image sides the training steps take in turn: (image_size,) without --scales."""
        return tuple(round(image_size * factor) for factor in self.scale_factors) or (image_size,)


def default_precision() -> str:
    """What --precision=auto means here: mixed_bfloat16 where the CPU trains it faster with the
    same quality (BENCHMARKS.md, "precision"), float32 elsewhere, including on GPUs."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU") or not cpu_has_bf16_units():
        return "float32"
    return "mixed_bfloat16"


def resolved_precision(precision: str) -> str:
    return default_precision() if precision == "auto" else precision


class Settings(NamedTuple):
    """Everything a run needs, resolved and checked."""

    model: str
    model_config: Any  # the model's config dataclass
    train: TrainConfig
    preset: int | None  # the preset applied to a new run; None when resuming or unchanged
    resumed: bool  # RUN already had a config.json
    shards: Shards  # the training data, opened once
    steps_per_epoch: int
    gray_shards: Shards | None = None  # --gray_data, opened once; None: the gray photos come from --data


SPECIAL_KEYS = ("model", "preset")


def split_args(argv: list[str]) -> dict[str, str | bool]:
    """["--key=value", "--flag", ...] -> {"key": "value", "flag": True}; later keys win."""
    values: dict[str, str | bool] = {}
    for arg in argv:
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}; settings are written --key=value")
        key, has_value, value = arg[2:].partition("=")
        values[key.replace("-", "_")] = value if has_value else True
    return values


def open_data(train: TrainConfig) -> tuple[Shards, int]:
    """The training data, checked to have train and val splits, and the steps of one epoch."""
    if not train.data:
        raise ConfigError("--data is required: the shard folder written by `make data`")
    try:
        shards = Shards(train.data)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"--data={train.data}: {error}") from None
    try:
        shards.require_color(f"train MODEL=cyclegan with GRAY_DATA={train.data} and colour shards as DATA")
    except GrayOnly as error:
        raise ConfigError(str(error)) from None
    for split in ("train", "val"):
        if not shards.splits.get(split) or not shards.splits[split].files:
            raise ConfigError(f"--data={train.data}: no {split} split; training needs train and val shards")
    if train.crop_size > shards.tile_size:
        raise ConfigError(f"--crop_size={train.crop_size} is larger than the {shards.tile_size} px tiles of {train.data}")
    tiles = shards.splits["train"].tiles
    if tiles < train.batch_size:
        raise ConfigError(f"--batch_size={train.batch_size} is more than the {tiles} training tiles")
    return shards, tiles // train.batch_size


def open_gray_data(train: TrainConfig, tile_size: int) -> Shards | None:
    """--gray_data's shards, checked to give training batches of the size DATA's (`tile_size`) give."""
    if not train.gray_data:
        return None
    try:
        gray = Shards(train.gray_data)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"--gray_data={train.gray_data}: {error}") from None
    info = gray.splits.get("train")
    if not info or not info.files or info.tiles < train.batch_size:
        tiles = info.tiles if info else 0
        raise ConfigError(f"--gray_data={train.gray_data}: {tiles} training tiles, fewer than "
                          f"--batch_size={train.batch_size}")  # fmt: skip
    if train.crop_size > gray.tile_size:
        raise ConfigError(f"--crop_size={train.crop_size} is larger than the {gray.tile_size} px tiles of "
                          f"{train.gray_data}")  # fmt: skip
    if not train.crop_size and gray.tile_size != tile_size:
        raise ConfigError(f"--gray_data={train.gray_data} has {gray.tile_size} px tiles and --data={train.data} "
                          f"{tile_size} px ones: make both at one SIZE, or crop both with --crop_size")  # fmt: skip
    return gray


def _check_bare_flags(values: dict[str, str | bool], types: dict[str, Any]) -> None:
    """A bare `--flag` means true, for bool fields only."""
    for key, value in values.items():
        if value is True and types[key] is not bool:
            raise ConfigError(f"--{key} needs a value: --{key}=...")


def resolve(argv: list[str]) -> Settings:
    """The settings of `python -m train ARGV`: new run or resume, checked; ConfigError otherwise."""
    values = split_args(argv)
    run = values.get("run")
    if not isinstance(run, str) or not run:
        raise ConfigError("--run is required: the run folder, e.g. --run=runs/cgan-cifar")
    resumed = (Path(run) / models.CONFIG_FILE).exists()
    saved = models.read_run_config(run) if resumed else None

    name = values.pop("model", saved.model if saved else None)
    if not isinstance(name, str):
        raise ConfigError(f"--model is required; valid: {', '.join(models.MODELS)}")
    entry = models.get(name)
    if saved and name != saved.model:
        raise ConfigError(f"{run} is a {saved.model} run; --model={name} needs a new --run")

    model_types = field_types(entry.config)
    train_types = field_types(TrainConfig)
    preset = values.pop("preset", None)
    unknown = sorted(set(values) - set(model_types) - set(train_types))
    if unknown:
        valid = [*SPECIAL_KEYS, *train_types, *model_types]
        raise ConfigError(
            f"unknown setting {', '.join('--' + key for key in unknown)} for --model={name}; "
            f"valid: {', '.join('--' + key for key in valid)}"
        )
    _check_bare_flags(values, {**model_types, **train_types})
    train_values = {key: value for key, value in values.items() if key in train_types}
    model_values = {key: value for key, value in values.items() if key in model_types}

    base_train = from_dict(TrainConfig, saved.train_config) if saved else TrainConfig()
    train = override(base_train, {"run": run, **train_values})
    # config.json records what ran, so a resume elsewhere keeps the run's precision
    train = dataclasses.replace(train, precision=resolved_precision(train.precision))
    if saved and (base_train.precision == "mixed_float16") != (train.precision == "mixed_float16"):
        raise ConfigError(f"{run} was trained with --precision={base_train.precision}; mixed_float16 adds loss-scale "
                          f"state to the optimizers, so it cannot be switched on or off in a resumed run")  # fmt: skip
    shards, per_epoch = open_data(train)
    image_size = models.image_size(train.crop_size, shards.tile_size)
    unpaired_models = [model for model, known in models.MODELS.items() if "unpaired" in field_types(known.config)]
    if train.gray_data and "unpaired" not in model_types:
        raise ConfigError(f"--gray_data is for unpaired training (--model={'|'.join(unpaired_models)}); "
                          f"--model={name} learns from colour photos and their own gray")  # fmt: skip
    gray_shards = open_gray_data(train, shards.tile_size)

    # a fine-tune continues the model it starts from: its settings are the base, as a resume's are
    source = source_config(train.init_from, name) if train.init_from and not saved else None
    preset_size = _preset_size(preset, entry, image_size, resumed or source is not None)
    base_model = saved.model_config if saved else source or entry.config()
    preset_values = dict(entry.presets[preset_size]) if preset_size is not None else {}
    data_values = dict(entry.from_data(shards)) if entry.from_data and not saved else {}
    if train.scales and "statistics_sides" in model_types and not saved and "statistics_sides" not in model_values:
        # one set of batch-norm statistics per scale: a set mixed from several sizes fits none
        model_values["statistics_sides"] = ",".join(map(str, train.scaled_sizes(image_size)))
    model_config = override(base_model, {**preset_values, **data_values, **model_values})

    if saved and model_config != saved.model_config:
        changed = [
            f"{field.name} {getattr(saved.model_config, field.name)!r} -> {getattr(model_config, field.name)!r}"
            for field in dataclasses.fields(model_config)
            if getattr(model_config, field.name) != getattr(saved.model_config, field.name)
        ]
        raise ConfigError(f"{run} was trained with other model settings ({'; '.join(changed)}); "
                          f"resume without them or start a new --run")  # fmt: skip
    if image_size % model_config.stride:
        raise ConfigError(
            f"--model={name} needs image sides divisible by {model_config.stride}; the training images are "
            f"{image_size} px: pick another --preset, --depth or --crop_size"
        )
    odd = [size for size in train.scaled_sizes(image_size) if size % model_config.stride]
    if odd:
        raise ConfigError(f"--scales={train.scales} makes {image_size} px images {', '.join(map(str, odd))} px; "
                          f"--model={name} needs sides divisible by {model_config.stride}")  # fmt: skip
    if train.scales and (gray_shards or getattr(model_config, "unpaired", False)):
        raise ConfigError(f"--scales is for paired training: the gray and colour sides of unpaired batches "
                          f"repeat on their own, so their sizes would not stay together")  # fmt: skip
    if gray_shards and model_config.unpaired:
        raise ConfigError(f"--gray_data and --unpaired both choose the gray photos (those of {train.gray_data}, or "
                          f"half of {train.data}'s): use one")  # fmt: skip
    if train.scales and "statistics_sides" not in model_types:
        print(f"--scales: --model={name}'s batch norms keep one set of statistics, mixed from every size, which "
              f"fits none exactly (the other models keep one per size; BENCHMARKS.md, \"Batch-norm statistics "
              f"per size\")", file=sys.stderr)  # fmt: skip
    return Settings(name, model_config, train, preset_size, resumed, shards, per_epoch, gray_shards)


def init_checkpoint(init_from: str) -> str:
    """--init_from's checkpoint: a run folder's latest, or the checkpoint path given."""
    folder = Path(init_from)
    if (folder / models.CONFIG_FILE).exists():
        import tensorflow as tf

        latest = tf.train.latest_checkpoint(str(folder / models.CHECKPOINT_DIR))
        if not latest:
            raise ConfigError(f"--init_from={init_from}: the run has no checkpoint yet")
        return latest
    if not Path(f"{init_from}.index").exists():
        raise ConfigError(f"--init_from={init_from}: neither a run folder (with {models.CONFIG_FILE}) nor a "
                          f"checkpoint (no {init_from}.index)")  # fmt: skip
    return init_from


def source_config(init_from: str, model: str) -> Any:
    """The model config of the run --init_from names (None for a bare checkpoint, checked at
    restore); that run must hold the same model."""
    init_checkpoint(init_from)
    folder = Path(init_from)
    if not (folder / models.CONFIG_FILE).exists():
        return None
    source = models.read_run_config(folder)
    if source.model != model:
        raise ConfigError(f"--init_from={init_from} is a {source.model} run, not --model={model}")
    return source.model_config


def _preset_size(preset: object, entry: models.Model, image_size: int, resumed: bool) -> int | None:
    """The preset to apply: the one given, else for a new run (`auto`) the largest not above the image size."""
    if preset is None and resumed:
        return None  # a resumed run keeps its saved model config
    sizes = sorted(entry.presets)
    if preset in (None, "auto"):
        fitting = [size for size in sizes if size <= image_size]
        return fitting[-1] if fitting else sizes[0]
    if isinstance(preset, str) and preset.isdigit() and int(preset) in entry.presets:
        return int(preset)
    raise ConfigError(f"--preset={preset}: valid: auto, {', '.join(map(str, sizes))}")


def usage() -> str:
    """The `--help` text: every key with its default, per model."""
    lines = [__doc__.strip(), "", "training settings (defaults):"]
    lines += [f"  --{field.name}={field.default}" for field in dataclasses.fields(TrainConfig)]
    for name, entry in models.MODELS.items():
        lines += ["", f"--model={name} (defaults; --preset=auto|{'|'.join(map(str, entry.presets))}):"]
        lines += [f"  --{field.name}={field.default}" for field in dataclasses.fields(entry.config)]
    return "\n".join(lines)
