"""Several workers (`python -m train.workers`, `make train WORKERS=2`): local processes with
MultiWorkerMirroredStrategy on 127.0.0.1 training one run.

The tests that start TensorFlow processes are marked `multiworker` (deselect them with
`-m "not multiworker"`): four launches of two workers, 2.5 to 4 minutes on two cores that other
jobs kept busy, most of it starting TensorFlow. The runs are tiny (a U-Net of depth 5 and
width 4 on 32 px tiles, batch 4, 8 steps) and deterministic: float32, op determinism, no
dropout (every replica draws the same masks from the same seed state, where one worker
draws other masks for the second half of its batch).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from preprocess.dataset import Shards
from train import workers
from train.__main__ import main

STEPS = 8
SETTINGS = ["--model=regression", "--batch_size=4", f"--steps={STEPS}", "--checkpoint_every=1", "--eval_every=100",
            "--val_batches=1", "--sample_every=100", "--log_every=4", "--deterministic", "--precision=float32",
            "--depth=5", "--base_width=4", "--max_width=16", "--dropout_blocks=0"]  # fmt: skip
LAUNCHER = [sys.executable, "-m", "train.workers", "--workers=2", "--"]


def _checkpoint_values(path: Path) -> dict[str, np.ndarray]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(path))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH" and not key.startswith("save_counter")}  # fmt: skip


def _launch(data: Path, run: Path, scratch: Path) -> subprocess.Popen:
    """The launcher on `run`, its output in run.with_suffix(".out"); TMPDIR=`scratch` shows
    where the other workers' checkpoints went."""
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(scratch)}
    with open(run.with_suffix(".out"), "w") as output:  # the launcher keeps its own copy
        return subprocess.Popen([*LAUNCHER, f"--data={data}", f"--run={run}", *SETTINGS], stdout=output,
                                stderr=subprocess.STDOUT, env=env)  # fmt: skip


def _finish(process: subprocess.Popen, run: Path, timeout: float = 600) -> tuple[int, str]:
    # The timeouts catch a hang, not slowness: on two busy cores a launch took up to 2 minutes.
    code = process.wait(timeout=timeout)
    return code, run.with_suffix(".out").read_text()


@pytest.fixture(scope="module")
def two_workers(tiny_shards, tmp_path_factory) -> Path:
    """A run of STEPS steps by two workers, never stopped: the reference of the tests below."""
    root = tmp_path_factory.mktemp("two_workers")
    run = root / "run"
    code, output = _finish(_launch(tiny_shards, run, root / "scratch"), run)
    assert code == 0, output
    return run


def test_the_workers_shares_of_a_batch_are_the_one_worker_batch_split_without_overlap(tiny_shards):
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()  # one worker's own read is ordered only then
    shards = Shards(tiny_shards)
    options = {"training": True, "crop_size": 16, "seed": 3}
    whole = list(shards.batches("train", 8, **options).take(4))
    parts = [list(shards.batches("train", 4, shard=(2, index), **options).take(4)) for index in range(2)]
    for step, batch in enumerate(whole):
        # the same tiles, flipped and cropped alike: compare them as sets of rows
        split = np.concatenate([parts[index][step]["color"] for index in range(2)]).reshape(8, -1)
        assert np.array_equal(np.unique(split, axis=0), np.unique(batch["color"].numpy().reshape(8, -1), axis=0))
    with pytest.raises(ValueError, match="needs a seed"):
        shards.batches("train", 4, shard=(2, 0))


