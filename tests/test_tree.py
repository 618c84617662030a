"""Checks of the repository's text as a whole."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    paths = [ROOT / name for name in names.decode().split("\0") if name]
    return [path for path in paths if path.is_file() and path.suffix not in {".png", ".jpg", ".pb"}]


def test_no_citation_of_documents_users_do_not_have():
    # The project's source notes were numbered; a user has the papers, not the notes.
    pattern = re.compile("seed" + r"[ _-]?0\d\d", re.IGNORECASE)
    hits = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
            for path in tracked_text_files()
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
            if pattern.search(line)]  # fmt: skip
    assert not hits, "cite the paper instead:\n" + "\n".join(hits)
