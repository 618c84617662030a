"""`make bench PEER_SRC=... PEER_PYTHON=...`: the project side by side with the PyTorch
implementations a user would otherwise pick, in images per second on this machine. Writes
the `peer` section of BENCHMARKS.md.

The references are junyanz/pytorch-CycleGAN-and-pix2pix (pix2pix, `--model colorization`)
and richzhang/colorization (the ECCV16 network). They are not part of this project: a user
clones the two repositories into PEER_SRC/pix2pix and PEER_SRC/colorization and makes a
Python with torch (PEER_PYTHON). Their side is timed by bench_peer.py (`--peer-bench`),
which builds the references' models with their own defaults and prints one JSON line per
case; this module runs it under PEER_PYTHON and reads those lines.

Why interleaved: a shared machine's speed drifts by up to 2x between runs, so a project
figure and a reference figure from different runs say little. Every round times each case
on the project side (each precision) and then on the reference side, back to back, each
measurement in a fresh process; the table gives medians over the rounds, and every
measurement's CPU utilisation (process CPU seconds / wall seconds over the timed steps,
close to the thread count on an idle machine) shows which ones other processes slowed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from preprocess.console import quiet_tensorflow

quiet_tensorflow()  # before anything imports TensorFlow: a benchmark's report stays readable

from train.bench import PRECISIONS, run_one, synthetic_training, wait  # noqa: E402
from train.config import cpu_has_bf16_units  # noqa: E402

REFERENCE = "reference"  # the side of a measurement that is not one of the project's precisions
DEFAULT_PEER_BENCH = Path(__file__).resolve().parents[2] / "shared" / "peer" / "bench_peer.py"

# The files bench_peer.py imports, as the two clones lay them out under PEER_SRC.
REFERENCE_FILES = (
    "pix2pix/models/__init__.py",
    "pix2pix/models/base_model.py",
    "pix2pix/models/networks.py",
    "pix2pix/models/pix2pix_model.py",
    "colorization/colorizers/base_color.py",
    "colorization/colorizers/eccv16.py",
)
# eccv16.py imports numpy and IPython at its top, beside torch.
PEER_MODULES = ("torch", "numpy", "IPython")
PEER_RECORD_KEYS = ("case", "batch", "images_per_sec", "sec_per_step", "cpu_util", "threads")


class PeerSetupError(Exception):
    """PEER_SRC, PEER_PYTHON or bench_peer.py is missing something; the message says what."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One row: a project configuration and the reference configuration it is compared with."""

    # a training step; the generator's forward pass as `make export` freezes it, or as `--winograd` does
    kind: Literal["train", "generator", "generator-winograd"]
    model: str  # the project's model name (models.MODELS), at its preset for `size`
    size: int
    batch: int
    peer_case: str  # bench_peer.py's case name; it is selected by "peer_case:batch"
    reference: str  # what the reference side runs, for the table

    @property
    def id(self) -> str:
        return f"{self.model}-{self.kind}-{self.size}px-b{self.batch}"

    @property
    def label(self) -> str:
        what = {"train": "train step", "generator": "generator inference",
                "generator-winograd": "generator inference, --winograd export"}[self.kind]  # fmt: skip
        return f"{self.model} {what}, {self.size} px, batch {self.batch}"


