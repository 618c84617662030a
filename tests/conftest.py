"""Shared fixtures: tiny shard folders written the way `python -m preprocess` writes them, and
one tiny export that every test needing one reads."""

from __future__ import annotations

import fcntl
import json
import os

from pathlib import Path

import preprocess  # noqa: F401  (before TensorFlow, as in every entry point: its oneDNN setting)

import numpy as np
import pytest
import keras
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from preprocess import schema
from tests.helpers import make_export

# Two logical CPUs, so that MirroredStrategy can run with two replicas on any machine. It
# must happen before TensorFlow initialises its devices, hence at import of this file; it
# changes nothing for code that does not ask for the second device.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()],
)

TILE_SIZE = 32
SPLIT_TILES = {"train": 40, "val": 16}


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Training runs may turn on op determinism (--deterministic) and change the dtype policy
    (restored by train.loop.runtime): neither may leak into the next test."""
    yield
    tf_config.disable_op_determinism()
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.fixture(autouse=True)
def _fresh_collective_keys():
    """Each test's MirroredStrategy numbers its collectives from a base of its own.

    The numbers restart with every strategy, and the process caches each collective's shape
    by them, so a later test's all-reduce met an earlier test's ("Shape mismatch in the
    collective instance 121 ... expected shape [4] but another member ... [8]"). TensorFlow's
    own tests set this class attribute for the same reason.
    """
    tf.distribute.MirroredStrategy._collective_key_base += 100_000
    yield


def _smooth_tiles(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """uint8 [count, size, size, 3]: random colour blobs (4x4 noise upsampled), not pure noise,
    so that sample grids look like something and colour correlates with lightness a little."""
    coarse = rng.uniform(0, 255, size=(count, 4, 4, 3)).astype(np.float32)
    return tf.cast(tf.round(tf.image.resize(coarse, [size, size], method="bilinear")), tf.uint8).numpy()


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """A shard folder: train (40) and val (16) splits of 32x32 colour tiles, 2 shards each."""
    out = tmp_path_factory.mktemp("tiny_shards")
    rng = np.random.default_rng(0)
    splits = {}
    for split, count in SPLIT_TILES.items():
        tiles = _smooth_tiles(rng, count, TILE_SIZE)
        names = [schema.shard_name(split, index, 2) for index in range(2)]
        for index, name in enumerate(names):
            with tf.io.TFRecordWriter(str(out / name)) as writer:
                for number in range(index, count, 2):
                    writer.write(schema.encode(tiles[number], f"{split}/{number}"))
        splits[split] = {"shards": names, "tiles": count}
    manifest = {
        "schema_version": schema.SCHEMA_VERSION,
        "splits": splits,
        "options": {"size": TILE_SIZE, "compression": None},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Path:
    """exports/regression/1 of a tiny run (tests.helpers.make_export), shared read-only.

    Built once per test session: under pytest-xdist the workers share it through their
    common temporary folder, the first one to take the lock builds it (about 30 s on two
    cores), the others wait and read it. Tests that change an export make their own.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / "shared-export"
    with open(root / "shared-export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "exports" / "regression" / "1").exists():
            make_export(folder)
    return folder / "exports" / "regression" / "1"
