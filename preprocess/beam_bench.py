"""`make bench-beam`: make data on Beam's DirectRunner against the local writer, photos/s and CPU,
with a check that every Beam run wrote the local writer's records and manifest. Writes the
`beam` section of BENCHMARKS.md.

Each run is `python -m preprocess` in a child process under `/usr/bin/time -v`, so the figures
include starting the worker processes and the CPU of all of them. Cases (`--cases`):
    photos    the shared photos (BSDS500, DIV2K and Urban100 crops), 128 px random crops
    cifar10   CIFAR-10 as JPEG folders (data/raw/cifar10), 32 px, resize
    tiny      Tiny ImageNet's train photos (data/raw/tinyimagenet64), 64 px, resize
All of each, unless `--per-class=cifar10:N,tiny:M` takes a fixed subset of the class folders.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from preprocess.console import quiet_tensorflow

quiet_tensorflow()  # before anything imports TensorFlow: a benchmark's report stays readable

from preprocess.bench import BENCHMARKS, SHARED, machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "photos": (f"folder:{SHARED / 'photos'}", ["--size=128", "--mode=random", "--crops=4"],
               "the shared photos: BSDS500, DIV2K and Urban100 crops, 481x321 and 256x256"),
    "cifar10": ("cifar10:data/raw/cifar10", ["--size=32", "--mode=resize"], "CIFAR-10, JPEGs of 32x32"),
    "tiny": ("imagefolder:data/raw/tinyimagenet64", ["--size=64", "--mode=resize", "--val-fraction=0.1"],
             "Tiny ImageNet train photos, JPEGs of 64x64"),
}  # fmt: skip
# (label, arguments): the local writer, then Beam's DirectRunner with its worker processes
RUNS = (
    ("local, 1 worker", ["--workers=1"]),
    ("local, 2 workers", ["--workers=2"]),
    ("beam DirectRunner, 1 worker", ["--runner=beam", "--workers=1"]),
    ("beam DirectRunner, 2 workers", ["--runner=beam", "--workers=2"]),
)


def subset(spec: str, per_class: int, work: Path) -> str:
    """The same source with only the first `per_class` photos (sorted names) of each class
    folder in each split folder (train/, test/, ...), as symbolic links under `work`."""
    kind, _, path = spec.partition(":")
    root, target = Path(path), work / f"subset-{kind}"
    for split in sorted(folder for folder in root.iterdir() if folder.is_dir()):
        for folder in sorted(path for path in split.iterdir() if path.is_dir()):
            (target / split.name / folder.name).mkdir(parents=True)
            for photo in sorted(path for path in folder.rglob("*") if path.is_file())[:per_class]:
                (target / split.name / folder.name / photo.name).symlink_to(photo.resolve())
    if (root / "words.txt").exists():
        (target / "words.txt").symlink_to((root / "words.txt").resolve())
    return f"{kind}:{target}"


def timed_run(spec: str, arguments: list[str], out: Path) -> dict:
    """One `python -m preprocess` under /usr/bin/time -v -> wall seconds, CPU %, user and
    system seconds, peak memory of the largest process, and the load average around it."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "preprocess", f"--source={spec}", f"--out={out}",
               "--overwrite", *arguments]  # fmt: skip
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")

    def field(name: str) -> str:
        return re.search(rf"{re.escape(name)}: (.*)", result.stderr).group(1).strip()

    return {
        "seconds": seconds,
        "cpu_percent": float(field("Percent of CPU this job got").rstrip("%")),
        "user": float(field("User time (seconds)")),
        "system": float(field("System time (seconds)")),
        "max_rss_mib": int(field("Maximum resident set size (kbytes)")) / 1024,
        "load": (load_before, os.getloadavg()[0]),
        "log": "\n".join(line for line in result.stderr.splitlines() if line.startswith(("wrote", "  "))),
    }


