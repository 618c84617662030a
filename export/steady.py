"""Steady colours in a film: each frame's colour carried forward where the picture holds still.

    steady = Steadier(0.8)                      # `colorize --steady=0.8`, the default for sequences
    for gray, colour in frames:                 # uint8 RGB [H, W, 3]: a source frame, its colorization alone
        out = steady(gray, colour)              # uint8 RGB [H, W, 3]

A colorizer sees one frame at a time, so film grain, an exposure flicker or a pan of a few
pixels give it a slightly different picture every frame and its colours flicker. This is the
simple, non-learned answer of the blind temporal-consistency literature (Bonneel et al. 2015,
"Blind Video Temporal Consistency"; Lai et al. 2018, "Learning Blind Video Temporal
Consistency", whose baselines it follows): the output's ab at frame t is blended, pixel by
pixel at full resolution, with the previous output's ab brought to where that content is now:

    ab_out(t) = w * ab_out(t - 1)[moved by the camera's shift] + (1 - w) * ab_frame(t)
    w = strength * exp(-(dL / LIGHTNESS_SCALE)^2)

with dL the change of the source's lightness (L, 0..100, over a 3 x 3 box so grain counts
less) between the two frames at that pixel, after the shift. A still surface (dL about 0)
keeps its colour, refreshed by a share 1 - strength of each new frame, so colours follow
slow changes of light and a wrong first guess fades; a pixel whose lightness changed (an
object moved in, a cut) takes the new frame's colour, since dL is large there. The first
frame is the model's own. L is always the frame's own: only colour is carried. A frame
where most pixels changed light (the median dL above LIGHTNESS_SCALE) is taken as a cut,
and carries nothing: else the pixels whose lightness matched the last shot's by chance
would keep its colours for a few frames.

The blended colour is then written in 8 bits, and plain rounding would undo part of the
carrying: a still pixel whose carried colour drifts by a tenth of a level flips between two
neighbouring codes now and then, and a flip of one level in one channel moves ab by about
0.5 to 1 Lab units, several times the drift (on a static film, 0.21 Lab units of flicker
from the 8-bit output where the carried colours moved by 0.10). So a pixel keeps its
previous output code while the exact blended colour stays within KEEP_WITHIN of it in every
channel (hysteresis: a quantizer that holds its output until the input has moved past a
margin), and takes the rounded new colour once it has moved further: the output never
strays from the exact colour by more than KEEP_WITHIN of a level, where rounding allows half
of one.

The camera's shift is one translation per frame, found by phase correlation of the two
frames' L (Kuglin and Hines 1975) and kept only when it lowers the mean |dL| against no shift:
pans and tilts, the camera moves of most archive film, then carry colour with the content
instead of smearing it across the frame. Pixels that came into view take the new frame's
colour. Zooms, rotations and objects moving on their own are not followed: there the lightness
gate is what keeps stale colour off them (Bonneel et al. warp with optical flow instead, at
many times the cost per frame).

Carrying colours forward as hints for the guided model's next frame was the other choice:
hints are a few points at the model's working size (64 to 256 px), which the network
spreads by what looks alike, so they would carry a frame's colour coarsely and at a graph
call's cost, while blending carries every pixel at the film's resolution for a few
element-wise operations; and blending works for every model, guided or not. Only the
previous frame is kept (two arrays of the frame's size): a film of any length streams.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

import numpy as np

# Default strength of `colorize --steady` for sequences: on still pixels each frame keeps
# 80% of the colour so far, so an independent per-frame jitter is cut about 6-fold
# ((1 - s) / sqrt(1 + s)) and a lasting change of colour is followed within about 10 frames.
DEFAULT_STRENGTH = 0.8
# dL (Lab L units) at which the carried share has fallen to 1/e of `strength`: film grain of a
# few gray levels (about 1 L unit once box-averaged) keeps most of it, an edge passing (tens of
# units) none. On BENCHMARKS.md's static films 6 left 9% to 33% less flicker than 3, with the
# same error against the true colours (section "guided: colour stability of a film").
LIGHTNESS_SCALE = 6.0
# Levels (of 255) the exact blended colour may move from a still pixel's previous output code, in
# every channel, before the pixel takes a new code: one, so the output stays within a level of
# the exact colour. On BENCHMARKS.md's static films, reference-guided, 1 left 1.5x to
# 6x less flicker than 0.75 and 2.3x to 40x less than plain rounding.
KEEP_WITHIN = 1.0
# The largest camera shift looked for, as a share of the frame's height and width.
MAX_SHIFT = 0.125


def check_strength(strength: float) -> float:
    """`strength` if it is in [0, 1), else ValueError saying why (1 would freeze the first frame's colours)."""
    if not (0.0 <= strength < 1.0):  # also refuses NaN
        raise ValueError(f"must be at least 0 and below 1 (0 turns carrying off; 1 would keep the first "
                         f"frame's colours for ever), not {strength:g}")  # fmt: skip
    return strength


def strength_argument(text: str) -> float:
    """argparse type of --steady (`colorize`, `python -m evaluate.stability`): a float in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    try:
        return check_strength(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def camera_shift(previous: np.ndarray, current: np.ndarray) -> tuple[int, int]:
    """(dy, dx) with current[y, x] ~ previous[y - dy, x - dx], by phase correlation of two
    lightness frames [H, W] (float); (0, 0) unless the shift fits the frames better than none."""
    height, width = current.shape
    window = np.outer(np.hanning(height), np.hanning(width)).astype(np.float32)  # no wrap-around edge
    spectra = [np.fft.rfft2((frame - frame.mean()) * window) for frame in (previous, current)]
    cross = spectra[1] * np.conj(spectra[0])
    correlation = np.fft.irfft2(cross / (np.abs(cross) + 1e-9), s=(height, width))
    reach_y, reach_x = int(MAX_SHIFT * height), int(MAX_SHIFT * width)
    dys = np.r_[0 : reach_y + 1, -reach_y:0]
    dxs = np.r_[0 : reach_x + 1, -reach_x:0]
    near = correlation[np.ix_(dys % height, dxs % width)]
    row, column = np.unravel_index(np.argmax(near), near.shape)
    dy, dx = int(dys[row]), int(dxs[column])
    if (dy, dx) == (0, 0):
        return 0, 0
    moved, valid = translate(previous, dy, dx)
    shifted_error = np.abs(current - moved)[valid].mean()
    return (dy, dx) if shifted_error < np.abs(current - previous).mean() else (0, 0)


def translate(frame: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """frame [H, W, ...] moved by (dy, dx): out[y, x] = frame[y - dy, x - dx], and bool [H, W],
    False where that falls outside the frame (out is 0 there)."""
    height, width = frame.shape[:2]
    out = np.zeros_like(frame)
    valid = np.zeros((height, width), bool)
    rows = slice(max(dy, 0), height + min(dy, 0)), slice(max(-dy, 0), height + min(-dy, 0))
    columns = slice(max(dx, 0), width + min(dx, 0)), slice(max(-dx, 0), width + min(-dx, 0))
    out[rows[0], columns[0]] = frame[rows[1], columns[1]]
    valid[rows[0], columns[0]] = True
    return out, valid


@functools.cache
def _graphs() -> tuple[Callable, Callable]:
    """(lightness, blend): the per-pixel work as XLA-compiled graphs, built on first use.

    XLA fuses the Lab conversions' chains of element-wise operations: on a 1920 x 1080 frame
    (2 shared cores) carrying took 1.2 s a frame as eager operations and 0.27 s compiled (the
    5,000-step guided model itself 0.5 s), after about 2 s of compiling once per frame size.
    Built here, not at import: `colorize` checks --steady before it pays for importing TensorFlow.
    """
    import tensorflow as tf

    from preprocess import color

    @tf.function(jit_compile=True)
    def lightness(source: tf.Tensor) -> tf.Tensor:
        """uint8 RGB [H, W, 3] -> float32 [H, W]: L (0..100) averaged over 3 x 3 (borders repeated).

        Nine shifted slices, not tf.nn.avg_pool2d: XLA constant-folds the pool's padding count,
        which took 40 s to compile at 1920 x 1080."""
        padded = tf.pad(color.rgb_to_lab(source)[..., 0], [[1, 1], [1, 1]], mode="SYMMETRIC")
        height, width = tf.shape(source)[0], tf.shape(source)[1]
        return tf.add_n([padded[y : y + height, x : x + width] for y in range(3) for x in range(3)]) / 9.0

    @tf.function(jit_compile=True)
    def blend(colour, lightness, carried_ab, carried_lightness, carried_rgb, valid, strength, lightness_scale):
        """colour uint8 RGB [H, W, 3], this frame's box-averaged L [H, W], the previous output's ab
        [H, W, 2], box-averaged L [H, W] and uint8 RGB [H, W, 3] moved by the camera's shift, valid
        bool [H, W] (False: nothing to carry) -> (uint8 RGB [H, W, 3] with the colour's L, the
        exact float32 ab [H, W, 2] carried on to the next frame)."""
        lab = color.rgb_to_lab(colour)
        change = (lightness - carried_lightness) / lightness_scale
        weight = tf.where(valid, strength * tf.exp(-tf.square(change)), 0.0)[..., None]
        ab = weight * carried_ab + (1.0 - weight) * lab[..., 1:]
        exact = color.lab_to_rgb(tf.concat([lab[..., :1], ab], axis=-1)) * 255.0
        near = tf.reduce_all(tf.abs(exact - tf.cast(carried_rgb, tf.float32)) < KEEP_WITHIN, axis=-1)
        rgb = tf.where((valid & near)[..., None], carried_rgb, tf.cast(tf.round(exact), tf.uint8))
        return rgb, ab

    return lightness, blend


class Steadier:
    """Blends each frame's colour with the previous output's where the picture held still.

    Call it on every frame in order: (source uint8 RGB [H, W, 3], colour uint8 RGB [H, W, 3])
    -> uint8 RGB [H, W, 3] with the colour frame's L and the carried ab. The first frame, and
    every frame when strength is 0, comes back unchanged. Frames must keep one size.
    """

    def __init__(self, strength: float = DEFAULT_STRENGTH, lightness_scale: float = LIGHTNESS_SCALE,
                 follow_camera: bool = True) -> None:  # fmt: skip
        self.strength = check_strength(float(strength))
        self.lightness_scale = lightness_scale
        self.follow_camera = follow_camera
        self.shift = (0, 0)  # the camera shift found for the last frame
        self.cuts = 0  # frames taken as the start of a new shot
        self._lightness: np.ndarray | None = None  # box-averaged source L of the previous frame [H, W]
        self._ab: np.ndarray | None = None  # the previous output's ab [H, W, 2], float32, before rounding
        self._rgb: np.ndarray | None = None  # the previous output [H, W, 3], uint8

    def __call__(self, source: np.ndarray, colour: np.ndarray) -> np.ndarray:
        if self.strength == 0.0:
            return colour
        to_lightness, blend = _graphs()
        lightness = to_lightness(np.asarray(source, np.uint8)).numpy()
        first = self._ab is None
        if first:
            carried_ab, carried_lightness = np.zeros(lightness.shape + (2,), np.float32), lightness
            carried_rgb, valid = np.zeros(lightness.shape + (3,), np.uint8), np.zeros(lightness.shape, bool)
        elif self._lightness.shape != lightness.shape:
            raise ValueError(f"frame of {lightness.shape[1]} x {lightness.shape[0]} pixels after one of "
                             f"{self._lightness.shape[1]} x {self._lightness.shape[0]}: a sequence has one size")  # fmt: skip
        else:
            self.shift = camera_shift(self._lightness, lightness) if self.follow_camera else (0, 0)
            carried_lightness, valid = translate(self._lightness, *self.shift)
            carried_ab, _ = translate(self._ab, *self.shift)
            carried_rgb, _ = translate(self._rgb, *self.shift)
            if np.median(np.abs(lightness - carried_lightness)[valid]) > self.lightness_scale:
                valid[:] = False  # a cut: pixels whose L matches the last shot's by chance carry nothing
                self.cuts += 1
        rgb, ab = blend(np.asarray(colour, np.uint8), lightness, carried_ab, carried_lightness, carried_rgb, valid,
                        np.float32(self.strength), np.float32(self.lightness_scale))  # fmt: skip
        output = colour if first else rgb.numpy()
        self._lightness, self._ab, self._rgb = lightness, ab.numpy(), np.asarray(output, np.uint8)
        return output
