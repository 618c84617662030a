"""export.sheet: the side-by-side PNG that `make demo` ends with."""

import numpy as np
from PIL import Image

from export import sheet


def test_each_photo_is_a_row_gray_then_each_column_then_the_original(tmp_path):
    rng = np.random.default_rng(0)
    photos = []
    for name, (height, width) in {"wide": (40, 80), "tall": (60, 30)}.items():
        original = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
        Image.fromarray(original).save(tmp_path / f"{name}.jpg", quality=95)
        photos.append(tmp_path / f"{name}.jpg")
        for column, tint in (("short", (255, 0, 0)), ("shipped", (0, 0, 255))):
            (tmp_path / column).mkdir(exist_ok=True)
            Image.new("RGB", (width, height), tint).save(tmp_path / column / f"{name}.png")
    out = tmp_path / "sheet.png"
    assert sheet.main([*map(str, photos), f"--out={out}", f"--column=400 steps={tmp_path / 'short'}",
                       f"--column=shipped={tmp_path / 'shipped'}", "--height=50"]) == 0  # fmt: skip
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    title = 18
    assert image.shape[0] == title + 2 * (50 + sheet.GAP)
    first = image[title + 25]  # the middle line of the wide photo's row: cells 100 px wide
    gray, short, shipped = first[50], first[100 + sheet.GAP + 50], first[2 * (100 + sheet.GAP) + 50]
    assert gray[0] == gray[1] == gray[2]
    assert short[0] > 200 and short[2] < 50 and shipped[2] > 200 and shipped[0] < 50
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_missing_colorization_names_the_file(tmp_path, capsys):
    Image.new("RGB", (20, 20), "red").save(tmp_path / "a.png")
    (tmp_path / "empty").mkdir()
    assert sheet.main([str(tmp_path / "a.png"), f"--out={tmp_path / 's.png'}", f"--column=x={tmp_path / 'empty'}"]) == 2
    assert "a.png" in capsys.readouterr().err and not (tmp_path / "s.png").exists()
