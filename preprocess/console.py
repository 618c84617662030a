"""Plain command output: TensorFlow's own log lines off unless `--verbose`.

Every command (`make data`, `train`, `evaluate`, `export`, `colorize`, `serve`) calls
`quiet_tensorflow(sys.argv)` before anything imports TensorFlow. Without it a CPU-only
machine prints, on every command, a dozen C++ log lines, among them
`E0000 ... failed call to cuInit: ... CUDA error`, which reads like a failure and is only
the CUDA-enabled `tensorflow` wheel finding no GPU. Two kinds of lines need two remedies:
  - lines logged while TensorFlow's shared libraries load (oneDNN, "Could not find cuda
    drivers", CPU features) come before absl::InitializeLog and ignore
    TF_CPP_MIN_LOG_LEVEL, so the import runs with the process's stderr held in a file,
    replayed if the import fails;
  - later ones (cuInit at the first op, XLA, grappler) obey TF_CPP_MIN_LOG_LEVEL=3.
Errors that matter still reach the user as Python exceptions.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence


def quiet_tensorflow(argv: Sequence[str] = ()) -> None:
    """Import TensorFlow with its log lines off, unless "--verbose" is in `argv` (or it is imported already)."""
    if "--verbose" in argv or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with holding_stderr():
        import tensorflow as tf
    tf.get_logger().setLevel("ERROR")  # the Python side: deprecation and retracing warnings


@contextlib.contextmanager
def holding_stderr() -> Iterator[None]:
    """The process's stderr (file descriptor 2, so C++ libraries and child processes too) goes
    to a file for the block, and is replayed only if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
