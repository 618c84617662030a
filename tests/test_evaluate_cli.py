"""make evaluate end to end: tiny runs and an export scored on tiny shards."""

import json

import numpy as np
import tensorflow as tf
from PIL import Image

import models
from evaluate.__main__ import main
from tests.helpers import TrainSettings, make_run, tiny_generator


def test_runs_and_an_export_are_scored_beside_the_baseline(tmp_path, tiny_shards, exported):
    run = make_run(tmp_path / "tiny-run")
    export_dir = exported
    arguments = [f"--run={run}", f"--export={export_dir.parent}", f"--data={tiny_shards}", "--split=val",
                 "--limit=6", f"--out={tmp_path / 'reports'}", "--name=tiny", "--grid=3"]  # fmt: skip
    assert main(arguments) == 0
    report = tmp_path / "reports" / "tiny"
    results = json.loads((report / "metrics.json").read_text())
    assert list(results["models"]) == ["baseline", "tiny-run", "regression v1"]
    assert len(results["images"]) == 6
    assert results["models"]["baseline"]["mean"]["colorfulness"] < 1.0
    # the same generator through the run and through its export: the same colours, within a level
    run_scores, export_scores = (results["models"][name]["per_image"] for name in ("tiny-run", "regression v1"))
    for ours, theirs in zip(run_scores, export_scores):
        assert abs(ours["mae_ab"] - theirs["mae_ab"]) < 0.5
    assert "auc_rebalanced" not in results["models"]["baseline"]["mean"]  # the fixture's shards have no prior
    table = (report / "metrics.md").read_text()
    assert "| baseline |" in table and "| tiny-run |" in table and "| regression v1 |" in table
    assert Image.open(report / "grid.png").size[0] > 0


def test_every_checkpoint_of_a_run_is_plotted_by_epoch(tmp_path, tiny_shards):
    run = make_run(tmp_path / "run", train=TrainSettings(data=str(tiny_shards)))
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(generator=tiny_generator(seed=1)), str(run / models.CHECKPOINT_DIR), max_to_keep=3
    )
    manager.save(checkpoint_number=20)
    manager.save(checkpoint_number=40)
    assert main([f"--run={run}", "--checkpoints=all", f"--data={tiny_shards}", "--limit=4",
                 f"--out={tmp_path / 'reports'}", "--name=epochs"]) == 0  # fmt: skip
    results = json.loads((tmp_path / "reports" / "epochs" / "metrics.json").read_text())
    assert list(results["models"]) == ["baseline", "run@20", "run@40"]
    assert (tmp_path / "reports" / "epochs" / "metrics_by_epoch.png").exists()


def test_bad_settings_exit_2_with_a_message(tmp_path, tiny_shards, capsys):
    assert main([f"--data={tiny_shards}"]) == 2
    assert "RUN=" in capsys.readouterr().err
    assert main([f"--run={tmp_path / 'nothing'}", f"--data={tiny_shards}"]) == 2
    assert "not a run folder" in capsys.readouterr().err
    run = make_run(tmp_path / "run")
    assert main([f"--run={run}", f"--data={tmp_path / 'missing'}"]) == 2
    assert "neither a shards folder nor a folder of photos" in capsys.readouterr().err


def test_models_colorize_in_calls_that_bound_the_working_pixels():
    from evaluate.__main__ import in_calls

    calls = []

    def recording(rgb):
        calls.append(len(rgb))
        return rgb[..., ::-1]

    photos = np.random.default_rng(0).integers(0, 256, [10, 32, 32, 3], dtype=np.uint8)
    # 32 px photos counted at a 64 px working size, 3 copies each: 2 photos per call
    colorized = in_calls(recording, size=64, copies=3, max_pixels=2 * 3 * 64 * 64)(photos)
    assert calls == [2, 2, 2, 2, 2]
    np.testing.assert_array_equal(colorized, photos[..., ::-1])
    calls.clear()
    in_calls(recording, size=16, max_pixels=1)(photos)  # never fewer than one photo a call
    assert calls == [1] * 10
