"""`python -m train.workers_bench [--model=cgan] [--size=32] [--workers=2] [--rounds=20]`: the
all-reduce that `make train WORKERS=N` adds to every step, timed alone.

N local processes (TF_CONFIG on 127.0.0.1, as train/workers.py starts them) build the
model of the preset for `--size` under MultiWorkerMirroredStrategy and all-reduce one step's
worth of gradients (float32 tensors shaped like every trainable variable, as the optimizers
all-reduce them) `--rounds` times after two warm-up rounds. Prints the bytes and the
milliseconds per all-reduce, which with a step's compute time give the overhead of a
worker and the scaling estimate in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _time_all_reduce(model: str, size: int, rounds: int) -> dict[str, float]:
    """In a worker (TF_CONFIG set): {"bytes", "tensors", "ms"} of one all-reduce of the gradients."""
    from preprocess.console import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    import models

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    entry = models.get(model)
    with strategy.scope():
        networks = models.build(model, entry.config(**entry.presets[size]))
    gradients = [tf.ones(variable.shape, tf.float32) for network in networks.values()
                 for variable in network.trainable_variables]  # fmt: skip

    @tf.function
    def all_reduce():
        replica = lambda: tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, gradients)  # noqa: E731
        return strategy.run(replica)

    for _ in range(2):
        all_reduce()[0].numpy()
    start = time.perf_counter()
    for _ in range(rounds):
        all_reduce()[0].numpy()  # waits for it
    seconds = (time.perf_counter() - start) / rounds
    size_bytes = sum(int(gradient.shape.num_elements()) * 4 for gradient in gradients)
    return {"bytes": size_bytes, "tensors": len(gradients), "ms": seconds * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.workers_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cgan")
    parser.add_argument("--size", type=int, default=32, help="the preset (tile size) whose networks are built")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # set in the processes started
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        result = _time_all_reduce(args.model, args.size, args.rounds)
        print(json.dumps(result), flush=True)
        return 0

    from train import workers

    ports = workers.free_ports(args.workers)
    command = [sys.executable, "-m", "train.workers_bench", f"--model={args.model}", f"--size={args.size}",
               f"--rounds={args.rounds}", "--worker"]  # fmt: skip
    threads = str(max(1, (os.cpu_count() or 1) // args.workers))
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "TF_CONFIG": workers.tf_config(ports, index),
                                       "TF_NUM_INTRAOP_THREADS": threads})
                 for index in range(args.workers)]  # fmt: skip
    outputs = [process.communicate()[0] for process in processes]
    if any(process.returncode for process in processes):
        print(f"train.workers_bench: a worker failed: exit codes {[p.returncode for p in processes]}", file=sys.stderr)
        return 1
    result = json.loads(outputs[0].strip().splitlines()[-1])
    megabytes = result["bytes"] / 1e6
    print(f"{args.model} {args.size} px, {args.workers} local workers: {result['tensors']} gradient tensors, "
          f"{megabytes:.1f} MB per all-reduce, {result['ms']:.0f} ms ({megabytes / result['ms'] * 1000:.0f} MB/s "
          f"of gradients)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
