"""The semantic-interpretability classifier on two classes that only colour tells apart."""

import json

import numpy as np
import pytest
import tensorflow as tf

from evaluate import classifier
from evaluate.metrics import grayscale
from preprocess import color, schema

SIZE = 32
LABEL_NAMES = ["reddish", "greenish"]


def twin_tiles(pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB [2 pairs, 32, 32, 3] and labels: each random lightness pattern appears once
    reddish (a = +40, label 0) and once greenish (a = -40, label 1), so the two classes have
    the same grayscale tiles."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(35, 65, (pairs, 4, 4, 1)).astype(np.float32)
    lightness = tf.image.resize(coarse, [SIZE, SIZE]).numpy()
    tiles = []
    for a in (40.0, -40.0):
        lab = np.concatenate([lightness, np.full_like(lightness, a), np.zeros_like(lightness)], axis=-1)
        tiles.append(tf.cast(tf.round(color.lab_to_rgb(lab) * 255.0), tf.uint8).numpy())
    return np.concatenate(tiles), np.repeat([0, 1], pairs)


def write_shards(out, splits: dict[str, tuple[np.ndarray, np.ndarray]], compression: str | None = None) -> None:
    """A shard folder the way `python -m preprocess` lays it out, one shard per split."""
    out.mkdir(parents=True, exist_ok=True)
    manifest_splits = {}
    for split, (tiles, labels) in splits.items():
        name = schema.shard_name(split, 0, 1)
        with tf.io.TFRecordWriter(str(out / name), options=compression) as writer:
            for index, (tile, label) in enumerate(zip(tiles, labels)):
                writer.write(schema.encode(tile, f"{split}/{index}", int(label)))
        manifest_splits[split] = {"shards": [name], "tiles": len(tiles)}
    manifest = {"schema_version": schema.SCHEMA_VERSION, "splits": manifest_splits, "label_names": LABEL_NAMES,
                "options": {"size": SIZE, "compression": compression}}  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifier")
    write_shards(root / "shards", {"train": twin_tiles(48, seed=0), "val": twin_tiles(16, seed=1)})
    status = classifier.main([f"--data={root / 'shards'}", f"--out={root / 'out'}", "--epochs=6",
                              "--batch-size=16", "--width=8"])  # fmt: skip
    assert status == 0
    return root


def test_colour_tells_the_classes_apart_and_grayscale_does_not(trained):
    info = json.loads((trained / "out" / classifier.INFO_FILE).read_text())
    assert info["label_names"] == LABEL_NAMES
    assert info["size"] == SIZE and info["train_tiles"] == 96
    assert info["settings"]["epochs"] == 6 and info["settings"]["width"] == 8
    assert set(info["accuracy"]) == {"val"}  # the only held-out split
    assert info["accuracy"]["val"]["tiles"] == 32
    assert info["accuracy"]["val"]["color"] == 1.0
    # each gray tile has a twin of the other class: whatever the classifier answers, half is wrong
    assert info["accuracy"]["val"]["gray"] == pytest.approx(0.5, abs=0.07)


def test_the_saved_classifier_scores_new_tiles(trained):
    model = classifier.load(trained / "out")
    tiles, labels = twin_tiles(10, seed=2)
    assert classifier.semantic_accuracy(model, tiles, labels) == 1.0
    assert classifier.semantic_accuracy(model, tiles, 1 - labels) == 0.0
    assert classifier.semantic_accuracy(model, grayscale(tiles), labels) == pytest.approx(0.5, abs=0.1)
    with pytest.raises(ValueError, match="expected images"):
        classifier.semantic_accuracy(model, tiles[:, :16, :16], labels)


@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_read_labelled_returns_the_stored_tiles_and_labels(tmp_path, compression):
    tiles, labels = twin_tiles(3, seed=3)
    write_shards(tmp_path, {"train": (tiles, labels)}, compression)
    read_tiles, read_labels = classifier.read_labelled(tmp_path, "train")
    np.testing.assert_array_equal(read_tiles, tiles)
    np.testing.assert_array_equal(read_labels, labels)


def test_unlabelled_shards_and_a_missing_classifier_are_clear_errors(tiny_shards, tmp_path, capsys):
    assert classifier.main([f"--data={tiny_shards}", f"--out={tmp_path}"]) == 2
    assert "have no label" in capsys.readouterr().err
    assert not (tmp_path / classifier.MODEL_FILE).exists()
    with pytest.raises(FileNotFoundError, match="python -m evaluate.classifier"):
        classifier.load(tmp_path)