_PIX2PIX_256 = "pix2pix `optimize_parameters`, unet_256 + 70x70 PatchGAN"
_PIX2PIX_FORWARD = "pix2pix unet_256 forward (eval)"
_ECCV16_FORWARD = "ECCV16 forward (eval), softmax to ab, x4 upsampling"
CASES = (
    Case("train", "cgan", 32, 64, "pix2pix_colorization_train_step_unet5down_32px",
         "pix2pix `optimize_parameters`, 5-level U-Net + 70x70 PatchGAN"),
    Case("train", "cgan", 256, 1, "pix2pix_colorization_train_step_unet256_256px", _PIX2PIX_256),
    Case("train", "cgan", 256, 4, "pix2pix_colorization_train_step_unet256_256px", _PIX2PIX_256),
    Case("generator", "cgan", 256, 1, "pix2pix_unet256_inference_256px", _PIX2PIX_FORWARD),
    Case("generator", "cgan", 256, 16, "pix2pix_unet256_inference_256px", _PIX2PIX_FORWARD),
    Case("generator", "zhang", 256, 8, "eccv16_inference_256px", _ECCV16_FORWARD),
    Case("generator-winograd", "cgan", 256, 1, "pix2pix_unet256_inference_256px", _PIX2PIX_FORWARD),
    Case("generator-winograd", "cgan", 256, 16, "pix2pix_unet256_inference_256px", _PIX2PIX_FORWARD),
    Case("generator-winograd", "zhang", 256, 8, "eccv16_inference_256px", _ECCV16_FORWARD),
    Case("train", "zhang", 256, 8, "eccv16_train_step_ce313_256px_in_64px_out",
         "ECCV16 classification step: 313-way cross-entropy at 1/4 size, Adam"),
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Measurement:
    round: int
    case: Case
    side: str  # a precision of the project, or REFERENCE
    images_per_sec: float
    cpu_util: float  # process CPU seconds / wall seconds over the timed steps
    steps: int  # timed steps


@dataclasses.dataclass(frozen=True)
class Peer:
    """Where the reference side comes from and how it runs."""

    src: Path  # PEER_SRC
    python: str  # PEER_PYTHON
    script: Path  # bench_peer.py
    threads: int  # torch.set_num_threads


# ---------------------------------------------------------------------------------------- the plan


def cases_to_time(only: Sequence[str] | None = None) -> list[Case]:
    """CASES, or those named in `only`; without the --winograd export's cases on a CPU where
    the project never takes Winograd's algorithm (they would time the default export again)."""
    from models import unet

    return [case for case in CASES if (not only or case.id in only)
            and (case.kind != "generator-winograd" or unet.winograd_on_this_cpu())]  # fmt: skip


def schedule(cases: Sequence[Case], precisions: Sequence[str], rounds: int) -> list[tuple[int, Case, str]]:
    """(round, case, side) in run order: each round times every case on each of the project's
    precisions and then on the reference, so the two sides of a case are seconds apart."""
    return [(number, case, side) for number in range(1, rounds + 1) for case in cases
            for side in (*precisions, REFERENCE)]  # fmt: skip


def run(plan: Sequence[tuple[int, Case, str]], measure: Callable[[Case, str, int], dict]) -> list[Measurement]:
    """Runs the plan in order; `measure(case, side, steps)` -> {"images_per_sec", "cpu_util", "steps"}.
    `steps` is 0 for the project's sides, which time for a while; the reference then times as many
    steps as the project's longest measurement of the case in that round, so that both sides
    see the machine for about as long."""
    measurements: list[Measurement] = []
    for number, case, side in plan:
        project_steps = [m.steps for m in measurements if (m.round, m.case) == (number, case) and m.side != REFERENCE]
        result = measure(case, side, max(project_steps, default=0) if side == REFERENCE else 0)
        measurements.append(Measurement(number, case, side, result["images_per_sec"], result["cpu_util"],
                                        result["steps"]))  # fmt: skip
        print(f"round {number}  {case.id:<24} {side:<15} {result['images_per_sec']:10.3f} images/s"
              f"  CPU util {result['cpu_util']:.2f}  {result['steps']} steps", file=sys.stderr, flush=True)  # fmt: skip
    return measurements


def medians(measurements: Sequence[Measurement]) -> dict[tuple[Case, str], float]:
    """(case, side) -> the median of its images/s over the rounds."""
    by_key: dict[tuple[Case, str], list[float]] = {}
    for measurement in measurements:
        by_key.setdefault((measurement.case, measurement.side), []).append(measurement.images_per_sec)
    return {key: statistics.median(values) for key, values in by_key.items()}


def ratios(measurements: Sequence[Measurement], precisions: Sequence[str]) -> dict[tuple[Case, str], float]:
    """(case, precision) -> project images/s over reference images/s, both medians over the rounds."""
    median = medians(measurements)
    cases = dict.fromkeys(measurement.case for measurement in measurements)
    return {(case, precision): median[case, precision] / median[case, REFERENCE]
            for case in cases for precision in precisions}  # fmt: skip


# ------------------------------------------------------------------------------- the project side


def timed(step: Callable[[], object], batch: int, iters: int, warmup: int, min_seconds: float = 0.0) -> dict:
    """Runs `step` (which must wait for its result) `warmup` times, then times at least `iters`
    calls and as many as fill `min_seconds`: images/s from the median step, as bench_peer.py
    computes its figures. Fast steps need the longer window: over a few 40 ms steps, a moment
    of another process's work on the machine decides the CPU utilisation."""
    for _ in range(warmup):
        step()
    seconds: list[float] = []
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    while len(seconds) < iters or time.perf_counter() - wall_started < min_seconds:
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    cpu_util = (time.process_time() - cpu_started) / (time.perf_counter() - wall_started)
    median = statistics.median(seconds)
    return {"images_per_sec": batch / median, "sec_per_step": median, "cpu_util": cpu_util, "steps": len(seconds)}


def time_project(kind: str, model: str, size: int, batch: int, precision: str, iters: int, warmup: int,
                 min_seconds: float = 0.0) -> dict:  # fmt: skip
    """Run in a fresh process: a train step as `python -m train` runs it, or the generator's
    forward pass as the export calls it (its weights frozen into the graph, inside a
    tf.function; traced for any size, with Winograd's convolutions for "generator-winograd"),
    at the model's preset for `size` under `precision`."""
    if kind == "train":
        with synthetic_training(model, size, batch, precision) as (training, data):
            return timed(lambda: wait(training.train_step(data)), batch, iters, warmup, min_seconds)

    import tensorflow as tf

    import models
    from export.savedmodel import FrozenWeights
    from models import unet
    from models.config import override
    from train import loop
    from train.config import TrainConfig

    entry = models.get(model)
    with loop.runtime(TrainConfig(precision=precision)):
        generator = models.build(model, override(entry.config(), entry.presets[size]))["generator"]
        gray = tf.random.Generator.from_seed(0).uniform([batch, size, size, 1], -1, 1)
        with unet.winograd_at_any_size(kind == "generator-winograd"):
            frozen = FrozenWeights(generator, [gray])
        # traced for any size, as the export's signatures are: traced for this size, the graph
        # optimiser would resolve at trace time what the export decides at each call
        forward = tf.function(lambda gray: frozen(gray), input_signature=[tf.TensorSpec([None] * 4)])
        return timed(lambda: forward(gray).numpy(), batch, iters, warmup, min_seconds)


# ----------------------------------------------------------------------------- the reference side


def check_peer_src(src: Path) -> None:
    """Raises PeerSetupError naming every reference file missing under `src`."""
    missing = [name for name in REFERENCE_FILES if not (src / name).is_file()]
    if missing:
        raise PeerSetupError(
            f"PEER_SRC={src} lacks {', '.join(missing)}: clone junyanz/pytorch-CycleGAN-and-pix2pix "
            f"into {src / 'pix2pix'} and richzhang/colorization into {src / 'colorization'}"
        )


def check_peer_python(python: str) -> str:
    """The torch version of `python`; PeerSetupError if it cannot run or lacks a module bench_peer.py needs."""
    probe = f"import {', '.join(PEER_MODULES)}; print(torch.__version__)"
    try:
        result = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False)
    except OSError as error:
        raise PeerSetupError(f"PEER_PYTHON={python} cannot run: {error}") from None
    if result.returncode:
        missing = re.search(r"No module named '([^']+)'", result.stderr)
        what = f"has no {missing.group(1)}" if missing else f"failed:\n{result.stderr[-1000:]}"
        raise PeerSetupError(
            f"PEER_PYTHON={python} {what}; the reference side needs {', '.join(PEER_MODULES)} "
            f"(e.g. python3.11 -m venv .peer/venv && .peer/venv/bin/pip install torch ipython numpy)"
        )
    return result.stdout.strip()


