"""Files that appear whole or not at all: written under a temporary name beside the target, then renamed.

A reader never sees half a file (TF Serving watching exports/, a resumed run reading
config.json, a person opening a PNG while training rewrites it), and a process killed
mid-write leaves only a hidden `.NAME.tmp-PID.EXT`, which `make data` clears from its
output folder (`.*.tmp-*`). The temporary keeps the target's extension because savers
(Keras, Pillow, Matplotlib) choose the format by it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yields the temporary path to write; renames it to `path` if the block succeeds, else removes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)  # only still there when the block failed


def write_text(path: str | os.PathLike, text: str) -> Path:
    """`Path(path).write_text(text)`, atomically."""
    with replacing(path) as temporary:
        temporary.write_text(text)
    return Path(path)
