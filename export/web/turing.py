"""The "which one is real?" test (Zhang et al. 2016): pairs and answers.

A trial shows one real colour photo and its colorization (made from the real photo's own
L, so the two differ only in colour) in random left/right order. A person who picks the
colorization as the real one was fooled; the fooling rate is fooled answers over all
answers, per model (50% would mean the colorizations cannot be told apart).
"""

from __future__ import annotations

import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from export.images import UnusableImage, load_photo

SIDES = ("left", "right")

# scikit-image's natural colour photos (its other files are drawings, microscopy or gray).
SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")


def sample_photos() -> list[Path]:
    """The default photos: the ones scikit-image ships, so the page works offline."""
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    return [folder / name for name in SAMPLE_PHOTOS if (folder / name).exists()]


class Trial(NamedTuple):
    token: str
    model: str
    photo: str
    real_side: str
    chosen: str | None  # None until answered

    @property
    def fooled(self) -> bool:
        return self.chosen is not None and self.chosen != self.real_side


class Answers:
    """Trials and answers in SQLite, one connection per call (the server runs requests in threads)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("""CREATE TABLE IF NOT EXISTS trials (
                token TEXT PRIMARY KEY, model TEXT NOT NULL, photo TEXT NOT NULL,
                real_side TEXT NOT NULL CHECK (real_side IN ('left', 'right')),
                chosen TEXT CHECK (chosen IN ('left', 'right')),
                shown_at REAL NOT NULL, answered_at REAL)""")  # fmt: skip

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=10)) as db, db:  # `with db` commits
            yield db

    def new(self, model: str, photo: str) -> Trial:
        """A new trial of `photo` with the real photo on a random side."""
        trial = Trial(secrets.token_urlsafe(12), model, photo, random.choice(SIDES), None)
        with self._connect() as db:
            db.execute("INSERT INTO trials (token, model, photo, real_side, shown_at) VALUES (?, ?, ?, ?, ?)",
                       (*trial[:4], time.time()))  # fmt: skip
        return trial

    def get(self, token: str) -> Trial | None:
        with self._connect() as db:
            row = db.execute("SELECT token, model, photo, real_side, chosen FROM trials WHERE token = ?",
                             (token,)).fetchone()  # fmt: skip
        return Trial(*row) if row else None

    def answer(self, token: str, chosen: str) -> bool:
        """Record the side picked as real; False if the trial is unknown or already answered."""
        if chosen not in SIDES:
            raise ValueError(f"choice must be one of {SIDES}, got {chosen!r}")
        with self._connect() as db:
            cursor = db.execute("UPDATE trials SET chosen = ?, answered_at = ? WHERE token = ? AND chosen IS NULL",
                                (chosen, time.time(), token))  # fmt: skip
        return cursor.rowcount == 1

    def fooling_rate(self, model: str) -> tuple[int, int]:
        """(fooled, answered) over the answered trials of `model`."""
        with self._connect() as db:
            fooled, answered = db.execute(
                "SELECT COALESCE(SUM(chosen != real_side), 0), COUNT(*) FROM trials "
                "WHERE model = ? AND chosen IS NOT NULL",
                (model,),
            ).fetchone()
        return int(fooled), int(answered)


class Pairs:
    """Real photos shrunk to `side` pixels and their colorizations, made on first use and kept."""

    def __init__(self, photos: list[Path], colorize: Callable[[np.ndarray], np.ndarray], side: int,
                 max_pixels: int) -> None:  # fmt: skip
        self.photos = {path.name: path for path in photos}
        self.colorize = colorize
        self.side = side
        self.max_pixels = max_pixels
        self._made: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def pick(self) -> str | None:
        """A random photo that can be read (unreadable ones are dropped), or None if none is left."""
        while self.photos:
            name = random.choice(sorted(self.photos))
            try:
                self.images(name)
                return name
            except UnusableImage:
                self.photos.pop(name, None)
        return None

    def images(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(real, colorized) uint8 RGB [h, w, 3] of photo `name`; raises UnusableImage or KeyError."""
        with self._lock:
            if name not in self._made:
                real = Image.fromarray(load_photo(self.photos[name], self.max_pixels))
                real.thumbnail((self.side, self.side), Image.Resampling.LANCZOS)
                real = np.asarray(real)
                self._made[name] = real, self.colorize(real)
            return self._made[name]