def parse_peer_output(stdout: str, case: Case) -> dict:
    """bench_peer.py's JSON record of `case` among the lines it printed; PeerSetupError if
    there is not exactly one, or it lacks a field this module reads."""
    records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    found = [record for record in records if (record.get("case"), record.get("batch")) == (case.peer_case, case.batch)]
    if len(found) != 1:
        raise PeerSetupError(f"bench_peer.py printed {len(found)} records of {case.peer_case}:{case.batch}, "
                             f"expected one; its output:\n{stdout[-1000:]}")  # fmt: skip
    missing = [key for key in PEER_RECORD_KEYS if key not in found[0]]
    if missing:
        raise PeerSetupError(f"bench_peer.py's record of {case.peer_case}:{case.batch} lacks {', '.join(missing)}")
    return found[0]


def time_reference(peer: Peer, case: Case, iters: int, warmup: int) -> dict:
    """bench_peer.py on this one case, in a fresh PEER_PYTHON process."""
    command = [peer.python, str(peer.script), f"--threads={peer.threads}", f"--iters={iters}",
               f"--warmup={warmup}", "--only", f"^{re.escape(case.peer_case)}:{case.batch}$"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            env={**os.environ, "PEER_SRC": str(peer.src.resolve())})  # fmt: skip
    if result.returncode:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{result.stderr[-2000:]}")
    record = parse_peer_output(result.stdout, case)
    if record["threads"] != peer.threads:
        raise RuntimeError(f"bench_peer.py ran {case.peer_case} on {record['threads']} threads, not {peer.threads}")
    return {**record, "steps": record["iters"]}