def test_two_replicas_at_batch_b_train_as_one_at_batch_b():
    """In one process (two logical CPUs, MirroredStrategy): the gradients and the synchronised
    BatchNorm statistics of two halves make the step of the whole batch."""
    import tensorflow as tf

    from models.regression import RegressionConfig
    from train import loop
    from train.config import TrainConfig

    config = RegressionConfig(depth=5, base_width=4, max_width=16, dropout_blocks=0)
    train = TrainConfig(precision="float32", learning_rate=1e-2)
    batches = tf.data.Dataset.from_tensors({
        "gray": tf.random.stateless_uniform([8, 32, 32, 1], [0, 1], -1.0, 1.0),
        "color": tf.random.stateless_uniform([8, 32, 32, 2], [0, 2], -0.5, 0.5)}).repeat(3)  # fmt: skip
    variables = []
    for strategy in (tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
        with loop.runtime(train):
            training = loop.build("regression", config, train, total_steps=3, strategy=strategy)
            for batch in strategy.experimental_distribute_dataset(batches):
                training.train_step(batch)
        variables.append({v.path: v.numpy() for v in training.networks["generator"].variables})
    one, two = variables
    assert any("moving_variance" in path for path in one)
    # atol: oneDNN sums the halves' gradients in another order than the whole batch's, which
    # moves a weight of about 1e-2 by up to 1e-6 in 3 steps; statistics of one half only, or
    # gradients summed instead of averaged over the replicas, move some by more than 1e-2.
    for path, value in one.items():
        np.testing.assert_allclose(two[path], value, rtol=1e-5, atol=1e-5, err_msg=path)


@pytest.mark.multiworker
def test_two_workers_at_batch_b_train_as_one_worker_at_batch_b(two_workers, tiny_shards, tmp_path):
    # the chief alone wrote the run folder; the other worker's checkpoints went to a scratch
    # folder it deleted at the end; its output is in RUN/workers
    assert sorted(path.name for path in two_workers.iterdir()) == [
        "best", "ckpt", "config.json", "logs", "loss_curves.png", "metrics.jsonl", "samples", "workers"]  # fmt: skip
    assert list((two_workers.parent / "scratch").iterdir()) == []
    assert f"done: step {STEPS}" in (two_workers / "workers" / "worker-1.log").read_text()
    # the launcher's additions are not part of the run's settings but --strategy
    assert '"strategy": "multi_worker"' in (two_workers / "config.json").read_text()

    one = tmp_path / "one"
    assert main([f"--data={tiny_shards}", f"--run={one}", *SETTINGS]) == 0
    two = _checkpoint_values(two_workers / "ckpt" / f"ckpt-{STEPS}")
    single = _checkpoint_values(one / "ckpt" / f"ckpt-{STEPS}")
    assert two.keys() == single.keys()
    assert int(two["step/.ATTRIBUTES/VARIABLE_VALUE"]) == STEPS
    # Not bit-equal: the all-reduce adds the two halves' gradients and BatchNorm moments in
    # another order than one replica's sums over the whole batch (float32 rounding, ~1e-7
    # relative), which Adam's normalised updates carry on; 8 steps at lr 2e-4 move a weight
    # by up to 1.6e-3, the two runs agree to 1e-5.
    for key, value in single.items():
        np.testing.assert_allclose(two[key], value, rtol=1e-4, atol=1e-5, err_msg=key)


@pytest.mark.multiworker
def test_a_worker_killed_mid_run_stops_the_launcher_and_the_rerun_ends_as_an_unbroken_run(
    two_workers, tiny_shards, tmp_path
):
    run = tmp_path / "run"
    launcher = _launch(tiny_shards, run, tmp_path / "scratch")
    out = run.with_suffix(".out")
    worker_1 = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and launcher.poll() is None:
        if worker_1 is None and "(pids " in out.read_text():
            worker_1 = int(out.read_text().split("(pids ", 1)[1].split(")", 1)[0].split()[1])
        if worker_1 and (run / "ckpt" / "ckpt-2.index").exists():
            os.kill(worker_1, signal.SIGKILL)
            break
        time.sleep(0.01)
    code, output = _finish(launcher, run)
    assert code == 1, output
    assert "train.workers: worker 1 of 2 was killed by SIGKILL" in output
    assert "the same command resumes from there" in output
    assert "another worker stopped answering" in output  # the chief's own message, not a traceback
    stopped_at = max(int(path.stem.split("-")[1]) for path in (run / "ckpt").glob("ckpt-*.index"))
    assert 2 <= stopped_at < STEPS

    code, output = _finish(_launch(tiny_shards, run, tmp_path / "scratch"), run)
    assert code == 0, output
    assert f"resuming {run} at step {stopped_at} of {STEPS}" in output
    # with op determinism two runs of two workers are bit-identical, and so is a resumed one
    resumed = _checkpoint_values(run / "ckpt" / f"ckpt-{STEPS}")
    unbroken = _checkpoint_values(two_workers / "ckpt" / f"ckpt-{STEPS}")
    for key, value in unbroken.items():
        np.testing.assert_array_equal(resumed[key], value, err_msg=key)


def test_the_launcher_refuses_a_strategy_and_needs_a_run(capsys):
    assert workers.main(["--workers=2", "--", "--run=x", "--strategy=mirrored"]) == 2
    assert "--strategy=mirrored: the workers train with --strategy=multi_worker" in capsys.readouterr().err
    assert workers.main(["--workers=2", "--", "--model=regression"]) == 2
    assert "--run is required" in capsys.readouterr().err
