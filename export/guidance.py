"""What a person gives a guided model (MODEL=guided): colour hints and a reference photo, read and checked.

    hints.json   [{"x": 120, "y": 45, "colour": "#d02020"}, ...]   ("color" is accepted too)

x and y are pixels of the photo being colorized (x to the right, y down, from its top-left
pixel at 0, 0), so a person can read them off any image viewer; the export maps them to
the model's working size. Only the colour's hue and saturation count: the model takes its
Lab ab, and the photo keeps its own lightness (L) everywhere.

A reference photo gives the model its colour distribution (Zhang et al. 2017's global
hint): the histogram of its ab over the quantised ab bins and its mean saturation. A gray
reference (mean chroma under MIN_REFERENCE_CHROMA) holds no colour to give and is refused.

Everything here raises GuidanceError naming the file and the reason; `colorize`, the web
page and `python -m evaluate.stability` turn that into one line, never a traceback.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from export.images import DEFAULT_MAX_PIXELS, UnusableImage, load_photo

HEX_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")

# Mean chroma sqrt(a^2 + b^2) (Lab units) under which a reference counts as gray. A gray photo
# saved as RGB or JPEG-compressed stays under 1; a faint sepia print is over 5.
MIN_REFERENCE_CHROMA = 3.0

# The side a reference is shrunk to (by area, never enlarged) before it is sent: its ab
# histogram over bins of 10 Lab units hardly moves, and a 12-megapixel reference would
# otherwise be re-encoded, sent and decoded for every batch of frames.
REFERENCE_SIDE = 256


class GuidanceError(Exception):
    """A hints file or reference photo that cannot be used: `str()` is "<file>: <reason>"."""


class Hint(NamedTuple):
    """One colour hint: pixel (x, y) of the photo, colour "#rrggbb"."""

    x: int
    y: int
    colour: str

    @property
    def rgb(self) -> tuple[int, int, int]:
        return parse_colour(self.colour)


def parse_colour(text: str) -> tuple[int, int, int]:
    """"#rrggbb" (either case) -> (r, g, b) in 0..255; ValueError for anything else."""
    if not isinstance(text, str) or not HEX_COLOUR.fullmatch(text):
        raise ValueError(f"colour {text!r} is not #rrggbb (e.g. \"#d02020\")")
    return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)


def parse_hints(items: object, source: str) -> list[Hint]:
    """A decoded hints JSON value -> hints, checked; GuidanceError("<source>: ...") names the bad one."""
    if not isinstance(items, list):
        raise GuidanceError(f"{source}: expected a JSON list of {{\"x\": int, \"y\": int, \"colour\": \"#rrggbb\"}}, "
                            f"got {type(items).__name__}")  # fmt: skip
    hints = []
    for number, item in enumerate(items, start=1):
        where = f"{source}: hint {number}"
        if not isinstance(item, dict):
            raise GuidanceError(f"{where} is {json.dumps(item)}, not an object with x, y and colour")
        colour = item.get("colour", item.get("color"))
        unknown = sorted(set(item) - {"x", "y", "colour", "color"})
        if unknown or colour is None or "x" not in item or "y" not in item:
            missing = [key for key in ("x", "y") if key not in item] + (["colour"] if colour is None else [])
            detail = f"unknown keys {', '.join(unknown)}" if unknown else f"no {', '.join(missing)}"
            raise GuidanceError(f"{where}: {detail}; each hint is {{\"x\": int, \"y\": int, \"colour\": \"#rrggbb\"}}")
        for key in ("x", "y"):
            if isinstance(item[key], bool) or not isinstance(item[key], int) or item[key] < 0:
                raise GuidanceError(f"{where}: {key} = {json.dumps(item[key])} is not a pixel index (an integer >= 0)")
        try:
            parse_colour(colour)
        except ValueError as error:
            raise GuidanceError(f"{where}: {error}") from None
        hints.append(Hint(item["x"], item["y"], colour.lower()))
    return hints


def read_hints(path: str | Path) -> list[Hint]:
    """The hints in a JSON file (see the module docstring); GuidanceError naming the file and the reason."""
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise GuidanceError(f"{path}: cannot read it ({error.strerror})") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise GuidanceError(f"{path}: not JSON ({error})") from None
    return parse_hints(items, str(path))


def outside(hints: list[Hint], height: int, width: int, what: str = "the photo") -> str | None:
    """Why the first hint outside an H x W photo (`what`) cannot be used, or None when all are inside."""
    for number, hint in enumerate(hints, start=1):
        if hint.x >= width or hint.y >= height:
            return (f"hint {number} at x={hint.x}, y={hint.y} is outside {what} ({width} x {height} pixels: "
                    f"x up to {width - 1}, y up to {height - 1})")  # fmt: skip
    return None


def mean_chroma(rgb: np.ndarray) -> float:
    """Mean Lab chroma sqrt(a^2 + b^2) of uint8 RGB [H, W, 3]; 0 for a gray photo."""
    from preprocess import color  # TensorFlow: only once a reference is read

    ab = color.rgb_to_lab(np.asarray(rgb, np.uint8))[..., 1:].numpy()
    return float(np.hypot(ab[..., 0], ab[..., 1]).mean())


def shrink(rgb: np.ndarray, side: int = REFERENCE_SIDE) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> about side x side pixels (by area, aspect kept), never enlarged."""
    height, width = rgb.shape[:2]
    scale = min(1.0, side / np.sqrt(height * width))
    if scale == 1.0:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))


def check_reference(rgb: np.ndarray, source: str) -> np.ndarray:
    """uint8 RGB [H, W, 3] of a reference -> the same shrunk to REFERENCE_SIDE; GuidanceError when it is gray."""
    small = shrink(rgb)
    chroma = mean_chroma(small)
    if chroma < MIN_REFERENCE_CHROMA:
        raise GuidanceError(f"{source}: the reference photo is gray (mean chroma {chroma:.1f}, under "
                            f"{MIN_REFERENCE_CHROMA:g} Lab units): it holds no colour to copy")  # fmt: skip
    return small


def read_reference(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A reference photo file -> uint8 RGB [h, w, 3], shrunk to about REFERENCE_SIDE**2 pixels.

    Any format `colorize` reads. GuidanceError when it cannot be read or is gray.
    """
    try:
        rgb = load_photo(path, max_pixels)
    except UnusableImage as error:
        raise GuidanceError(f"{path}: {error.reason}") from None
    except OSError as error:
        raise GuidanceError(f"{path}: cannot read it ({error.strerror})") from None
    return check_reference(rgb, str(path))


def png_bytes(rgb: np.ndarray) -> bytes:
    """uint8 RGB [H, W, 3] -> PNG bytes: how a reference travels to an export's signature."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
