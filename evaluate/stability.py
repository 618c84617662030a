"""`python -m evaluate.stability`: how steady a sequence's colours are from one frame to the next.

    python -m evaluate.stability --model exports/guided --reference REF.jpg [--hints hints.json] film.mp4
    python -m evaluate.stability --model exports/guided --reference REF.jpg --truth colour/ gray/   # and how right
    python -m evaluate.stability --score colorized/film.mp4 colorized/frames/   # already colorized

The score of a colour sequence is the mean ab change between consecutive frames, in Lab
units, over the pixels whose lightness barely changed: where the scene holds still, its
colours should too, and any change there is flicker. Lower is steadier; 0 is a sequence
whose still pixels never change colour. Pixels that moved or changed light are left out,
since their colour may rightly change. Comparing colorizations of one source, "still" is
judged on the source's L, so every colorization is scored on the same pixels: those whose
gray value did not change (|dL| < SOURCE_STILL_LIGHTNESS). A sequence scored as it is is
judged on its own L, within STILL_LIGHTNESS (about five gray levels), since 8-bit rounding
moves a colorization's L a little with its colour. A gray
sequence is perfectly steady, so the score is printed beside the mean chroma sqrt(a^2 + b^2)
of the frames: steadiness bought with dullness shows there.

With --follow-camera each frame is compared with the one before moved by the camera's shift
(one translation, found on the source as `colorize --steady` finds it, export/steady.py):
on a pan, a pixel then compares the same piece of the scene in both frames, as Lai et al.
2018's warping error does with optical flow, instead of whatever slid under it.

With --model it colorizes the sequence four ways: each frame alone (automatic: no hints),
guided (the same --reference and --hints for every frame, as `colorize --steady=0` does),
and both again with the colours carried from frame to frame (`colorize --steady=S`, the
default for sequences), scores them and prints the ratios to each frame alone. --truth
gives the colour frames of each SEQUENCE (same order, same size): then the mean ab error
(Euclidean, Lab units) and PSNR (dB, RGB) against them are printed too, so steadiness that
cost accuracy shows. With --score it scores sequences as they are (folders of frames or
videos). Exit codes: 0 done, 2 bad arguments or an unreadable sequence.
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

from export import PRECISION_HELP, PRECISIONS  # noqa: E402
from export.guidance import GuidanceError, outside, png_bytes, read_hints, read_reference  # noqa: E402
from export.sequence import SequenceError, read_sequence  # noqa: E402
from export.steady import DEFAULT_STRENGTH, Steadier, camera_shift, strength_argument, translate  # noqa: E402
from evaluate.metrics import psnr  # noqa: E402
from preprocess import atomic, color  # noqa: E402

# |dL| (L in 0..100) under which a pixel counts as still when colorizations of one source are
# compared, judged on the source's L: under the smallest step between two 8-bit gray levels
# (0.27), so a pixel of a gray source is still when its value did not change. Only then do the
# true colours of a static shot score 0, as a measure of flicker must: at 2 (the earlier
# default) they scored 0.17 to 0.45 on BENCHMARKS.md's grainy static films, as much as the
# flicker measured, because one colour over each frame's own grain, rounded to 8-bit RGB, has a
# slightly different ab every frame.
SOURCE_STILL_LIGHTNESS = 0.1
# The same for a sequence scored as it is (--score), on its own L: a colorization's L moves
# with its colour by up to half a gray level (8-bit rounding), so a tighter bound would leave
# out the very pixels whose colour flickers; about five gray levels at mid-gray.
STILL_LIGHTNESS = 2.0


class Stability:
    """The score accumulated frame by frame: `add(rgb)` for each frame in order, then `.score`.

    score: mean |ab(t) - ab(t-1)| (Euclidean, Lab units) over the still pixels of every
    pair of consecutive frames; `still_fraction` the share of pixels that were still;
    `chroma` the mean chroma sqrt(a^2 + b^2) of every pixel of every frame. With
    `follow_camera`, frame t-1 is first moved by the camera's shift between the two (pixels
    that came into view are not counted). Frames given with their `truth` also score
    `ab_error`, the mean Euclidean ab distance to it (Lab units), and `psnr` (dB, RGB 0..255),
    both averaged over those frames.
    """

    def __init__(self, still_lightness: float = STILL_LIGHTNESS, follow_camera: bool = False) -> None:
        self.still_lightness = still_lightness
        self.follow_camera = follow_camera
        self.frames = 0
        self.change = 0.0  # sum of |d ab| over still pixels
        self.still = 0  # still pixels counted
        self.pixels = 0  # all pixels of the pairs
        self.chroma_sum = 0.0  # chroma over every pixel of every frame
        self.chroma_pixels = 0
        self.error_sum = 0.0  # per-frame mean |ab - ab_truth|, summed over the frames with a truth
        self.psnr_sum = 0.0
        self.truth_frames = 0
        self._previous: np.ndarray | None = None  # Lab [H, W, 3] of the last frame, L replaced by `lightness`

    def add(self, rgb: np.ndarray, lightness: np.ndarray | None = None, truth: np.ndarray | None = None) -> None:
        """One frame, uint8 RGB [H, W, 3], the size of the others; `lightness` [H, W] (0..100):
        the L that decides which pixels are still (default: the frame's own); `truth` uint8
        RGB [H, W, 3]: the frame's true colours, if known."""
        lab = color.rgb_to_lab(np.asarray(rgb, np.uint8)).numpy().astype(np.float64)  # [H, W, 3]
        if truth is not None:
            truth_ab = color.rgb_to_lab(np.asarray(truth, np.uint8)).numpy()[..., 1:]
            self.error_sum += float(np.hypot(*np.moveaxis(lab[..., 1:] - truth_ab, -1, 0)).mean())
            self.psnr_sum += psnr(truth, rgb)
            self.truth_frames += 1
        if lightness is not None:
            lab[..., 0] = lightness
        self.chroma_sum += float(np.hypot(lab[..., 1], lab[..., 2]).sum())
        self.chroma_pixels += lab.shape[0] * lab.shape[1]
        if self._previous is not None:
            if lab.shape != self._previous.shape:
                raise ValueError(f"frame {self.frames} is {lab.shape[1]} x {lab.shape[0]}, the one before "
                                 f"{self._previous.shape[1]} x {self._previous.shape[0]}")  # fmt: skip
            previous, valid = self._previous, np.ones(lab.shape[:2], bool)
            if self.follow_camera:
                shift = camera_shift(previous[..., 0].astype(np.float32), lab[..., 0].astype(np.float32))
                previous, valid = translate(previous, *shift)
            difference = lab - previous
            still = valid & (np.abs(difference[..., 0]) < self.still_lightness)
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
        summary = {"score": self.score, "frames": self.frames, "still_fraction": self.still_fraction,
                   "chroma": self.chroma}  # fmt: skip
        if self.truth_frames:
            summary.update(ab_error=self.error_sum / self.truth_frames, psnr=self.psnr_sum / self.truth_frames)
        return summary


def stability(frames: Iterable[np.ndarray], still_lightness: float = STILL_LIGHTNESS,
              follow_camera: bool = False) -> Stability:  # fmt: skip
    """The score of a sequence of uint8 RGB frames [H, W, 3] (see `Stability`)."""
    result = Stability(still_lightness, follow_camera)
    for frame in frames:
        result.add(frame)
    return result


# The four colorizations `compare` scores, in the order they are printed.
WAYS = {
    "automatic": "each frame alone",
    "guided": "guided",
    "automatic_steady": "each frame alone, carried",
    "guided_steady": "guided, carried",
}


def compare(colorizer, source: Path, hints: list, reference: bytes, size: int | None = None,
            still_lightness: float = SOURCE_STILL_LIGHTNESS, batch_frames: int = 16, steady: float = DEFAULT_STRENGTH,
            truth: Path | None = None, follow_camera: bool = False) -> dict[str, Stability]:  # fmt: skip
    """Colorize a sequence frame by frame ("automatic") and guided ("guided", with `hints` and the
    encoded `reference`), each also with its colours carried by `export.steady.Steadier(steady)`
    ("automatic_steady", "guided_steady"), scoring all four as the frames come, still pixels
    judged on the source's L (see WAYS). `truth`: a sequence of the true colour frames, scored against."""
    scores = {way: Stability(still_lightness, follow_camera) for way in WAYS}
    steadiers = {"automatic": Steadier(steady), "guided": Steadier(steady)}
    true_frames = read_sequence(truth).frames() if truth is not None else None
    batch: list[np.ndarray] = []

    def flush() -> None:
        frames = np.stack(batch)
        lightness = color.rgb_to_lab(frames).numpy()[..., 0]  # [N, H, W]
        truths = [None] * len(frames)
        if true_frames is not None:
            truths = [next(true_frames, (None, None))[1] for _ in frames]
            if truths[-1] is None or truths[-1].shape != frames[0].shape:
                raise SequenceError(f"{truth}: not the colour frames of {source} (fewer frames or another size)")
        colorized = {"automatic": colorizer.colorize_batch(frames, size),
                     "guided": colorizer.colorize_batch(frames, size, hints=hints, reference=reference)}  # fmt: skip
        for way, outputs in colorized.items():
            for gray, output, source_lightness, true in zip(frames, outputs, lightness, truths):
                scores[way].add(output, source_lightness, true)
                scores[f"{way}_steady"].add(steadiers[way](gray, output), source_lightness, true)
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
    if true_frames is not None and next(true_frames, None) is not None:
        raise SequenceError(f"{truth}: more frames than {source}")
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluate.stability", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("sequences", nargs="+", type=Path, metavar="SEQUENCE", help="folders of frames or videos")
    add("--model", type=Path, default=None, help="an export that takes hints: colorize each SEQUENCE four ways")
    add("--version", type=int, default=None, help="export version (default: the newest)")
    add("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    add("--reference", type=Path, default=None, help="the reference photo of the guided colorization")
    add("--hints", type=Path, default=None, help="hints of the guided colorization (JSON, as for colorize)")
    add("--size", type=int, default=None, help="working size (default: the export's)")
    add("--steady", type=strength_argument, default=DEFAULT_STRENGTH,
        help=f"strength of the carried colours, as colorize --steady (default: {DEFAULT_STRENGTH:g})")
    add("--truth", type=Path, nargs="+", default=None, metavar="TRUTH",
        help="the true colour frames of each SEQUENCE, in the same order: also score the error against them")
    add("--score", action="store_true", help="score the SEQUENCEs as they are (already colorized)")
    add("--still-lightness", type=float, default=None,
        help=f"|dL| under which a pixel counts as still (default: {SOURCE_STILL_LIGHTNESS:g} on the source's L "
             f"with --model, {STILL_LIGHTNESS:g} on the frames' own with --score)")
    add("--follow-camera", action="store_true",
        help="compare each frame with the one before moved by the camera's shift (pans)")
    add("--json", type=Path, default=None, help="also write the scores here")
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's own log lines")
    args = parser.parse_args(argv)
    if args.score == (args.model is not None):
        parser.error("give either --model (colorize and compare) or --score (score as they are)")
    if args.model is not None and not (args.reference or args.hints):
        parser.error("--model needs --reference and/or --hints for the guided colorization")
    if args.truth is not None and (args.score or len(args.truth) != len(args.sequences)):
        parser.error(f"--truth takes one colour sequence per SEQUENCE ({len(args.sequences)}), with --model")
    if args.still_lightness is None:
        args.still_lightness = STILL_LIGHTNESS if args.score else SOURCE_STILL_LIGHTNESS

    results: dict[str, dict] = {}
    try:
        if args.score:
            for source in args.sequences:
                frames = (frame for _, frame in read_sequence(source).frames())
                scored = stability(frames, args.still_lightness, args.follow_camera)
                results[str(source)] = scored.summary()
                print(f"{source}: stability {scored.score:.3f} (mean |d ab| on still pixels, Lab units) over "
                      f"{scored.frames} frames; {100 * scored.still_fraction:.1f}% of pixels still "
                      f"(|dL| < {args.still_lightness:g}); mean chroma {scored.chroma:.1f}")  # fmt: skip
        else:
            from export.inference import Colorizer, ExportNotFound

            try:
                colorizer = Colorizer(args.model, args.version, args.precision)
            except ExportNotFound as error:
                raise GuidanceError(str(error)) from None
            if not colorizer.takes_hints:
                raise GuidanceError(f"{colorizer.label} ({colorizer.info['model']}) takes no hints or reference photo")
            hints = read_hints(args.hints) if args.hints else []
            reference = png_bytes(read_reference(args.reference)) if args.reference else b""
            for index, source in enumerate(args.sequences):
                truth = args.truth[index] if args.truth else None
                scores = compare(colorizer, source, hints, reference, args.size, args.still_lightness,
                                 steady=args.steady, truth=truth, follow_camera=args.follow_camera)  # fmt: skip
                alone = scores["automatic"].score
                ratios = {way: alone / scored.score if scored.score > 0 else float("inf")
                          for way, scored in scores.items()}  # fmt: skip
                results[str(source)] = {"model": colorizer.label, "reference": str(args.reference or ""),
                                        "hints": str(args.hints or ""), "still_lightness": args.still_lightness,
                                        "steady": args.steady, "follow_camera": args.follow_camera,
                                        "truth": str(truth or ""),
                                        **{way: scored.summary() for way, scored in scores.items()},
                                        "steadier": ratios["guided"],
                                        "steadier_carried": ratios["guided_steady"]}  # fmt: skip
                lines = []
                for way, label in WAYS.items():
                    scored = scores[way]
                    line = f"  {label:<27} {scored.score:.3f}   (mean chroma {scored.chroma:.1f}"
                    if scored.truth_frames:
                        error, decibels = scored.summary()["ab_error"], scored.summary()["psnr"]
                        line += f"; against the truth: ab error {error:.2f}, {decibels:.2f} dB"
                    lines.append(line + (f"; {ratios[way]:.2f}x steadier)" if way != "automatic" else ")"))
                camera = ", the camera's shift followed" if args.follow_camera else ""
                print(f"{source}: {scores['guided'].frames} frames, {100 * scores['guided'].still_fraction:.1f}% of "
                      f"pixels still (|dL| < {args.still_lightness:g}{camera}); mean |d ab| on still pixels (Lab "
                      f"units, lower is steadier), carried with --steady={args.steady:g}:\n" + "\n".join(lines))  # fmt: skip
    except (SequenceError, GuidanceError) as error:
        print(f"stability: {error}", file=sys.stderr)
        return 2
    if args.json:
        atomic.write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
