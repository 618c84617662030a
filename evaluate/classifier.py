"""The semantic-interpretability test (Zhang et al. 2016's classification test).

A small CNN, trained here on the colour tiles of a labelled shard folder (CIFAR-10), labels
the truth, its grayscale version and each model's colorizations: colorizations that keep an
object recognisable score near the truth, and the gap to the grayscale score is how much
the colours add. The project trains its own so that the test runs offline, in minutes on a
CPU, on exactly the classes and tile size of its data.

    python -m evaluate.classifier --data=data/cifar10 --out=classifiers/cifar10 [--epochs=N]

writes OUT/classifier.keras and OUT/classifier.json (label names, tile size, training
settings and time, and accuracy on the colour and on the grayscale tiles of every held-out
split).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from preprocess.console import quiet_tensorflow  # noqa: E402

quiet_tensorflow(sys.argv)  # before anything imports TensorFlow: its log lines only with --verbose

import keras  # noqa: E402
import numpy as np  # noqa: E402

from evaluate.metrics import grayscale  # noqa: E402
from preprocess import atomic, dataset, schema  # noqa: E402

MODEL_FILE = "classifier.keras"
INFO_FILE = "classifier.json"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Training of the classifier. The defaults: 73% on CIFAR-10 val and test after 4 min of
    training on 2 shared CPU cores (72.6% test, 64.9% on its grayscale versions)."""

    epochs: int = 8
    batch_size: int = 128
    learning_rate: float = 3e-3
    width: int = 32  # channels of the first block; each of the three blocks doubles them
    seed: int = 0


def read_labelled(shards_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every tile of a split as (uint8 RGB [N, S, S, 3], int64 labels [N]); an error if any tile
    has no label."""
    examples = dataset.Shards(shards_dir).records(split)
    rgb, labels = zip(*((example["rgb"].numpy(), int(example["label"])) for example in examples))
    labels = np.array(labels, np.int64)
    if np.any(labels == schema.NO_LABEL):
        raise ValueError(f"{shards_dir}: {np.sum(labels == schema.NO_LABEL)} {split} tiles have no label; the "
                         "classifier needs a labelled source such as `make data SOURCE=cifar10:PATH`")  # fmt: skip
    return np.stack(rgb), labels


def build(size: int, classes: int, width: int) -> keras.Model:
    """uint8 RGB [B, size, size, 3] -> class logits [B, classes]: three conv blocks and a linear head.

    One convolution per block: on a 2-core CPU the convolutions are nearly all of the cost,
    and this is the largest net we measured that reaches about 70% in about five minutes.
    """
    images = keras.Input([size, size, 3], dtype="uint8")
    x = keras.layers.Rescaling(1.0 / 255.0)(images)  # [B, S, S, 3] in [0, 1]
    # flips only (training only): random shifts cost accuracy at this few epochs
    x = keras.layers.RandomFlip("horizontal")(x)
    for channels in (width, 2 * width, 4 * width):  # [B, S/2^k, S/2^k, channels] after block k
        x = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False)(x)
        # momentum 0.9, not Keras' 0.99: the moving statistics must settle within a short training
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)  # [B, 4 width]
    return keras.Model(images, keras.layers.Dense(classes)(x), name="classifier")


def semantic_accuracy(classifier: keras.Model, images: np.ndarray, labels: np.ndarray) -> float:
    """Share of uint8 RGB images [N, S, S, 3] whose predicted class is `labels` [N]; in [0, 1]."""
    expected = tuple(classifier.input_shape[1:])
    if tuple(np.shape(images)[1:]) != expected or len(images) != len(labels):
        raise ValueError(f"expected images [N, {', '.join(map(str, expected))}] and N labels, got "
                         f"{np.shape(images)} and {np.shape(labels)}")  # fmt: skip
    logits = classifier.predict(np.asarray(images, np.uint8), batch_size=256, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels)))


def load(folder: str | Path) -> keras.Model:
    """The classifier saved by `train` in `folder`."""
    path = Path(folder) / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no classifier; train one with `python -m evaluate.classifier "
                                f"--data=<labelled shards> --out={folder}`")  # fmt: skip
    return keras.saving.load_model(path)


def train(shards_dir: str | Path, out_dir: str | Path, settings: Settings = Settings()) -> dict:
    """Trains on the train split, saves the model and its info JSON in `out_dir`, returns the info."""
    shards = dataset.Shards(shards_dir)
    shards.require_color("the classifier learns from colour photos")
    images, labels = read_labelled(shards_dir, "train")
    classes = len(shards.label_names or []) or int(labels.max()) + 1
    held_out = {split: read_labelled(shards_dir, split) for split in ("val", "test") if split in shards.splits}

    keras.utils.set_random_seed(settings.seed)
    classifier = build(images.shape[1], classes, settings.width)
    steps = settings.epochs * -(-len(images) // settings.batch_size)
    # one-cycle-like schedule: short warm-up, then cosine decay to zero, for a good model in few epochs
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps, warmup_target=settings.learning_rate, warmup_steps=steps // 10
    )
    classifier.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.monotonic()
    classifier.fit(
        images, labels, batch_size=settings.batch_size, epochs=settings.epochs, shuffle=True, verbose=2,
        validation_data=held_out.get("val"),
    )  # fmt: skip
    seconds = time.monotonic() - start

    accuracy = {
        split: {
            "color": semantic_accuracy(classifier, split_images, split_labels),
            "gray": semantic_accuracy(classifier, grayscale(split_images), split_labels),
            "tiles": len(split_labels),
        }
        for split, (split_images, split_labels) in held_out.items()
    }
    info = {
        "data": str(shards_dir),
        "label_names": list(shards.label_names or [str(index) for index in range(classes)]),
        "size": int(images.shape[1]),
        "train_tiles": len(images),
        "settings": dataclasses.asdict(settings),
        "train_seconds": round(seconds, 1),
        "accuracy": accuracy,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(out_dir / MODEL_FILE) as temporary:  # a reader never loads half a model
        classifier.save(temporary)
    atomic.write_text(out_dir / INFO_FILE, json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m evaluate.classifier", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="labelled shard folder (make data SOURCE=cifar10:PATH)")
    parser.add_argument("--out", required=True, help="folder for classifier.keras and classifier.json")
    for field in dataclasses.fields(Settings):
        default = getattr(defaults, field.name)
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(default), default=default,
                            help=f"(default: {default})")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines")
    args = parser.parse_args(argv)
    settings = Settings(**{field.name: getattr(args, field.name) for field in dataclasses.fields(Settings)})
    try:
        info = train(args.data, args.out, settings)
    except (FileNotFoundError, ValueError) as error:
        print(f"make classifier: {error}", file=sys.stderr)
        return 2
    for split, figures in info["accuracy"].items():
        print(f"{split}: {figures['color']:.1%} on colour, {figures['gray']:.1%} on grayscale "
              f"({figures['tiles']} tiles)", file=sys.stderr)  # fmt: skip
    print(f"classifier: {Path(args.out) / MODEL_FILE} ({info['train_seconds']:.0f} s of training)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
