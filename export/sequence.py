"""Sequences of frames for `colorize`: a folder of frames or a video file in, frames or an mp4 out.

    read_sequence(path)      a folder of frames (sorted by name, numbers in order: f2 before f10)
                             or a video (mp4, mov, avi, mkv, webm, ...) -> Sequence (frames streamed)
    write_frames / VideoOut  frames into a folder or an H.264 mp4 at the source's frame rate,
                             both whole or not at all (hidden temporary name, renamed when complete)

Videos go through imageio's ffmpeg plugin; imageio-ffmpeg ships its own ffmpeg binary, so
nothing else needs installing. Both are the optional extra `video`:
`pip install 'colorize-pipeline[video]'`; without it a video is refused with that line.
Audio is not carried over. H.264 in the yuv420p layout every player reads needs even
sides: a frame with an odd side gets its last row or column repeated once.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, UnusableImage, load_photo

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv"})
VIDEO_EXTRA = "pip install 'colorize-pipeline[video]' (imageio and imageio-ffmpeg)"
# Constant quality (x264's CRF): 18 is about visually lossless, what an archive keeps.
VIDEO_CRF = 18
# Frames per second of a folder of frames written as a video, when nothing says otherwise.
DEFAULT_FPS = 25.0


class SequenceError(Exception):
    """A sequence that cannot be read or written: `str()` names the file and the reason."""


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _natural_key(path: Path) -> list:
    """frame2.png before frame10.png: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


def _require_video_extra(path: Path) -> None:
    if importlib.util.find_spec("imageio") is None or importlib.util.find_spec("imageio_ffmpeg") is None:
        raise SequenceError(f"{path}: videos need the optional extra `video`: {VIDEO_EXTRA}")


@dataclass
class Sequence:
    """A sequence to colorize: `frames()` yields (name, uint8 RGB [H, W, 3]) in order, one at a time.

    `fps` is the video's frame rate (None for a folder of frames); `count` the number of
    frames when known before reading them (a folder's), else None.
    """

    path: Path
    fps: float | None
    count: int | None
    _names: list[Path] = field(default_factory=list, repr=False)
    max_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def is_video(self) -> bool:
        return is_video(self.path)

    def frames(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, frame) in order; every frame the size of the first, else SequenceError."""
        first_shape = None
        for name, frame in self._video_frames() if self.is_video else self._folder_frames():
            if first_shape is None:
                first_shape = frame.shape
            elif frame.shape != first_shape:
                raise SequenceError(f"{self.path / name if not self.is_video else self.path}: frame {name} is "
                                    f"{frame.shape[1]} x {frame.shape[0]} pixels, the first one "
                                    f"{first_shape[1]} x {first_shape[0]}; a sequence has one size")  # fmt: skip
            yield name, frame

    def _folder_frames(self) -> Iterator[tuple[str, np.ndarray]]:
        for path in self._names:
            try:
                yield str(path.relative_to(self.path)), load_photo(path, self.max_pixels)
            except UnusableImage as error:
                raise SequenceError(f"{path}: {error.reason}") from None

    def _video_frames(self) -> Iterator[tuple[str, np.ndarray]]:
        import imageio.v2 as imageio

        try:
            reader = imageio.get_reader(self.path, format="FFMPEG")
        except Exception as error:  # imageio raises OSError, RuntimeError or ValueError depending on the failure
            raise SequenceError(f"{self.path}: cannot read it as a video ({_first_line(error)})") from None
        with reader:
            decoded, index = iter(reader), 0
            while True:
                try:
                    frame = next(decoded)
                except StopIteration:
                    return
                except Exception as error:
                    raise SequenceError(f"{self.path}: frame {index} cannot be decoded ({_first_line(error)})") from None
                yield f"frame-{index:06d}", np.asarray(frame[..., :3], np.uint8)
                index += 1


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def read_sequence(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Sequence:
    """The sequence in a folder of frames or a video file; SequenceError when there is none.

    A folder's frames are its image files (not its subfolders'), sorted by name with
    numbers in numeric order.
    """
    path = Path(path)
    if path.is_dir():
        names = sorted((child for child in path.iterdir() if child.suffix.lower() in IMAGE_SUFFIXES and child.is_file()),
                       key=_natural_key)  # fmt: skip
        if not names:
            raise SequenceError(f"{path}: no frames (files ending in {' '.join(sorted(IMAGE_SUFFIXES))})")
        return Sequence(path, None, len(names), names, max_pixels)
    if not path.exists():
        raise SequenceError(f"{path}: no such file or folder")
    if not is_video(path):
        raise SequenceError(f"{path}: not a folder of frames or a video ({' '.join(sorted(VIDEO_SUFFIXES))})")
    _require_video_extra(path)
    import imageio.v2 as imageio

    try:
        with imageio.get_reader(path, format="FFMPEG") as reader:
            fps = float(reader.get_meta_data().get("fps") or DEFAULT_FPS)
    except Exception as error:
        raise SequenceError(f"{path}: cannot read it as a video ({_first_line(error)})") from None
    return Sequence(path, fps, None, [], max_pixels)


def even_sides(frame: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> [H + H % 2, W + W % 2, 3], the last row / column repeated (H.264 4:2:0 needs even sides)."""
    return np.pad(frame, [(0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)], mode="edge")


class VideoOut:
    """An H.264 mp4 written frame by frame under a hidden temporary name, renamed by `close()`.

    Use as a context manager: leaving it by an exception removes the temporary file, so a
    failed or interrupted run leaves no partial video.
    """

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = Path(path)
        _require_video_extra(self.path)
        import imageio.v2 as imageio

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.temporary = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}{self.path.suffix}")
        self.frames = 0
        self._writer = imageio.get_writer(self.temporary, format="FFMPEG", fps=fps, codec="libx264", quality=None,
                                          pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
                                          output_params=["-crf", str(VIDEO_CRF)])  # fmt: skip

    def write(self, frame: np.ndarray) -> None:
        self._writer.append_data(even_sides(np.asarray(frame, np.uint8)))
        self.frames += 1

    def __enter__(self) -> VideoOut:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            self._writer.close()
            if kind is None:
                if not self.frames:
                    raise SequenceError(f"{self.path}: no frames to write")
                os.replace(self.temporary, self.path)
        finally:
            self.temporary.unlink(missing_ok=True)


class FramesOut:
    """A folder of frames written under a hidden temporary name, renamed over `path` by a clean exit.

    An existing `path` is replaced only once the new sequence is complete; leaving by an
    exception removes the temporary folder.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.temporary = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        shutil.rmtree(self.temporary, ignore_errors=True)
        self.temporary.mkdir(parents=True)
        self.frames = 0

    def file(self, name: str) -> Path:
        """Where frame `name` (a relative file name) goes inside the temporary folder."""
        self.frames += 1
        target = self.temporary / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def __enter__(self) -> FramesOut:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
                if self.path.exists():
                    os.replace(self.path, old)
                os.replace(self.temporary, self.path)
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(self.temporary, ignore_errors=True)
