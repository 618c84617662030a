"""`make bench`, export stage: export size and time, load time, and colorize latency and peak
memory for 12- and 48-megapixel photos. Writes its section of BENCHMARKS.md.

Exports --run when given, else an untrained `cgan` at pix2pix's 256 px preset: latency and
size depend on the architecture, not on the weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from preprocess.console import quiet_tensorflow  # noqa: E402

quiet_tensorflow()  # before anything imports TensorFlow: a benchmark's report stays readable

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from export.inference import INFO_FILE  # noqa: E402
from preprocess.bench import BENCHMARKS, machine, write_section  # noqa: E402

PHOTOS = {"12 MP": (3000, 4000), "48 MP": (6000, 8000)}


@dataclasses.dataclass(frozen=True)
class _TrainSettings:
    """The part of a training config that export reads: a 256 px crop."""

    data: str = ""
    crop_size: int = 256


def untrained_run(folder: Path, model: str = "cgan") -> Path:
    """A run folder with a freshly initialised `model` at the 256 px preset."""
    import tensorflow as tf

    import models
    from models.config import override

    entry = models.get(model)
    config = override(entry.config(), entry.presets[256])
    networks = models.build(model, config)
    models.write_run_config(folder, model, config, _TrainSettings())
    tf.train.Checkpoint(**networks).save(str(folder / models.BEST_DIR / "ckpt"))
    return folder


def synthetic_photo(path: Path, height: int, width: int) -> Path:
    """A JPEG with gradients, stripes and noise: something for the codecs to work on."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x * 255 / width, y * 255 / height, 128 + 100 * np.sin((x + y) / 40)], -1)
    rgb += np.random.default_rng(0).normal(0, 8, (height, width, 1)).astype(np.float32)
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def resident_mib() -> float:
    """This process's resident memory now."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_in_process(export_dir: str, photo: str) -> dict[str, float]:
    """Run in a fresh process: load time, then colorize latency on `photo` (decoded, not
    written) and the most memory the calls add to the loaded, warmed-up process."""
    from export.images import load_photo
    from export.inference import Colorizer

    started = time.perf_counter()
    colorizer = Colorizer(export_dir)
    loaded = time.perf_counter()
    colorizer.colorize(np.zeros((64, 64, 3), np.uint8))  # the first call optimises the graph
    rgb = load_photo(photo)
    baseline, peak, done = resident_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], resident_mib())

    sampler = threading.Thread(target=sample)
    sampler.start()
    seconds = []
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    for _ in range(3):
        begin = time.perf_counter()
        colorizer.colorize(rgb)
        seconds.append(time.perf_counter() - begin)
    cpu_seconds, colorize_wall = time.process_time() - cpu_started, time.perf_counter() - wall_started
    done.set()
    sampler.join()
    return {"load": loaded - started, "colorize": statistics.median(seconds), "added_mib": peak[0] - baseline,
            "cpu_seconds": cpu_seconds, "colorize_wall": colorize_wall, "computes_in": colorizer.precision}  # fmt: skip


def run_command(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak resident MiB) of one child process.

    The peak is the kernel's high-water mark (VmHWM) of the child, polled while it runs:
    getrusage's ru_maxrss would also count the memory of this big process at fork time.
    """
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        peak_kib = 0
        while process.poll() is None:
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
                peak_kib = max(peak_kib, int(status.split("VmHWM:")[1].split()[0]))
            except (OSError, IndexError):  # exiting
                pass
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        if process.returncode:
            log.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed:\n{log.read().decode()[-2000:]}")
    return seconds, peak_kib / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None, help="run to export (default: an untrained --model at 256 px)")
    parser.add_argument("--model", default="cgan", help="the model of the untrained run (default: cgan)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the precisions in turn (default: 2)")
    parser.add_argument("--output", type=Path, default=BENCHMARKS, help="the Markdown file to update")
    args = parser.parse_args(argv)
    from export import __main__ as export_cli

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        run = args.run or untrained_run(work / "run", args.model)
        exports, export_rows = {}, []
        for precision in export_cli.PRECISIONS:
            started = time.perf_counter()
            exports[precision] = export_cli.export_run(run, work / "exports", precision=precision)
            export_seconds = time.perf_counter() - started
            size_mib = export_cli.folder_size(exports[precision]) / 2**20
            info = json.loads((exports[precision] / INFO_FILE).read_text())
            export_rows.append((precision, size_mib, export_seconds))
            print(f"exported {precision} in {export_seconds:.1f} s, {size_mib:.1f} MiB", file=sys.stderr)

        import_seconds, _ = run_command([sys.executable, "-c", "import tensorflow"])
        measured: dict[tuple[str, str], list[dict]] = {}
        spawn = multiprocessing.get_context("spawn")  # a fresh interpreter per measurement: its own peak memory
        for label, (height, width) in PHOTOS.items():
            photo = synthetic_photo(work / f"{label.replace(' ', '')}.jpg", height, width)
            for _round in range(args.rounds):  # the precisions in turn, so a slow spell hits both
                for precision, export_dir in exports.items():
                    with spawn.Pool(1) as pool:
                        inside = pool.apply(measure_in_process, (str(export_dir), str(photo)))
                    command = [sys.executable, "-m", "export.colorize", "--model", str(export_dir), "--output",
                               str(work / "out"), str(photo)]  # fmt: skip
                    inside["cli_seconds"], inside["cli_peak"] = run_command(command)
                    inside["cpu"] = inside["cpu_seconds"] / inside["colorize_wall"]
                    measured.setdefault((label, precision), []).append(inside)
                    print(label, precision, inside, file=sys.stderr)

    def median(label: str, precision: str, key: str) -> float:
        return statistics.median(record[key] for record in measured[label, precision])

    rows = []
    for label, (height, width) in PHOTOS.items():
        for precision in exports:
            cpu = ", ".join(f"{record['cpu']:.2f}" for record in measured[label, precision])
            computes_in = measured[label, precision][0]["computes_in"]
            shown = precision if computes_in == precision else f"{precision}, computed in {computes_in}"
            rows.append(f"| {label} ({width}x{height}) | {shown} | {median(label, precision, 'colorize'):.2f} | "
                        f"{cpu} | {median(label, precision, 'added_mib'):,.0f} | "
                        f"{median(label, precision, 'cli_seconds'):.1f} | {median(label, precision, 'cli_peak'):,.0f} |")  # fmt: skip
    load_seconds = statistics.median(record["load"] for records in measured.values() for record in records)
    model = f"an untrained `{args.model}` at the 256 px preset" if args.run is None else f"`{args.run}` ({info['model']})"
    export_table = "\n".join(f"| `{info['model']}` {precision} | {size_mib:,.1f} MiB | {seconds:.1f} s |"
                              for precision, size_mib, seconds in export_rows)  # fmt: skip
    write_section(
        "export" if info["model"] == "cgan" else f"export-{info['model']}",
        f"""## make export and colorize ({info['model']})

Machine: {machine()}. Date: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}.
Command: `make bench` (`python -m export.bench`), exporting {model}
(working size {info["working_size"]}, stride {info["stride"]}) in both `--precision`s. Load average
{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end: on an idle machine the times are lower.
TensorFlow's import: {import_seconds:.1f} s; loading the SavedModel: {load_seconds:.1f} s.

| export | size | time (with its check) |
|---|---|---|
{export_table}

Colorizing a synthetic JPEG photo, {args.rounds} rounds with the precisions in turn, medians. *In process*:
`Colorizer.colorize` on the decoded photo (median of 3, after a warm-up call; `--precision=auto`,
the default of `colorize`, which computes a float32 export in bf16 on a CPU with bf16 units), the process's
CPU seconds per wall second during those calls (each round; up to 2 here), and how far the
calls raise the peak memory of a process that has the export loaded. *`colorize` command*: the
whole command in a fresh process (TensorFlow import, load, JPEG decode, colorize, PNG
encode, write), its wall time and peak memory.

| photo | precision | in process (s) | CPU per round | in process, added peak (MiB) | `colorize` command (s) | `colorize` command, peak (MiB) |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}
""",
        args.output,
    )
    print(f"updated {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