# -------------------------------------------------------------------------------------- the report


def _figure(value: float) -> str:
    """Images/s with three significant digits or more: 0.734, 7.34, 73.4, 734, 7,340."""
    decimals = 0 if value >= 100 else 1 if value >= 10 else 2 if value >= 1 else 3
    return f"{value:,.{decimals}f}"


def section(measurements: Sequence[Measurement], precisions: Sequence[str], *, machine: str, torch_version: str,
            threads: int, command: str, date: str, iters: int, warmup: int, min_seconds: float) -> str:  # fmt: skip
    """The Markdown of the `peer` section of BENCHMARKS.md."""
    median = medians(measurements)
    ratio = ratios(measurements, precisions)
    cases = list(dict.fromkeys(measurement.case for measurement in measurements))
    rounds = max(measurement.round for measurement in measurements)
    sides = (*precisions, REFERENCE)
    header = ["case", "reference", *(f"project {p} images/s" for p in precisions), "reference images/s",
              *(f"{p} / reference" for p in precisions)]  # fmt: skip
    rows = [[case.label, case.reference, *(_figure(median[case, side]) for side in sides),
             *(f"{ratio[case, p]:.2f}x" for p in precisions)] for case in cases]  # fmt: skip
    by_round = {(m.round, m.case, m.side): f"{_figure(m.images_per_sec)} ({m.cpu_util:.2f}, {m.steps} steps)"
                for m in measurements}  # fmt: skip
    detail = [[str(number), case.label, *(by_round[number, case, side] for side in sides)]
              for number in range(1, rounds + 1) for case in cases]  # fmt: skip
    utils = [measurement.cpu_util for measurement in measurements]

    def table(head: list[str], body: list[list[str]]) -> str:
        rule = "|" + "---|" * len(head)
        return "\n".join(["| " + " | ".join(head) + " |", rule, *("| " + " | ".join(cells) + " |" for cells in body)])

    return f"""## Side by side with the PyTorch references{"" if "mixed_bfloat16" in precisions else ", float32"}

Machine: {machine}; PyTorch {torch_version}.
Date: {date}. Command: `{command}`.

The references with their own defaults, timed by bench_peer.py: junyanz/pytorch-CycleGAN-and-pix2pix
(`--model colorization`: batch norm, dropout, vanilla GAN loss, L1 x 100, Adam 2e-4) and
richzhang/colorization (ECCV16, untrained weights), on {threads} PyTorch threads. The project with its
defaults (the model's preset for the size, TensorFlow's default thread pools) in {" and ".join(precisions)}:
`--precision=auto`, the default, is mixed_bfloat16 on a CPU with bf16 units and float32 on one
without. Synthetic batches on both sides.

Each measurement is a fresh process: images/s from the median of the timed steps after
{warmup} warm-up steps. The project times at least {iters} steps and as many as fill {min_seconds:g} s; the
reference then times as many steps as the project's longest measurement of the case. {rounds} rounds,
each timing every case on the project side and then on the reference side, back to back; the
first table gives medians over the rounds, the second every measurement with its CPU
utilisation and its number of steps in brackets (process CPU seconds / wall seconds over the
timed steps: up to {threads} here; clearly less means other processes competed). This run:
{min(utils):.2f} to {max(utils):.2f}.

{table(header, rows)}

{table(["round", "case", *(f"project {p}" for p in precisions), "reference"], detail)}
"""