def fingerprint(out: Path) -> tuple[dict, dict[str, Counter]]:
    """(the manifest without its date, per split the multiset of decoded records as
    (source_id, label, shape, SHA-1 of the pixels))."""
    from preprocess import dataset

    manifest = json.loads((out / dataset.MANIFEST).read_text())
    manifest.pop("created")
    shards = dataset.Shards(out)
    records = {}
    for split in manifest["splits"]:
        records[split] = Counter(
            (r["source_id"], int(r["label"]), r["rgb"].shape, hashlib.sha1(r["rgb"].tobytes()).hexdigest())
            for r in shards.records(split).as_numpy_iterator()
        )
    return manifest, records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m preprocess.beam_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--per-class", default="", metavar="CASE:N,...",
                        help="a fixed subset: only the first N photos of each class in each split, e.g. cifar10:500,tiny:50")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--output", type=Path, default=BENCHMARKS, help="the Markdown file to update")
    parser.add_argument("--results", type=Path, default=None,
                        help="also write every run's figures here as JSON (kept up to date after each run)")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="only write the section again from the figures of an earlier --results")
    args = parser.parse_args(argv)
    per_class = {case: int(count) for case, _, count in (item.partition(":") for item in args.per_class.split(",") if item)}
    if args.render:
        saved = json.loads(args.render.read_text())
        write_section("beam", section(saved["runs"], saved["cases"], saved["measured"], saved["command"]), args.output)
        print(f"updated {args.output}", file=sys.stderr)
        return 0
    runs, cases = [], {}
    measured = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        work = Path(scratch)
        for case in args.cases.split(","):
            spec, options, description = CASES[case]
            if per_class.get(case):
                spec = subset(spec, per_class[case], work)
                description += f", the first {per_class[case]} photos of each class in each split (a fixed subset)"
            cases[case] = f"{description}: `{' '.join(options)}`"
            reference = None
            for label, arguments in RUNS:
                out = work / "out"
                figures = timed_run(spec, options + arguments, out)
                manifest, records = fingerprint(out)
                if reference is None:
                    reference, same = (manifest, records), "(reference)"
                else:
                    same = "yes" if (manifest, records) == reference else "**NO**"
                photos = manifest["source"]["photos"]
                tiles = sum(info["tiles"] for info in manifest["splits"].values())
                runs.append({"case": case, "run": label, "photos": photos, "tiles": tiles, "same": same, **figures})
                print(f"{case} / {label}: {photos / figures['seconds']:.0f} photos/s, {figures['seconds']:.1f} s, "
                      f"CPU {figures['cpu_percent']:.0f}%, load {figures['load'][0]:.1f}, same: {same}",
                      file=sys.stderr)  # fmt: skip
                if args.results:
                    saved = {"runs": runs, "cases": cases, "measured": measured, "command": command}
                    args.results.write_text(json.dumps(saved, indent=1))
                shutil.rmtree(out, ignore_errors=True)
    write_section("beam", section(runs, cases, measured, command), args.output)
    print(f"updated {args.output}", file=sys.stderr)
    return 0


def section(runs: list[dict], cases: dict[str, str], measured: str, command: str) -> str:
    """The Markdown of the BENCHMARKS.md section from every run's figures."""
    rows = [
        f"| {run['case']} | {run['run']} | {run['photos']:,} | {run['tiles']:,} | {run['seconds']:.1f} | "
        f"{run['photos'] / run['seconds']:,.0f} | {run['cpu_percent']:.0f}% | {run['user'] + run['system']:,.0f} | "
        f"{run['photos'] / (run['user'] + run['system']):,.0f} | {run['max_rss_mib']:,.0f} | "
        f"{run['load'][0]:.1f} / {run['load'][1]:.1f} | {run['same']} |"
        for run in runs
    ]
    listed = "\n".join(f"- {case}: {description}" for case, description in cases.items())
    return f"""## make data on Apache Beam (DirectRunner) against the local writer

Machine: {machine()}; Apache Beam {_beam_version()}. Measured {measured}.
Command: `make bench-beam` (`python -m preprocess.beam_bench {command}`).
Each run is `python -m preprocess --source=... --overwrite` under `/usr/bin/time -v`: the local
writer with `--workers=N`, Beam with `--runner=beam --workers=N` (the DirectRunner in
multi-process mode, N worker processes). Seconds and CPU include starting the processes;
CPU seconds are user + system of all of them, and photos per CPU second is the rate less
sensitive to other jobs on the cores. "same": the run's manifest (date aside) and the multiset
of its decoded records (source id, label, pixels) equal the first run's of the case.
{listed}

| case | run | photos | tiles | seconds | photos/s | CPU | CPU seconds | photos per CPU second | peak MiB (largest process) | load before / after | same |
|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
"""


def _beam_version() -> str:
    from preprocess.beam import beam  # imported as preprocess.beam does, without its Google Cloud notice

    return beam.__version__


if __name__ == "__main__":
    sys.exit(main())
