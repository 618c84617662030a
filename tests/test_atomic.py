"""preprocess/atomic.py: files appear whole or not at all."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from preprocess import atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "run" / "config.json"
    assert atomic.write_text(target, "first") == target  # the folder is made
    with pytest.raises(RuntimeError, match="killed"):
        with atomic.replacing(target) as temporary:
            temporary.write_text("half of the sec")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "first"
    assert [path.name for path in target.parent.iterdir()] == ["config.json"]


def test_the_temporary_keeps_the_extension_savers_choose_the_format_by(tmp_path):
    with atomic.replacing(tmp_path / "grid.png") as temporary:
        assert temporary.name.startswith(".grid.tmp-") and temporary.suffix == ".png"
        Image.fromarray(np.zeros([2, 3, 3], np.uint8)).save(temporary)  # no format=: from the suffix
    assert Image.open(tmp_path / "grid.png").size == (3, 2)
    assert [path.name for path in tmp_path.iterdir()] == ["grid.png"]
