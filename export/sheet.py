"""`python -m export.sheet`: one PNG that shows photos gray | each model's colorization | original.

    python -m export.sheet --out sheet.png --column "400 steps=demo/colorized/run" \
        --column "shipped=demo/colorized/pretrained" PHOTO...

Each column folder holds `colorize` results, found by the photo's file name with a .png
suffix (as `colorize` names them). Every photo becomes one row, scaled to --height pixels,
with the column names written above; what `make demo` ends with, so a person can judge the
models on the same photos at a glance.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from preprocess.console import quiet_tensorflow

quiet_tensorflow(sys.argv)  # before anything imports TensorFlow: its log lines only with --verbose

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from export.images import UnusableImage, load_photo  # noqa: E402
from preprocess.preview import save_png  # noqa: E402

GAP = 4  # white pixels between cells


def row(images: list[np.ndarray], height: int) -> np.ndarray:
    """uint8 RGB images of one photo, each scaled to `height` (aspect kept), side by side."""
    scaled = []
    for image in images:
        width = max(1, round(image.shape[1] * height / image.shape[0]))
        scaled.append(np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS)))
        scaled.append(np.full((height, GAP, 3), 255, np.uint8))
    return np.concatenate(scaled[:-1], axis=1)


def sheet(photos: list[Path], columns: dict[str, Path], height: int = 160) -> np.ndarray:
    """uint8 RGB [H, W, 3]: a title bar, then per photo gray | columns... | original."""
    rows, cell_width = [], 0
    for photo in photos:
        original = load_photo(photo)
        gray = np.repeat(np.asarray(Image.fromarray(original).convert("L"))[..., None], 3, axis=-1)
        outputs = [load_photo(folder / f"{photo.stem}.png") for folder in columns.values()]
        rows.append(row([gray, *outputs, original], height))
        cell_width = cell_width or max(1, round(original.shape[1] * height / original.shape[0]))
    width = max(image.shape[1] for image in rows)
    rows = [np.pad(image, ((0, GAP), (0, width - image.shape[1]), (0, 0)), constant_values=255) for image in rows]
    # A row's cells share its photo's aspect, so the first row's cell width places the titles.
    title = Image.new("RGB", (width, 18), "white")
    draw = ImageDraw.Draw(title)
    for index, name in enumerate(["gray", *columns, "original"]):
        draw.text((index * (cell_width + GAP) + 2, 3), name, fill="black")
    return np.concatenate([np.asarray(title), *rows], axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.sheet", description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", nargs="+", type=Path, metavar="PHOTO", help="the original colour photos")
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write")
    parser.add_argument("--column", action="append", default=[], metavar="NAME=FOLDER",
                        help="a model's colorizations (repeat, in order)")  # fmt: skip
    parser.add_argument("--height", type=int, default=160, help="row height in pixels (default: 160)")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines")
    args = parser.parse_args(argv)
    columns = {}
    for spec in args.column:
        name, _, folder = spec.partition("=")
        if not folder:
            parser.error(f"--column {spec!r}: expected NAME=FOLDER")
        columns[name] = Path(folder)
    try:
        save_png(sheet(args.photos, columns, args.height), args.out)
    except UnusableImage as error:
        print(f"export.sheet: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {len(args.photos)} photos, gray | {' | '.join(columns)} | original", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