# ---------------------------------------------------------------------------------------- command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.peer_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-src", help="PEER_SRC: the folder with pix2pix/ and colorization/")
    parser.add_argument("--peer-python", help="PEER_PYTHON: a Python with torch, numpy and IPython")
    parser.add_argument("--peer-bench", type=Path, default=DEFAULT_PEER_BENCH,
                        help="PEER_BENCH: bench_peer.py, which times the references (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every case on both sides (at least 2)")
    parser.add_argument("--iters", type=int, default=5, help="timed steps per measurement, at least")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (at least 1: TensorFlow traces)")
    parser.add_argument("--min-seconds", type=float, default=5.0,
                        help="on the project side, time steps for at least this long (%(default)s s); the reference "
                             "then times as many steps")  # fmt: skip
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch threads (default: one per core)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=None,
                        help="the project's precisions to time (default: both on a CPU with bf16 units; float32 alone "
                             "on one without, where bfloat16 is emulated and only slow)")  # fmt: skip
    parser.add_argument("--only", nargs="+", metavar="CASE", choices=[case.id for case in CASES],
                        help="these cases only (default: all): %(choices)s")
    parser.add_argument("--output", type=Path, help="the Markdown file to update (default: BENCHMARKS.md)")
    parser.add_argument("--one", nargs=5, metavar=("KIND", "MODEL", "SIZE", "BATCH", "PRECISION"),
                        help=argparse.SUPPRESS)  # one project measurement, in the child process
    args = parser.parse_args(argv)
    if args.rounds < 2 or args.iters < 1 or args.warmup < 1 or args.min_seconds < 0:
        parser.error("--rounds must be at least 2, --iters and --warmup at least 1, --min-seconds not negative")
    if args.one:
        kind, model, size, batch, precision = args.one
        print(json.dumps(time_project(kind, model, int(size), int(batch), precision, args.iters, args.warmup,
                                      args.min_seconds)))  # fmt: skip
        return 0

    if not args.peer_src or not args.peer_python:
        parser.error("both PEER_SRC (--peer-src) and PEER_PYTHON (--peer-python) are needed; without them "
                     "`make bench` runs the project's own benchmarks")  # fmt: skip
    cases = cases_to_time(args.only)
    peer = Peer(Path(args.peer_src), args.peer_python, args.peer_bench, args.threads)
    try:
        check_peer_src(peer.src)
        if not peer.script.is_file():
            raise PeerSetupError(f"PEER_BENCH={peer.script}: no such file (bench_peer.py, which times the references)")
        torch_version = check_peer_python(peer.python)
    except PeerSetupError as error:
        parser.error(str(error))

    def measure(case: Case, side: str, steps: int) -> dict:
        if side == REFERENCE:
            return time_reference(peer, case, max(args.iters, steps), args.warmup)
        common = [f"--iters={args.iters}", f"--warmup={args.warmup}", f"--min-seconds={args.min_seconds}"]
        return run_one([case.kind, case.model, str(case.size), str(case.batch), side, *common], "train.peer_bench")

    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    precisions = args.precisions or (PRECISIONS if cpu_has_bf16_units() else ("float32",))
    measurements = run(schedule(cases, precisions, args.rounds), measure)

    from preprocess.bench import BENCHMARKS, machine, write_section

    output = args.output or BENCHMARKS
    command = shlex.join(["python", "-m", "train.peer_bench", *(argv if argv is not None else sys.argv[1:])])
    # A CPU without bf16 units keeps its own section, beside the one of a CPU with them.
    name = "peer" if "mixed_bfloat16" in precisions else "peer-float32"
    write_section(name, section(measurements, precisions, machine=machine(), torch_version=torch_version,
                                  threads=peer.threads, command=command, date=date, iters=args.iters,
                                  warmup=args.warmup, min_seconds=args.min_seconds), output)  # fmt: skip
    print(f"updated {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
