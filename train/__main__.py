"""`python -m train --model=cgan --data=DATA --run=RUN --steps=N [--key=value ...]`; `--help` lists the keys.

`--verbose` shows TensorFlow's own log lines.

Exit codes: 0 done, 1 training diverged (NaN/Inf) or another worker was lost, 2 bad settings, 130 Ctrl-C, 143 SIGTERM
(both after saving a checkpoint of the current step).
"""

from __future__ import annotations

import sys

from preprocess.console import quiet_tensorflow  # noqa: E402

quiet_tensorflow(sys.argv)  # before anything imports TensorFlow: its log lines only with --verbose

from models.config import ConfigError  # noqa: E402
from train import config, loop  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    argv = [arg for arg in argv if arg != "--verbose"]  # read by quiet_tensorflow above, not a setting
    if any(arg in ("-h", "--help") for arg in argv):
        print(config.usage())
        return 0
    try:
        settings = config.resolve(argv)
        loop.run(settings)
    except ConfigError as error:
        print(f"make train: {error}", file=sys.stderr)
        return 2
    except (loop.Diverged, loop.WorkerLost) as error:
        print(f"make train: {error}", file=sys.stderr)
        return 1
    except loop.Interrupted as error:
        print(f"make train: {error}", file=sys.stderr)
        return 128 + error.signal_number  # the shell's code for a process ended by that signal
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        print("make train: interrupted; the same command resumes from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
