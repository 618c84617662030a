"""The side-by-side benchmark without torch: its run order, medians and ratios, the section
it writes, how it reads bench_peer.py's output and how it rejects an incomplete setup."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from preprocess.bench import write_section
from train import peer_bench
from train.peer_bench import CASES, REFERENCE, Case, Measurement, PeerSetupError

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("float32", "mixed_bfloat16")
TRAIN_32, INFER_256 = CASES[0], CASES[3]


def _record(case: Case, images_per_sec: float = 2.0, **extra) -> dict:
    return {"case": case.peer_case, "batch": case.batch, "images_per_sec": images_per_sec,
            "sec_per_step": case.batch / images_per_sec, "cpu_util": 1.9, "threads": 2, **extra}  # fmt: skip


def test_schedule_times_both_sides_of_a_case_back_to_back_in_every_round():
    plan = peer_bench.schedule([TRAIN_32, INFER_256], PRECISIONS, rounds=2)
    sides = (*PRECISIONS, REFERENCE)
    expected = [(r, case, side) for r in (1, 2) for case in (TRAIN_32, INFER_256) for side in sides]
    assert plan == expected
    assert [side for _, _, side in plan[:6]] == ["float32", "mixed_bfloat16", "reference"] * 2


@pytest.mark.parametrize("flags, winograd_cases", [("avx2 fma", 3), ("avx2 avx512f avx512_bf16", 0)])
def test_winograd_export_cases_are_timed_only_where_the_project_takes_winograd(monkeypatch, flags, winograd_cases):
    from models import unet

    monkeypatch.setattr(unet, "cpu_flags", lambda: frozenset(flags.split()))
    cases = peer_bench.cases_to_time()
    assert sum(case.kind == "generator-winograd" for case in cases) == winograd_cases
    assert len(cases) == len(CASES) - 3 + winograd_cases
    assert peer_bench.cases_to_time([TRAIN_32.id, INFER_256.id]) == [TRAIN_32, INFER_256]


def test_run_measures_in_plan_order_and_the_reference_as_many_steps_as_the_project():
    calls = []
    project_steps = {(1, "float32"): 40, (1, "mixed_bfloat16"): 90, (2, "float32"): 30, (2, "mixed_bfloat16"): 20}

    def measure(case: Case, side: str, steps: int) -> dict:
        calls.append((case.id, side, steps))
        number = 1 + (len(calls) - 1) // 3
        steps_taken = steps if side == REFERENCE else project_steps[number, side]
        return {"images_per_sec": float(len(calls)), "cpu_util": 1.5, "sec_per_step": 1.0, "steps": steps_taken}

    plan = peer_bench.schedule([TRAIN_32], PRECISIONS, rounds=2)
    measurements = peer_bench.run(plan, measure)
    # the reference times as many steps as the project's longest measurement of that round
    assert calls == [(TRAIN_32.id, "float32", 0), (TRAIN_32.id, "mixed_bfloat16", 0), (TRAIN_32.id, REFERENCE, 90),
                     (TRAIN_32.id, "float32", 0), (TRAIN_32.id, "mixed_bfloat16", 0), (TRAIN_32.id, REFERENCE, 30)]
    assert [(m.round, m.side, m.images_per_sec, m.steps) for m in measurements] == [
        (1, "float32", 1.0, 40), (1, "mixed_bfloat16", 2.0, 90), (1, REFERENCE, 3.0, 90),
        (2, "float32", 4.0, 30), (2, "mixed_bfloat16", 5.0, 20), (2, REFERENCE, 6.0, 30)]  # fmt: skip


def _measurements() -> list[Measurement]:
    """Three rounds of two cases; the third round of the reference was contended (low CPU util)."""
    figures = {
        (TRAIN_32, "float32"): [10.0, 30.0, 20.0],
        (TRAIN_32, "mixed_bfloat16"): [40.0, 40.0, 41.0],
        (TRAIN_32, REFERENCE): [5.0, 100.0, 10.0],
        (INFER_256, "float32"): [3.0, 3.0, 3.0],
        (INFER_256, "mixed_bfloat16"): [6.0, 6.0, 6.0],
        (INFER_256, REFERENCE): [1.5, 1.5, 0.5],
    }
    return [Measurement(r + 1, case, side, values[r], 0.7 if (side == REFERENCE and r == 2) else 1.95, 12)
            for r in range(3) for (case, side), values in figures.items()]  # fmt: skip


def test_ratios_divide_the_medians_over_rounds():
    ratio = peer_bench.ratios(_measurements(), PRECISIONS)
    assert ratio[TRAIN_32, "float32"] == pytest.approx(20.0 / 10.0)
    assert ratio[TRAIN_32, "mixed_bfloat16"] == pytest.approx(40.0 / 10.0)
    assert ratio[INFER_256, "float32"] == pytest.approx(3.0 / 1.5)
    assert ratio[INFER_256, "mixed_bfloat16"] == pytest.approx(6.0 / 1.5)


def test_section_replaces_its_own_block_and_shows_every_measurement(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n<!-- train:begin -->\n## make train\nkept\n<!-- train:end -->\n")
    context = dict(machine="Test CPU (avx512_bf16), 2 cores", torch_version="9.9", threads=2, iters=5, warmup=2,
                   min_seconds=4.0, command="python -m train.peer_bench --rounds=3", date="2025-01-02 03:04 UTC")  # fmt: skip
    write_section("peer", "## stale figures\n", path)
    write_section("peer", peer_bench.section(_measurements(), PRECISIONS, **context), path)
    text = path.read_text()
    assert text.count("<!-- peer:begin -->") == 1 and "stale figures" not in text
    assert "<!-- train:begin -->\n## make train\nkept\n<!-- train:end -->" in text
    for detail in ["Test CPU (avx512_bf16), 2 cores", "PyTorch 9.9", "2025-01-02 03:04 UTC",
                   "`python -m train.peer_bench --rounds=3`", "0.70 to 1.95", "at least 5 steps and as many as fill 4 s"]:  # fmt: skip
        assert detail in text
    summary = f"| {TRAIN_32.label} | {TRAIN_32.reference} | 20.0 | 40.0 | 10.0 | 2.00x | 4.00x |"
    assert summary in text
    # every measurement, with its CPU utilisation: the contended reference run shows
    assert f"| 3 | {INFER_256.label} | 3.00 (1.95, 12 steps) | 6.00 (1.95, 12 steps) | 0.500 (0.70, 12 steps) |" in text
    assert text.count(f"| {TRAIN_32.label} |") == 4  # one summary row, three rounds


def test_parse_peer_output_picks_the_case_among_other_lines():
    stdout = "\n".join(["initialize network with normal", json.dumps(_record(CASES[1])),
                        json.dumps(_record(CASES[2], 3.0)), ""])  # fmt: skip
    assert peer_bench.parse_peer_output(stdout, CASES[2])["images_per_sec"] == 3.0


@pytest.mark.parametrize(
    "lines, message",
    [
        ([], "printed 0 records of pix2pix_colorization_train_step_unet256_256px:4"),
        ([_record(CASES[2]), _record(CASES[2])], "printed 2 records"),
        ([{k: v for k, v in _record(CASES[2]).items() if k != "cpu_util"}], "lacks cpu_util"),
    ],
)
def test_parse_peer_output_rejects_missing_or_incomplete_records(lines, message):
    with pytest.raises(PeerSetupError, match=message):
        peer_bench.parse_peer_output("\n".join(json.dumps(line) for line in lines), CASES[2])


def test_time_reference_runs_the_script_on_one_case_with_peer_src(tmp_path):
    """A stand-in for bench_peer.py that reports what it was asked."""
    script = tmp_path / "fake_bench_peer.py"
    script.write_text(
        "import argparse, json, os\n"
        "p = argparse.ArgumentParser()\n"
        "for a in ('--threads', '--iters', '--warmup'): p.add_argument(a, type=int)\n"
        "p.add_argument('--only', nargs='*')\n"
        "a = p.parse_args()\n"
        "case, batch = a.only[0].strip('^$').split(':')\n"
        "print('progress line')\n"
        "print(json.dumps({'case': case, 'batch': int(batch), 'images_per_sec': 2.0, 'sec_per_step': 0.5,\n"
        "                  'cpu_util': 1.9, 'threads': a.threads, 'iters': a.iters, 'warmup': a.warmup,\n"
        "                  'only': a.only, 'peer_src': os.environ['PEER_SRC']}))\n"
    )
    peer = peer_bench.Peer(tmp_path / "src", sys.executable, script, threads=3)
    record = peer_bench.time_reference(peer, CASES[4], iters=7, warmup=2)
    assert record["only"] == ["^pix2pix_unet256_inference_256px:16$"]
    assert (record["threads"], record["iters"], record["warmup"], record["steps"]) == (3, 7, 2, 7)
    assert record["peer_src"] == str((tmp_path / "src").resolve())


def test_check_peer_src_names_each_missing_file(tmp_path):
    for name in peer_bench.REFERENCE_FILES[:-1]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    with pytest.raises(PeerSetupError, match="lacks colorization/colorizers/eccv16.py: clone"):
        peer_bench.check_peer_src(tmp_path)
    (tmp_path / peer_bench.REFERENCE_FILES[-1]).write_text("")
    peer_bench.check_peer_src(tmp_path)


def test_check_peer_python_says_torch_is_missing(tmp_path):
    """A Python without site-packages stands for one without torch."""
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "$@"\n')
    python.chmod(0o755)
    with pytest.raises(PeerSetupError, match=f"PEER_PYTHON={python} has no torch; the reference side needs torch"):
        peer_bench.check_peer_python(str(python))
    with pytest.raises(PeerSetupError, match="cannot run"):
        peer_bench.check_peer_python(str(tmp_path / "no-such-python"))


def test_main_rejects_an_incomplete_setup_before_timing_anything(tmp_path, capsys):
    with pytest.raises(SystemExit):
        peer_bench.main(["--peer-python=python3"])
    assert "both PEER_SRC (--peer-src) and PEER_PYTHON (--peer-python) are needed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        peer_bench.main([f"--peer-src={tmp_path}", "--peer-python=python3"])
    assert "pix2pix/models/networks.py" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        peer_bench.main([f"--peer-src={tmp_path}", "--peer-python=python3", "--only", "no-such-case"])
    error = capsys.readouterr().err
    assert "invalid choice: 'no-such-case'" in error and CASES[-1].id in error
    with pytest.raises(SystemExit):
        peer_bench.main([f"--peer-src={tmp_path}", "--peer-python=python3", "--min-seconds=-1"])
    assert "--min-seconds not negative" in capsys.readouterr().err


def test_timed_warms_up_then_reports_the_median_step():
    calls = []
    result = peer_bench.timed(lambda: calls.append(1), batch=4, iters=3, warmup=2)
    assert len(calls) == 5 and result["steps"] == 3
    assert result["images_per_sec"] == pytest.approx(4 / result["sec_per_step"])
    assert result["cpu_util"] >= 0.0


def test_timed_keeps_stepping_until_min_seconds_have_passed():
    result = peer_bench.timed(lambda: time.sleep(0.01), batch=1, iters=2, warmup=1, min_seconds=0.2)
    # 0.2 s of 10 ms steps, which a busy machine may stretch: never more than 21, well over the 2 asked for
    assert 2 < result["steps"] <= 21 and result["steps"] * result["sec_per_step"] >= 0.15


def test_time_project_runs_the_generator_at_a_preset():
    result = peer_bench.time_project("generator", "cgan", 32, 2, "float32", iters=1, warmup=1)
    assert result["images_per_sec"] > 0 and result["cpu_util"] > 0


def _make_bench(*variables: str) -> str:
    return subprocess.run(["make", "-n", "bench", *variables], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def test_make_bench_without_peer_variables_runs_the_project_benchmarks():
    commands = _make_bench()
    for stage in ["preprocess.bench", "train.bench --model=regression", "train.bench --model=zhang",
                  "export.bench --model=iizuka"]:  # fmt: skip
        assert f"-m {stage}" in commands
    assert "peer_bench" not in commands


def test_make_bench_with_peer_variables_runs_the_side_by_side():
    commands = _make_bench("PEER_SRC=/src", "PEER_PYTHON=/torch/python", "ARGS=--rounds=2")
    assert "-m train.peer_bench --peer-src='/src' --peer-python='/torch/python'" in commands
    assert "--rounds=2" in commands and "preprocess.bench" not in commands


def test_train_bench_times_any_model_and_writes_a_profile_trace(tmp_path):
    from train import bench

    # regression's step has no "gen/total": the timer waits on whatever loss the step returns
    result = bench.time_steps("regression", 32, 2, "float32", seconds=0.0, profile=tmp_path / "profile")
    assert result["images_per_second"] > 0 and result["cpu_util"] > 0 and result["peak_mib"] > 0
    assert list((tmp_path / "profile").rglob("*.xplane.pb")), "no trace for TensorBoard's profiler"
