"""`python -m train --model=cgan --data=DATA --run=RUN --steps=N [--key=value ...]`; `--help` lists the keys.

Exit codes: 0 done, 1 training diverged (NaN/Inf), 2 bad settings, 130 interrupted.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up chatter out of the progress bar

from models.config import ConfigError  # noqa: E402
from train import config, loop  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(config.usage())
        return 0
    try:
        settings = config.resolve(argv)
        loop.run(settings)
    except ConfigError as error:
        print(f"make train: {error}", file=sys.stderr)
        return 2
    except loop.Diverged as error:
        print(f"make train: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("make train: interrupted; the same command resumes from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
