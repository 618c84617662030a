"""`python -m evaluate.stability`: how steady a sequence's colours are from one frame to the next.

    python -m evaluate.stability --model exports/guided --reference REF.jpg [--hints hints.json] film.mp4
    python -m evaluate.stability --score colorized/film.mp4 colorized/frames/   # already colorized

The score of a colour sequence is the mean ab change between consecutive frames, in Lab
units, over the pixels whose lightness barely changed (|dL| < STILL_LIGHTNESS): where the
scene holds still, its colours should too, and any change there is flicker. Lower is
steadier; 0 is a sequence whose still pixels never change colour. Pixels that moved or
changed light are left out, since their colour may rightly change. Comparing colorizations
of one source, "still" is judged on the source's L, so every colorization is scored on the
same pixels (a colorization keeps the source's L, except where a colour out of the sRGB
gamut is clipped). A gray
sequence is perfectly steady, so the score is printed beside the mean chroma sqrt(a^2 + b^2)
of the frames: steadiness bought with dullness shows there.

With --model it colorizes the sequence twice, each frame alone (automatic: no hints) and
guided (the same --reference and --hints for every frame, as `colorize` does), scores
both and prints the ratio; with --score it scores sequences as they are (folders of frames
or videos). Exit codes: 0 done, 2 bad arguments or an unreadable sequence.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from preprocess.console import quiet_tensorflow  # noqa: E402

quiet_tensorflow(sys.argv)  # before anything imports TensorFlow: its log lines only with --verbose

import numpy as np  # noqa: E402

from export.guidance import GuidanceError, outside, png_bytes, read_hints, read_reference  # noqa: E402
from export.sequence import SequenceError, read_sequence  # noqa: E402
from preprocess import atomic, color  # noqa: E402

# |dL| (L in 0..100) under which a pixel counts as still: about 5 gray levels at mid-gray,
# above the jitter of uint8 rounding and video compression on a static shot, far below an edge moving past.
STILL_LIGHTNESS = 2.0


class Stability:
    """The score accumulated frame by frame: `add(rgb)` for each frame in order, then `.score`.

    score: mean |ab(t) - ab(t-1)| (Euclidean, Lab units) over the still pixels of every
    pair of consecutive frames; `still_fraction` the share of pixels that were still;
    `chroma` the mean chroma sqrt(a^2 + b^2) of every pixel of every frame.
    """

    def __init__(self, still_lightness: float = STILL_LIGHTNESS) -> None:
        self.still_lightness = still_lightness
        self.frames = 0
        self.change = 0.0  # sum of |d ab| over still pixels
        self.still = 0  # still pixels counted
        self.pixels = 0  # all pixels of the pairs
        self.chroma_sum = 0.0  # chroma over every pixel of every frame
        self.chroma_pixels = 0
        self._previous: np.ndarray | None = None  # Lab [H, W, 3] of the last frame, L replaced by `lightness`

    def add(self, rgb: np.ndarray, lightness: np.ndarray | None = None) -> None:
        """One frame, uint8 RGB [H, W, 3], the size of the others; `lightness` [H, W] (0..100):
        the L that decides which pixels are still (default: the frame's own)."""
        lab = color.rgb_to_lab(np.asarray(rgb, np.uint8)).numpy().astype(np.float64)  # [H, W, 3]
        if lightness is not None:
            lab[..., 0] = lightness
        self.chroma_sum += float(np.hypot(lab[..., 1], lab[..., 2]).sum())
        self.chroma_pixels += lab.shape[0] * lab.shape[1]
        if self._previous is not None:
            if lab.shape != self._previous.shape:
                raise ValueError(f"frame {self.frames} is {lab.shape[1]} x {lab.shape[0]}, the one before "
                                 f"{self._previous.shape[1]} x {self._previous.shape[0]}")  # fmt: skip
            difference = lab - self._previous
            still = np.abs(difference[..., 0]) < self.still_lightness
            self.change += float(np.hypot(difference[..., 1], difference[..., 2])[still].sum())
            self.still += int(still.sum())
            self.pixels += still.size
        self._previous = lab
        self.frames += 1

    @property
    def score(self) -> float:
        """Mean ab change on still pixels (Lab units); NaN when no pixel was ever still."""
        return self.change / self.still if self.still else float("nan")

    @property
    def still_fraction(self) -> float:
        return self.still / self.pixels if self.pixels else float("nan")

    @property
    def chroma(self) -> float:
        return self.chroma_sum / self.chroma_pixels if self.chroma_pixels else float("nan")

    def summary(self) -> dict[str, float]:
        return {"score": self.score, "frames": self.frames, "still_fraction": self.still_fraction, "chroma": self.chroma}


def stability(frames: Iterable[np.ndarray], still_lightness: float = STILL_LIGHTNESS) -> Stability:
    """The score of a sequence of uint8 RGB frames [H, W, 3] (see `Stability`)."""
    result = Stability(still_lightness)
    for frame in frames:
        result.add(frame)
    return result


def compare(colorizer, source: Path, hints: list, reference: bytes, size: int | None = None,
            still_lightness: float = STILL_LIGHTNESS, batch_frames: int = 16) -> dict[str, Stability]:  # fmt: skip
    """Colorize a sequence frame by frame ("automatic") and guided ("guided", with `hints` and the
    encoded `reference`), scoring both as the frames come, still pixels judged on the source's
    L: {"automatic": ..., "guided": ...}."""
    scores = {"automatic": Stability(still_lightness), "guided": Stability(still_lightness)}
    batch: list[np.ndarray] = []

    def flush() -> None:
        frames = np.stack(batch)
        lightness = color.rgb_to_lab(frames).numpy()[..., 0]  # [N, H, W]
        for frame, source in zip(colorizer.colorize_batch(frames, size), lightness):
            scores["automatic"].add(frame, source)
        for frame, source in zip(colorizer.colorize_batch(frames, size, hints=hints, reference=reference), lightness):
            scores["guided"].add(frame, source)
        batch.clear()

    for index, (_, frame) in enumerate(read_sequence(source).frames()):
        if index == 0:
            why = outside(hints, *frame.shape[:2], what=f"the frames of {source}")
            if why:
                raise GuidanceError(f"hints: {why}")
        batch.append(frame)
        if len(batch) == batch_frames:
            flush()
    if batch:
        flush()
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluate.stability", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("sequences", nargs="+", type=Path, metavar="SEQUENCE", help="folders of frames or videos")
    add("--model", type=Path, default=None, help="an export that takes hints: colorize each SEQUENCE both ways")
    add("--version", type=int, default=None, help="export version (default: the newest)")
    add("--reference", type=Path, default=None, help="the reference photo of the guided colorization")
    add("--hints", type=Path, default=None, help="hints of the guided colorization (JSON, as for colorize)")
    add("--size", type=int, default=None, help="working size (default: the export's)")
    add("--score", action="store_true", help="score the SEQUENCEs as they are (already colorized)")
    add("--still-lightness", type=float, default=STILL_LIGHTNESS,
        help=f"|dL| under which a pixel counts as still (default: {STILL_LIGHTNESS:g})")
    add("--json", type=Path, default=None, help="also write the scores here")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines")
    args = parser.parse_args(argv)
    if args.score == (args.model is not None):
        parser.error("give either --model (colorize and compare) or --score (score as they are)")
    if args.model is not None and not (args.reference or args.hints):
        parser.error("--model needs --reference and/or --hints for the guided colorization")

    results: dict[str, dict] = {}
    try:
        if args.score:
            for source in args.sequences:
                scored = stability((frame for _, frame in read_sequence(source).frames()), args.still_lightness)
                results[str(source)] = scored.summary()
                print(f"{source}: stability {scored.score:.3f} (mean |d ab| on still pixels, Lab units) over "
                      f"{scored.frames} frames; {100 * scored.still_fraction:.1f}% of pixels still "
                      f"(|dL| < {args.still_lightness:g}); mean chroma {scored.chroma:.1f}")  # fmt: skip
        else:
            from export.inference import Colorizer, ExportNotFound

            try:
                colorizer = Colorizer(args.model, args.version)
            except ExportNotFound as error:
                raise GuidanceError(str(error)) from None
            if not colorizer.takes_hints:
                raise GuidanceError(f"{colorizer.label} ({colorizer.info['model']}) takes no hints or reference photo")
            hints = read_hints(args.hints) if args.hints else []
            reference = png_bytes(read_reference(args.reference)) if args.reference else b""
            for source in args.sequences:
                scores = compare(colorizer, source, hints, reference, args.size, args.still_lightness)
                automatic, guided = scores["automatic"], scores["guided"]
                ratio = automatic.score / guided.score if guided.score > 0 else float("inf")
                results[str(source)] = {"model": colorizer.label, "reference": str(args.reference or ""),
                                        "hints": str(args.hints or ""), "still_lightness": args.still_lightness,
                                        "automatic": automatic.summary(), "guided": guided.summary(),
                                        "steadier": ratio}  # fmt: skip
                print(f"{source}: {guided.frames} frames, {100 * guided.still_fraction:.1f}% of pixels still "
                      f"(|dL| < {args.still_lightness:g}); mean |d ab| on still pixels (Lab units, lower is steadier):\n"
                      f"  each frame alone   {automatic.score:.3f}   (mean chroma {automatic.chroma:.1f})\n"
                      f"  guided             {guided.score:.3f}   (mean chroma {guided.chroma:.1f}; "
                      f"{ratio:.2f}x steadier)")  # fmt: skip
    except (SequenceError, GuidanceError) as error:
        print(f"stability: {error}", file=sys.stderr)
        return 2
    if args.json:
        atomic.write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
