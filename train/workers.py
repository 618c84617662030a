"""`python -m train.workers --workers=N -- <python -m train settings>`: one run trained by N local
worker processes with MultiWorkerMirroredStrategy (`make train WORKERS=N`).

Each worker is `python -m train <settings> --strategy=multi_worker` with its own TF_CONFIG,
the cluster on free ports of 127.0.0.1, worker 0 the chief. The global --batch_size is split
between the workers (Shards.batches' shard), gradients are all-reduced after every step, and
only the chief writes the run folder; its output is this command's, the others' goes to
RUN/workers/worker-K.log. On a cluster of machines or pods, start the same `python -m train`
on each with its own TF_CONFIG instead (README, "Several workers").

Ctrl-C or SIGTERM is passed to every worker: they stop after the same step, the chief saves
it, and the same command resumes from there. A worker that dies (killed, out of memory)
leaves the others blocked in an all-reduce that cannot complete: this command stops them
and exits with a message; run it again to resume from the last checkpoint.

Exit codes: those of `python -m train` (0 done, 1 diverged, 2 bad settings, 130/143 stopped
by a signal), or 1 when a worker died some other way.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# How long the others may take to exit on their own once one worker has exited with an
# error: they may be saving the step all agreed to stop at, or failing on the same bad
# setting. Past it they are stuck in an all-reduce with a dead peer and are killed.
GRACE_SECONDS = 30.0
LOG_DIR = "workers"  # RUN/workers/worker-K.log: the output of the workers but the chief


class LaunchError(ValueError):
    """Settings the launcher cannot start workers with."""


def _setting(train_args: list[str], key: str) -> str | None:
    """The value of --key=value in `train_args`, the last one winning as in `python -m train`.
    Read here without train.config, whose imports would start TensorFlow in this process too."""
    names = {f"--{key}", f"--{key.replace('_', '-')}"}
    values = [value for name, _, value in (arg.partition("=") for arg in train_args) if name in names]
    return values[-1] if values else None


def free_ports(count: int) -> list[int]:
    """`count` TCP ports of 127.0.0.1 that were free a moment ago (held together, so all differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def tf_config(ports: list[int], index: int) -> str:
    """TF_CONFIG of worker `index` in a cluster of local workers on `ports` (worker 0 is the chief)."""
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})  # fmt: skip


def _die_with_parent() -> None:
    """In a worker, before exec: SIGTERM when the launcher dies (Linux), so none trains on alone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _describe(code: int) -> str:
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return ""
    return "\n".join(f"    {line}" for line in text[-lines:])


def _latest_checkpoint(run: Path) -> str:
    # only here, after a failure: the launcher need not start TensorFlow otherwise
    from preprocess.console import quiet_tensorflow

    quiet_tensorflow()
    import models
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(run / models.CHECKPOINT_DIR))
    return f"the last checkpoint is {latest}" if latest else "no checkpoint was written yet"


def launch(workers: int, train_args: list[str]) -> int:
    """Start `workers` local workers of `python -m train train_args`, wait for all; an exit code."""
    strategy = _setting(train_args, "strategy")
    if strategy is not None:
        raise LaunchError(f"--strategy={strategy}: the workers train with --strategy=multi_worker; leave it out")
    run = _setting(train_args, "run")
    if not run:
        raise LaunchError("--run is required: the run folder, e.g. --run=runs/cgan-cifar")
    run_dir = Path(run)
    (run_dir / LOG_DIR).mkdir(parents=True, exist_ok=True)
    ports = free_ports(workers)
    # Without a limit each worker would size its thread pools to every core of the machine.
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    command = [sys.executable, "-m", "train", *train_args, "--strategy=multi_worker"]
    processes: list[subprocess.Popen] = []
    logs: list[Path | None] = []
    with contextlib.ExitStack() as stack:
        for index in range(workers):
            env = {**os.environ, "TF_CONFIG": tf_config(ports, index), "PYTHONUNBUFFERED": "1"}
            env.setdefault("TF_NUM_INTRAOP_THREADS", threads)
            log = None if index == 0 else run_dir / LOG_DIR / f"worker-{index}.log"
            output = None if log is None else stack.enter_context(open(log, "w"))
            # Own sessions: a Ctrl-C in the terminal reaches this process alone, which passes it
            # on once (a second SIGINT would make a worker quit without saving).
            processes.append(subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT if output else None,
                                              start_new_session=True, preexec_fn=_die_with_parent))  # fmt: skip
            logs.append(log)
        print(f"train.workers: {workers} workers on 127.0.0.1:{','.join(map(str, ports))} (pids "
              f"{' '.join(str(process.pid) for process in processes)}); worker 0 is the chief, the others log to "
              f"{run_dir / LOG_DIR}/", file=sys.stderr, flush=True)  # fmt: skip
        return _wait(processes, logs, run_dir)


def _first_failure(codes: list[int | None]) -> tuple[int, int] | None:
    """(worker, exit code) of the failure to report, of those seen at once: one killed by a
    signal first, since the others' errors (a lost peer) follow from it."""
    failed = [(code >= 0, index, code) for index, code in enumerate(codes) if code not in (None, 0)]
    return min(failed)[1:] if failed else None


def _wait(processes: list[subprocess.Popen], logs: list[Path | None], run_dir: Path) -> int:
    received: list[int] = []

    def forward(number: int, _frame) -> None:
        received.append(number)
        for process in processes:
            if process.poll() is None:
                process.send_signal(number)

    previous = {number: signal.signal(number, forward) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        failed: tuple[int, int] | None = None  # (worker, exit code) of the first to fail
        deadline = None
        while any(process.poll() is None for process in processes):
            if failed is None:
                failed = _first_failure([process.returncode for process in processes])
                if failed is not None:
                    deadline = time.monotonic() + GRACE_SECONDS
            if deadline is not None and time.monotonic() > deadline:
                for process in processes:
                    if process.poll() is None:
                        process.kill()
            time.sleep(0.1)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)

    codes = [process.returncode for process in processes]
    if failed is None:
        failed = _first_failure(codes)
    if failed is None:
        return 0
    index, code = failed
    if received and code in (128 + received[0], -received[0]):
        return 128 + received[0]  # python -m train printed what it saved
    others = [worker for worker, other in enumerate(codes) if worker != index and other != 0]
    message = f"train.workers: worker {index} of {len(processes)} {_describe(code)}"
    if others:
        message += f"; then {', '.join(f'worker {worker} {_describe(codes[worker])}' for worker in others)}"
    if logs[index] is not None:
        message += f"\n  the end of {logs[index]}:\n{_tail(logs[index])}"
    if code != 2:  # bad settings need another command, not a resume
        message += f"\n  {_latest_checkpoint(run_dir)}; the same command resumes from there"
    print(message, file=sys.stderr, flush=True)
    return code if code > 0 else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, train_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m train.workers", description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s --workers=N -- --model=... --data=... --run=... [--key=value ...]")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    args = parser.parse_args(own)
    if args.workers < 1:
        parser.error(f"--workers={args.workers}: must be at least 1")
    try:
        return launch(args.workers, train_args)
    except LaunchError as error:
        print(f"make train: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
