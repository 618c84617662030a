"""Training: steps of every model, the command line, the loop's resume, NaN guard, precision and strategies."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from preprocess import dataset
from models.pix2pix import CGANConfig
from models.regression import RegressionConfig
from train import loop, steps
from train.__main__ import main
from train.config import TrainConfig, resolve

REPO = Path(__file__).resolve().parents[1]
# Small enough for a step in milliseconds; 32 px images need depth 5.
TINY_GENERATOR = {"depth": 5, "base_width": 4, "max_width": 16, "dropout_blocks": 2}
TINY_MODELS = {
    "cgan": CGANConfig(**TINY_GENERATOR, disc_layers=2, disc_base_width=4),
    "regression": RegressionConfig(**TINY_GENERATOR),
}
TINY_ARGS = [f"--{key}={value}" for key, value in TINY_GENERATOR.items()]


def _batch(size: int = 4, seed: int = 0) -> dict[str, tf.Tensor]:
    return {
        "gray": tf.random.stateless_uniform([size, 32, 32, 1], [seed, 1], -1.0, 1.0),
        "color": tf.random.stateless_uniform([size, 32, 32, 2], [seed, 2], -0.5, 0.5),
    }


def _weights(networks: dict[str, keras.Model]) -> dict[str, list[np.ndarray]]:
    return {name: [v.numpy().copy() for v in network.trainable_variables] for name, network in networks.items()}


def test_every_model_has_a_step():
    assert list(steps.STEPS) == list(models.MODELS)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize(
    ("model", "config", "expected"),
    [
        ("cgan", TINY_MODELS["cgan"], {"gen/total", "gen/adversarial", "gen/l1", "disc/total", "disc/real", "disc/fake"}),
        ("cgan", CGANConfig(**{**TINY_GENERATOR, "disc_layers": 2, "disc_base_width": 4, "reconstruction": "mse",
                               "g_steps_per_d_step": 2, "disc_norm": "instance"}),
         {"gen/total", "gen/adversarial", "gen/mse", "disc/total", "disc/real", "disc/fake"}),
        ("regression", TINY_MODELS["regression"], {"gen/l1"}),
    ],
    ids=["cgan", "cgan-mse-2g-instance", "regression"],
)  # fmt: skip
def test_a_step_gives_finite_losses_and_moves_every_network(model, config, expected, compiled):
    networks = models.build(model, config)
    optimizers = {name: keras.optimizers.Adam(2e-4, beta_1=0.5) for name in networks}
    step = steps.get(model)(config)
    if compiled:
        step = tf.function(step)
    before = _weights(networks)
    losses = step(networks, optimizers, _batch())
    assert set(losses) == expected
    assert all(math.isfinite(float(value)) for value in losses.values())
    for name, network in networks.items():
        moved = [not np.array_equal(old, new.numpy()) for old, new in zip(before[name], network.trainable_variables)]
        assert all(moved), f"{name}: some weights did not move"
    g_steps = getattr(config, "g_steps_per_d_step", 1)
    assert int(optimizers["generator"].iterations) == g_steps


def test_discriminator_loss_smooths_real_labels_only():
    big = tf.fill([1, 2, 2, 1], 30.0)
    losses = steps.discriminator_losses(real_logits=big, fake_logits=-big, label_smoothing=0.9)
    # BCE(0.9, 30) = 0.1 * 30 + log(1 + e^-30); the fakes are at target 0: no penalty
    assert float(losses["disc/real"]) == pytest.approx(3.0, rel=1e-4)
    assert float(losses["disc/fake"]) == pytest.approx(0.0, abs=1e-6)


def test_learning_rate_schedules():
    step, scale = tf.Variable(0, dtype=tf.int64), tf.Variable(1.0)
    linear = loop.LearningRate(1.0, TrainConfig(lr_schedule="linear", decay_start=0.5), 100, step, scale)
    constant = loop.LearningRate(1.0, TrainConfig(), 100, step, scale)
    rates = []
    for value in (0, 50, 75, 100):
        step.assign(value)
        rates.append((float(linear(None)), float(constant(None))))
    assert rates == [(1.0, 1.0), (1.0, 1.0), (0.5, 1.0), (0.0, 1.0)]

    state = {"lr_scale": scale, "plateau_best": tf.Variable(math.inf), "plateau_wait": tf.Variable(0, dtype=tf.int64)}
    plateau = TrainConfig(lr_schedule="plateau", plateau_patience=2, plateau_factor=0.5, min_learning_rate=5e-5)
    scales = []
    for val_l1 in (0.3, 0.2, 0.25, 0.21, 0.22, 0.23, 0.24, 0.25, 0.26, 0.27):
        loop.update_plateau(state, plateau, val_l1)
        scales.append(float(state["lr_scale"]))
    # worse twice -> halve; the floor is min_learning_rate / learning_rate = 0.25
    assert scales == [1, 1, 1, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.25]


# ---------------------------------------------------------------------------------------
# the command line


def _args(data: Path, run: Path, *extra: str) -> list[str]:
    return ["--model=cgan", f"--data={data}", f"--run={run}", "--batch_size=4", *TINY_ARGS,
            "--disc_layers=2", "--disc_base_width=4", *extra]  # fmt: skip


def test_cli_types_and_presets(tiny_shards, tmp_path):
    settings = resolve(
        ["--model=cgan", f"--data={tiny_shards}", f"--run={tmp_path}", "--steps=7", "--lambda_l1=50",
         "--deterministic", "--lr_schedule=linear"]  # fmt: skip
    )
    assert settings.train.steps == 7 and settings.train.deterministic is True
    assert settings.model_config.lambda_l1 == 50.0
    # --preset=auto picks the 32 px preset for 32 px tiles; explicit keys win over the preset
    assert settings.preset == 32 and settings.model_config.depth == 5 and settings.model_config.disc_layers == 2
    assert resolve(_args(tiny_shards, tmp_path, "--preset=32", "--depth=4")).model_config.depth == 4


def test_a_run_reads_its_manifest_once_and_records_what_export_needs(tiny_shards, tmp_path, monkeypatch):
    from preprocess import dataset

    opened = []
    real_init = dataset.Shards.__init__
    monkeypatch.setattr(dataset.Shards, "__init__", lambda self, folder: opened.append(folder) or real_init(self, folder))
    assert main(_args(tiny_shards, tmp_path / "run", "--steps=12", "--val_batches=1", "--log_every=4",
                      "--eval_every=6")) == 0  # fmt: skip
    assert len(opened) == 1  # an epoch is 10 steps: the run crossed one
    saved = models.read_run_config(tmp_path / "run")
    assert saved.data == {"tile_size": 32, "steps_per_epoch": 10}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model=zebra"], "unknown model 'zebra'; valid: cgan, regression"),
        (["--model=cgan", "--lamda_l1=1"], "unknown setting --lamda_l1 for --model=cgan; valid: --model, --preset, --data"),
        (["--model=regression", "--label_smoothing=0.9"], "unknown setting --label_smoothing for --model=regression"),
        (["--model=cgan", "--steps=many"], "--steps='many': expected an integer"),
        (["--model=cgan", "--steps"], "--steps needs a value"),
        (["--model=cgan", "--precision=fp8"], "expected one of auto, float32, mixed_bfloat16, mixed_float16"),
        (["--model=cgan", "--data=/nowhere"], "--data=/nowhere: /nowhere/manifest.json: no manifest"),
        (["--model=cgan", "steps=3"], "unexpected argument 'steps=3'"),
        (["--model=cgan", "--crop_size=20"], "needs image sides divisible by 32; the training images are 20 px"),
        (["--model=cgan", "--crop_size=64"], "--crop_size=64 is larger than the 32 px tiles of"),
    ],
)
def test_bad_settings_exit_2_with_one_line(argv, message, tiny_shards, tmp_path, capsys):
    argv = [f"--data={tiny_shards}", f"--run={tmp_path / 'run'}", *argv]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("make train: ") and error.count("\n") == 1
    assert message in error


def test_cli_without_run_or_model(capsys):
    assert main(["--model=cgan"]) == 2
    assert "--run is required" in capsys.readouterr().err
    assert main(["--run=/tmp/nowhere-run"]) == 2
    assert "--model is required; valid: cgan, regression" in capsys.readouterr().err


def test_python_m_train_exits_2_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "train", "--model=cgan", f"--run={tmp_path}", "--data=/nowhere", "--lambda=3"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("make train: unknown setting --lambda")


# ---------------------------------------------------------------------------------------
# the loop


def _checkpoint_values(path: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(path)
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH" and not key.startswith("save_counter")}  # fmt: skip


def test_a_resumed_run_equals_one_that_never_stopped(tiny_shards, tmp_path):
    # 40 train tiles / batch 4 = 10 steps per epoch: the resume at step 6 is mid-epoch and
    # the run crosses an epoch; the plateau schedule with patience 1 changes state on the way.
    common = ["--steps=12", "--deterministic", "--lr_schedule=plateau", "--plateau_patience=1", "--eval_every=2",
              "--log_every=2", "--sample_every=5", "--checkpoint_every=4", "--val_batches=2"]  # fmt: skip
    stopped, unbroken = tmp_path / "stopped", tmp_path / "unbroken"
    assert main(_args(tiny_shards, stopped, *common, "--steps=6")) == 0
    assert sorted(p.name for p in (stopped / "ckpt").glob("*.index")) == ["ckpt-4.index", "ckpt-6.index"]
    assert main(["--model=cgan", f"--run={stopped}", "--steps=12"]) == 0  # the rest comes from config.json
    assert main(_args(tiny_shards, unbroken, *common)) == 0

    resumed = _checkpoint_values(str(stopped / "ckpt" / "ckpt-12"))
    reference = _checkpoint_values(str(unbroken / "ckpt" / "ckpt-12"))
    assert resumed.keys() == reference.keys()
    for key in reference:
        np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)
    # what was compared: weights and Adam moments (stored under the optimizers), iterations,
    # dropout RNG states (only reachable through the explicit variable lists), loop state
    assert any(key.startswith("discriminator_optimizer/_variables/") for key in reference)
    assert any(key.startswith("generator_variables/") for key in reference)
    assert int(reference["step/.ATTRIBUTES/VARIABLE_VALUE"]) == 12
    assert int(reference["generator_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == 12
    assert float(reference["lr_scale/.ATTRIBUTES/VARIABLE_VALUE"]) <= 1.0

    # the run folder: one metrics line per step logged, even across the resume
    records = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    loss_steps = [record["step"] for record in records if "gen/total" in record]
    assert loss_steps == [2, 4, 6, 8, 10, 12]
    for name in ["config.json", "loss_curves.png", "best/best.json", "samples/step-00000005.png",
                 "samples/step-00000012.png"]:  # fmt: skip
        assert (stopped / name).exists(), name
    # TensorBoard files as TensorBoard's own summary ops write them
    plugins = {value.tag: value.metadata.plugin_data.plugin_name for path in (stopped / "logs").glob("events.*")
               for event in tf.compat.v1.train.summary_iterator(str(path)) for value in event.summary.value}  # fmt: skip
    assert plugins["gen/total"] == plugins["val/psnr"] == plugins["lr/discriminator"] == "scalars"
    assert plugins["samples/gray_generated_real"] == "images"
    best = json.loads((stopped / "best" / "best.json").read_text())
    # by default RUN/best is the checkpoint with the highest rebalanced AuC, not the lowest L1
    assert best["val/auc_rebalanced"] == max(record["val/auc_rebalanced"] for record in records
                                             if "val/auc_rebalanced" in record)  # fmt: skip
    assert {"val/colorfulness", "val/colorfulness_truth"} <= set(best)


TF_LOG_LINE = re.compile(r"^[IWEF]\d{4} |cuInit|oneDNN|absl::InitializeLog", re.M)


def _train_process(data: Path, run: Path, *extra: str) -> subprocess.Popen:
    # pipes, not a terminal: what `make train > log` sees; the command quiets TensorFlow itself
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.Popen([sys.executable, "-m", "train", *_args(data, run, *extra)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_the_current_step_and_the_same_command_resumes_there(signal_number, tiny_shards, tmp_path):
    run = tmp_path / "run"
    # 10 steps per epoch (a checkpoint at each epoch end), none other scheduled
    process = _train_process(tiny_shards, run, "--steps=10000", "--checkpoint_every=10000",
                             "--eval_every=10000", "--sample_every=10000", "--log_every=1", "--val_batches=1")  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.jsonl").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal_number)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal_number, err
    match = re.search(rf"make train: {signal.Signals(signal_number).name}: stopped at step (\d+) of 10000 and saved it in "
                      rf"(\S+); the same command resumes from there", err)  # fmt: skip
    assert match, err
    step = int(match.group(1))
    assert match.group(2) == str(run / "ckpt" / f"ckpt-{step}")
    assert tf.train.latest_checkpoint(run / "ckpt") == match.group(2)
    assert int(tf.train.load_checkpoint(match.group(2)).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == step
    # plain output: no TensorFlow log lines, no progress-bar redraws in a pipe
    assert not TF_LOG_LINE.search(err), err
    assert "\r" not in out + err
    if signal_number == signal.SIGINT:
        return  # the resume is the same for both signals: once is enough

    resumed = subprocess.run([sys.executable, "-m", "train", f"--run={run}", f"--steps={step + 2}"], cwd=REPO,
                             capture_output=True, text=True, timeout=180)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run} at step {step} of {step + 2}" in resumed.stdout
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if "gen/total" in record][-2:] == [step + 1, step + 2]


def test_validation_metrics_agree_with_the_report_metrics():
    from evaluate import metrics
    from preprocess import color as color_lib
    from train.loop import colorfulness, rebalanced_auc

    rng = np.random.default_rng(3)
    real = rng.integers(0, 256, [2, 16, 16, 3]).astype(np.uint8)
    fake = np.clip(real.astype(int) + rng.integers(-40, 40, real.shape), 0, 255).astype(np.uint8)
    np.testing.assert_allclose(colorfulness(tf.constant(real)).numpy(),
                               [color_lib.colorfulness(image) for image in real], rtol=1e-4)  # fmt: skip
    prior = rng.integers(0, 1000, len(color_lib.ab_bins()))
    prior[:5] = 0
    _, real_color = color_lib.rgb_to_model(real)
    _, fake_color = color_lib.rgb_to_model(fake)
    ours = rebalanced_auc(real_color, fake_color, tf.constant(metrics.rebalancing_weights(prior), tf.float32)).numpy()
    lab_real = color_lib.rgb_to_lab(real).numpy()
    lab_fake = color_lib.rgb_to_lab(fake).numpy()
    for i in range(2):
        weights = metrics.rebalancing_weights(prior)[color_lib.nearest_bin(lab_real[i, ..., 1:]).numpy()]
        expected = metrics.auc_ab(lab_real[i, ..., 1:], lab_fake[i, ..., 1:], weights)
        assert ours[i] == pytest.approx(expected, abs=2e-3)
    assert 0.0 < ours.min() and ours.max() < 1.0


def test_best_by_ranks_each_metric_the_right_way():
    from train.loop import selection_score

    dull = {"val/l1": 0.05, "val/psnr": 26.0, "val/auc_rebalanced": 0.60}
    vivid = {"val/l1": 0.07, "val/psnr": 24.0, "val/auc_rebalanced": 0.70}
    assert selection_score(vivid, "auc_rebalanced") > selection_score(dull, "auc_rebalanced")
    assert selection_score(dull, "psnr") > selection_score(vivid, "psnr")
    assert selection_score(dull, "l1") > selection_score(vivid, "l1")


def test_resume_keeps_the_model_and_allows_new_training_settings(tiny_shards, tmp_path):
    run = tmp_path / "run"
    assert main(_args(tiny_shards, run, "--steps=2", "--val_batches=1")) == 0
    settings = resolve([f"--run={run}", "--steps=4", "--log_every=1"])
    assert settings.resumed and settings.model == "cgan" and settings.train.data == str(tiny_shards)
    assert settings.model_config == models.read_run_config(run).model_config
    with pytest.raises(models.ConfigError, match=r"other model settings \(depth 5 -> 4"):
        resolve([f"--run={run}", "--depth=4"])
    with pytest.raises(models.ConfigError, match="is a cgan run; --model=regression needs a new --run"):
        resolve([f"--run={run}", "--model=regression"])


def _nan_after(limit: int, *, weights: bool = False):
    """A regression step factory that breaks after `limit` updates: NaN losses, or NaN weights with finite losses."""

    def factory(config):
        real_step = steps.regression_step(config)

        def step(networks, optimizers, batch):
            losses = real_step(networks, optimizers, batch)
            broken = optimizers["generator"].iterations > limit
            if weights:
                kernel = networks["generator"].trainable_variables[0]
                kernel.assign(tf.where(broken, math.nan, kernel))
                return losses
            return {name: tf.where(broken, math.nan, value) for name, value in losses.items()}

        return step

    return factory


@pytest.mark.parametrize(
    ("limit", "weights", "message"),
    [
        (4, False, "loss became NaN/Inf at step 5 (gen/l1=nan); the last good checkpoint is step 4 in "),
        # step 6 breaks the weights but reports the finite losses computed before; its save catches it
        (5, True, "a weight became NaN/Inf by step 6; the last good checkpoint is step 3 in "),
    ],
    ids=["loss", "weights"],
)
def test_nan_guard_stops_and_never_saves_nan(limit, weights, message, tiny_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(steps.STEPS, "regression", _nan_after(limit, weights=weights))
    run = tmp_path / "run"
    every = "--checkpoint_every=3" if weights else "--checkpoint_every=2"
    argv = ["--model=regression", f"--data={tiny_shards}", f"--run={run}", "--batch_size=4", "--steps=9",
            "--eval_every=100", "--val_batches=1", every, *TINY_ARGS]  # fmt: skip
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert message + str(run / "ckpt") in error
    for index in (run / "ckpt").glob("*.index"):
        values = _checkpoint_values(str(index.with_suffix("")))
        # (not isfinite: the best validation L1 starts at +inf)
        assert not any(np.isnan(value).any() for value in values.values() if value.dtype.kind == "f"), index


def _train_two_steps(train: TrainConfig, model: str = "cgan", strategy=None) -> loop.Training:
    with loop.runtime(train):
        training = loop.build(model, TINY_MODELS[model], train, total_steps=10, strategy=strategy)
        before = _weights(training.networks)
        batches = tf.data.Dataset.from_tensors(_batch(8)).repeat(2)
        for batch in training.strategy.experimental_distribute_dataset(batches):
            losses, finite = training.train_step(batch)
            assert bool(finite), losses
    assert not np.array_equal(before["generator"][0], _weights(training.networks)["generator"][0])
    assert int(training.state["step"].numpy()) == 2
    return training


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_steps_are_finite(precision):
    training = _train_two_steps(TrainConfig(precision=precision))
    layer = training.networks["generator"].get_layer("down2_conv")
    assert layer.compute_dtype == precision.removeprefix("mixed_")
    if precision == "mixed_float16":
        assert isinstance(training.optimizers["generator"], keras.optimizers.LossScaleOptimizer)


def test_jit_compiled_step():
    _train_two_steps(TrainConfig(jit_compile=True), model="regression")


def test_mirrored_strategy_on_two_replicas(tiny_shards, tmp_path):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    training = _train_two_steps(TrainConfig(), strategy=strategy)
    kernel = training.networks["generator"].trainable_variables[0].value
    replicas = strategy.experimental_local_results(kernel)
    assert len(replicas) == 2
    np.testing.assert_array_equal(replicas[0], replicas[1])

    # and the whole loop (validation, samples, checkpoints) under it
    settings = resolve(_args(tiny_shards, tmp_path / "run", "--steps=3", "--val_batches=1"))
    metrics = loop.run(settings, strategy=tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    assert math.isfinite(metrics["val/l1"]) and math.isfinite(metrics["gen/total"])
    assert (tmp_path / "run" / "ckpt" / "ckpt-3.index").exists()


def test_precision_auto_is_bf16_on_cpus_with_bf16_units_and_recorded_as_resolved(tiny_shards, tmp_path, monkeypatch):
    from train import config as config_lib

    monkeypatch.setattr(config_lib, "cpu_has_bf16_units", lambda: True)
    assert config_lib.default_precision() == "mixed_bfloat16"
    settings = resolve(["--model=regression", f"--data={tiny_shards}", f"--run={tmp_path / 'run'}"])
    assert settings.train.precision == "mixed_bfloat16"
    assert resolve(["--model=regression", f"--data={tiny_shards}", f"--run={tmp_path / 'other'}",
                    "--precision=float32"]).train.precision == "float32"  # fmt: skip
    monkeypatch.setattr(config_lib, "cpu_has_bf16_units", lambda: False)
    assert config_lib.default_precision() == "float32"
    with loop.runtime(TrainConfig()):
        assert keras.mixed_precision.global_policy().name == "float32"


def test_cpu_bf16_units_are_read_from_the_cpu_flags(monkeypatch, tmp_path):
    from train import config as config_lib

    cpuinfo = tmp_path / "cpuinfo"
    real_open = open
    for flags, expected in (("fpu avx512f amx_bf16 amx_tile", True), ("fpu avx512f avx512_bf16", True),
                            ("fpu avx2 avx512f", False)):  # fmt: skip
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        def fake_open(path, *args, **kwargs):
            return real_open(cpuinfo if path == "/proc/cpuinfo" else path, *args, **kwargs)

        monkeypatch.setattr("builtins.open", fake_open)
        assert config_lib.cpu_has_bf16_units() is expected


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the project sets oneDNN on x86 CPUs only")
def test_the_project_runs_tensorflow_on_onednn_kernels_unless_the_user_said_otherwise():
    """Without it, TensorFlow uses Eigen's 2-3x slower convolution gradients on x86 CPUs without
    AVX512-VNNI, AVX512-BF16 or AMX (BENCHMARKS.md, "oneDNN on every x86 CPU")."""
    probe = ("import train, tensorflow\n"
             "from tensorflow.python.util import _pywrap_util_port\n"
             "print(_pywrap_util_port.IsMklEnabled())")  # fmt: skip
    environment = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    for users_value, expected in ((None, "True"), ("0", "False")):
        env = environment if users_value is None else {**environment, "TF_ENABLE_ONEDNN_OPTS": users_value}
        result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        assert result.stdout.split()[-1] == expected, (users_value, result.stdout)


# ---------------------------------------------------------------------------------------
# fine-tuning (--init_from) and several scales (--scales)

# depth 4: sides divisible by 16, so that 32 px tiles can also train at 16 px
SMALL_REGRESSION = ["--model=regression", "--depth=4", "--base_width=4", "--max_width=16", "--dropout_blocks=1",
                    "--batch_size=4", "--val_batches=1", "--sample_images=2", "--deterministic"]  # fmt: skip


def _regression(data: Path, run: Path, *extra: str) -> list[str]:
    return [f"--data={data}", f"--run={run}", *SMALL_REGRESSION, *extra]


def test_scaled_batches_take_their_sizes_in_turn_and_are_the_photos_made_smaller(tiny_shards):
    tf.config.experimental.enable_op_determinism()  # the same shuffle twice (conftest turns it off again)
    shards = dataset.Shards(tiny_shards)
    common = {"training": True, "seed": 3}
    plain = list(shards.batches("train", 4, **common).take(6))
    scaled = list(shards.batches("train", 4, sizes=(32, 16), batches_per_size=2, **common).take(6))
    assert [batch["gray"].shape[1] for batch in scaled] == [32, 32, 16, 16, 32, 32]
    for before, after in zip(plain, scaled):
        if after["gray"].shape[1] == 32:
            np.testing.assert_array_equal(before["color"], after["color"])
        else:
            # a 2x smaller photo keeps its average colour (within the rounding to uint8)
            np.testing.assert_allclose(tf.reduce_mean(after["color"], [1, 2]), tf.reduce_mean(before["color"], [1, 2]),
                                       atol=0.02)  # fmt: skip
            assert after["color"].dtype == before["color"].dtype


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scales=1,0.3"], "--scales=1,0.3 makes 32 px images 10 px; --model=regression needs sides divisible by 16"),
        (["--scales=2"], "--scales=2: each must be in (0, 1]"),
        (["--scales=big"], "--scales=big: expected comma-separated numbers"),
        (["--init_from=/nowhere/run"], "--init_from=/nowhere/run: neither a run folder"),
    ],
)
def test_bad_scales_and_init_from_exit_2_with_one_line(extra, message, tiny_shards, tmp_path, capsys):
    assert main(_regression(tiny_shards, tmp_path / "run", *extra)) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error


def test_a_multiscale_run_trains_at_both_sizes_and_resumes_exactly(tiny_shards, tmp_path):
    common = ["--scales=1,0.5", "--steps=6", "--eval_every=3", "--log_every=1", "--checkpoint_every=2"]
    stopped, unbroken = tmp_path / "stopped", tmp_path / "unbroken"
    assert main(_regression(tiny_shards, stopped, *common, "--steps=3")) == 0
    assert models.read_run_config(stopped).model_config.sides == (32, 16)  # a batch-norm statistics set per size
    assert main(["--model=regression", f"--run={stopped}", "--steps=6"]) == 0
    assert main(_regression(tiny_shards, unbroken, *common)) == 0
    resumed, reference = (_checkpoint_values(str(run / "ckpt" / "ckpt-6")) for run in (stopped, unbroken))
    for key in reference:
        np.testing.assert_array_equal(resumed[key], reference[key], err_msg=key)
    assert models.read_run_config(stopped).train_config["scales"] == "1,0.5"


def test_init_from_starts_a_new_run_from_another_runs_weights(tiny_shards, tmp_path):
    source, tuned, fresh = tmp_path / "source", tmp_path / "tuned", tmp_path / "fresh"
    assert main(_regression(tiny_shards, source, "--steps=4", "--learning_rate=0.01")) == 0
    # one step of a small rate: a warm start stays within it of the source's weights
    once = ["--steps=1", "--learning_rate=1e-5"]
    assert main(_regression(tiny_shards, tuned, *once, f"--init_from={source}")) == 0
    assert main(_regression(tiny_shards, fresh, *once)) == 0
    weights = {run: _checkpoint_values(str(run / "ckpt" / f"ckpt-{steps}"))
               for run, steps in ((source, 4), (tuned, 1), (fresh, 1))}  # fmt: skip
    # the convolution kernels (the weights are stored once, in the list of every variable)
    kernels = [key for key, value in weights[source].items() if key.startswith("generator_variables/")
               and value.ndim == 4]  # fmt: skip
    assert kernels
    for key in kernels:
        np.testing.assert_allclose(weights[tuned][key], weights[source][key], atol=1e-4, err_msg=key)
    assert any(np.abs(weights[fresh][key] - weights[source][key]).max() > 1e-2 for key in kernels)
    # only the weights: the new run counts its own steps and its optimizer starts afresh
    assert int(weights[tuned]["step/.ATTRIBUTES/VARIABLE_VALUE"]) == 1
    assert int(weights[tuned]["generator_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == 1


def test_init_from_continues_the_source_runs_model_settings_unless_given(tiny_shards, tmp_path):
    source = tmp_path / "source"
    assert main(_regression(tiny_shards, source, "--steps=1", "--reconstruction=mse")) == 0
    trained = models.read_run_config(source).model_config
    bare = [f"--data={tiny_shards}", "--model=regression", f"--init_from={source}"]
    # not the preset's depth 5 and L1: a fine-tune of a model is that model
    assert resolve([*bare, f"--run={tmp_path / 'a'}"]).model_config == trained
    given = resolve([*bare, f"--run={tmp_path / 'b'}", "--reconstruction=l1"]).model_config
    assert given == dataclasses.replace(trained, reconstruction="l1")
    # a statistics set per size: the checkpoint's one starts each (models.start_missing_statistics)
    scaled = resolve([*bare, f"--run={tmp_path / 'c'}", "--scales=1,0.5"]).model_config
    assert scaled == dataclasses.replace(trained, statistics_sides="32,16")


def test_init_from_refuses_another_model_or_other_shapes(tiny_shards, tmp_path, capsys):
    source = tmp_path / "source"
    assert main(_regression(tiny_shards, source, "--steps=1")) == 0
    capsys.readouterr()
    assert main(_args(tiny_shards, tmp_path / "cgan", "--steps=1", f"--init_from={source}")) == 2
    assert f"--init_from={source} is a regression run, not --model=cgan" in capsys.readouterr().err
    wider = _regression(tiny_shards, tmp_path / "wider", "--steps=1", f"--init_from={source}", "--base_width=8")
    assert main(wider) == 2
    error = capsys.readouterr().err
    assert f"--init_from={source}: {source}/ckpt/ckpt-1 does not fit this model" in error
    assert not (tmp_path / "wider" / "config.json").exists()
