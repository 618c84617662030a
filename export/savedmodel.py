"""The exported graph: any photo at full resolution -> a colour photo, and the SavedModel around it.

The generator runs at the export's working size; its ab is upsampled to the photo's size
and joined with the photo's own L, so the result keeps every detail of the original:

    pixels uint8 [N, H, W, C]  (C = 1: sRGB gray levels, C = 3: RGB taken as gray)
      -> resized (antialiased) to about working_size**2 pixels, sides multiples of the stride
      -> gray [N, h, w, 1] = L / 50 - 1  -> generator -> color [N, h, w, 2] = ab / 110
      -> per stripe of rows: L of the original pixels, color upsampled bilinearly to H x W
      -> Lab -> uint8 RGB [N, H, W, 3]

The full-resolution half runs in stripes of about STRIPE_PIXELS pixels, one at a time, so
the float temporaries of a 100-megapixel photo stay those of a stripe.

Signatures (the names are the keys of TF Serving requests and answers; see the README):
    serving_default   gray uint8 [N, H, W, 1]                         -> rgb uint8 [N, H, W, 3]
    colorize_image    image_bytes string [N] (JPEG/PNG/GIF/BMP)        -> png_bytes string [N]
    colorize_at_size  image uint8 [N, H, W, 3], working_size int32 []  -> rgb uint8 [N, H, W, 3]
A model whose config has a `temperature` field (zhang) decodes its colour with one, and each
signature then also takes `temperature` float32 [N]. `colorize_image` refuses a photo of more
than MAX_PIXELS pixels, read from its header, before decoding it (see `header_pixels`).

A generator that takes hints (MODEL=guided, Zhang et al. 2017; see `takes_hints`) keeps the
three signatures above, which colour automatically, and adds two that take them:
    colorize_guided_image  image_bytes string [N], hint_y int32 [N, K], hint_x int32 [N, K],
                           hint_colors string [N, K], reference_bytes string [N] -> png_bytes string [N]
    colorize_guided        image uint8 [N, H, W, 3], working_size int32 [], the same four -> rgb uint8 [N, H, W, 3]
TF Serving has no optional inputs, so "none" is empty: K = 0 hints, reference_bytes "" (then
the result is exactly the automatic signatures'). A hint is pixel (hint_x, hint_y) of the
photo and a colour "#rrggbb", whose Lab ab is what the model gets (see `guidance_inputs`).
Every input is a list per photo, so TF Serving's REST "instances" rows carry them as they
are, an empty list included; hint_y, hint_x and hint_colors are separate lists because a
JSON [] has no inner dimension to give an [N, K, 2] tensor.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from export.guidance import MIN_REFERENCE_CHROMA, REFERENCE_SIDE
from models import hints, unet
from preprocess import color

# Full-resolution pixels (over the batch) converted per step. A 12 MP photo in one piece
# takes gigabytes of temporaries and 10x longer; smaller stripes gain nothing more.
STRIPE_PIXELS = 1 << 18

# The signature names and their tensor names, as TF Serving clients see them. The "_bytes"
# suffix is TF Serving's rule for strings that its REST API carries as {"b64": ...}.
SERVING_DEFAULT = "serving_default"
COLORIZE_IMAGE = "colorize_image"
COLORIZE_AT_SIZE = "colorize_at_size"
COLORIZE_GUIDED_IMAGE = "colorize_guided_image"
COLORIZE_GUIDED = "colorize_guided"
OUTPUTS = {SERVING_DEFAULT: "rgb", COLORIZE_IMAGE: "png_bytes", COLORIZE_AT_SIZE: "rgb",
           COLORIZE_GUIDED_IMAGE: "png_bytes", COLORIZE_GUIDED: "rgb"}  # fmt: skip
GUIDANCE_NAMES = ("hint_y", "hint_x", "hint_colors", "reference_bytes")

# A hint colours a square of this side around its pixel at the working size, inside the
# 1 to 9 px patches the paper trains with: a click is a point, and the model sees it as one.
HINT_PATCH = 3

# The largest photo `colorize_image` decodes (export.json's "max_pixels"). A PNG of a
# billion black pixels is a few hundred KiB, and decoding it would take 3 GB before the
# model saw it; 100 megapixels (a large scan) need about 1 GB of decoded, stripe and
# output tensors in TF Serving.
MAX_PIXELS = 100_000_000


def has_temperature(model_config: object) -> bool:
    """Whether a model decodes its colour with a temperature (Zhang et al.'s annealed mean).

    The contract for such a model: its config has a `temperature` field (the default used
    at inference) and its "generator" takes [gray [B, H, W, 1], temperature [B]].
    """
    return any(field.name == "temperature" for field in dataclasses.fields(model_config))


def working_shape(height: tf.Tensor, width: tf.Tensor, working_size: tf.Tensor, stride: int) -> tf.Tensor:
    """int32 [2]: the model's input size for an H x W photo.

    About working_size**2 pixels with the photo's aspect ratio, each side rounded to a
    multiple of `stride` (at least one stride). By area rather than by shorter side, so a
    wide photo costs about what a square one does. A photo smaller than that is not
    enlarged: a model sees an upscaled photo as unnaturally blurred and answers with
    garbage colour (the shipped colorizer, working size 64, on CIFAR-10's 32 px photos:
    17.4 dB PSNR and colourfulness 57 enlarged, 24.4 dB and 12 at their own size).
    """
    sides = tf.cast(tf.stack([height, width]), tf.float32)
    scale = tf.minimum(1.0, tf.cast(working_size, tf.float32) / tf.sqrt(sides[0] * sides[1]))
    multiples = tf.maximum(tf.round(sides * scale / stride), 1.0)
    return tf.cast(multiples, tf.int32) * stride


def _bilinear_taps(out_index: tf.Tensor, in_size: tf.Tensor, out_size: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """Where bilinear resizing (half-pixel centres) reads output positions `out_index` from:
    (lower, upper, weight of upper)."""
    in_size_f = tf.cast(in_size, tf.float32)
    source = (tf.cast(out_index, tf.float32) + 0.5) * in_size_f / tf.cast(out_size, tf.float32) - 0.5
    source = tf.clip_by_value(source, 0.0, in_size_f - 1.0)
    lower = tf.floor(source)
    upper = tf.minimum(lower + 1.0, in_size_f - 1.0)
    return tf.cast(lower, tf.int32), tf.cast(upper, tf.int32), source - lower


def upsample_columns(small: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """`small` [N, h, w, C] resized bilinearly to `width` columns: [N, h, width, C].

    The first half of a separable resize, done once per photo on the model's few rows, so
    that the stripes at full resolution only blend two whole rows (`upsample_rows`).
    """
    left, right, dx = _bilinear_taps(tf.range(width), tf.shape(small)[2], width)
    dx = dx[None, None, :, None]
    return tf.gather(small, left, axis=2) * (1.0 - dx) + tf.gather(small, right, axis=2) * dx


def upsample_rows(wide: tf.Tensor, rows: tf.Tensor, height: tf.Tensor) -> tf.Tensor:
    """Rows `rows` of `wide` [N, h, W, C] resized bilinearly to `height` rows: [N, R, W, C].

    After `upsample_columns(small, W)`, the same values as `tf.image.resize(small, [height, W])`
    (half-pixel centres, no antialiasing) at those rows, without making the whole full-size tensor.
    """
    top, bottom, dy = _bilinear_taps(rows, tf.shape(wide)[1], height)
    top_rows = tf.gather(wide, top, axis=1)
    return top_rows + (tf.gather(wide, bottom, axis=1) - top_rows) * dy[None, :, None, None]


@functools.cache
def _gray_level_lightness() -> np.ndarray:
    """float32 [256]: CIE L of each sRGB gray level, so gray inputs need one lookup per pixel."""
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    with tf.init_scope():  # computed eagerly even while a signature is traced; a constant in the graph
        return color.rgb_to_lab(levels)[:, 0].numpy()


def _lightness(pixels: tf.Tensor) -> tf.Tensor:
    """uint8 [..., C] (C = 1 gray levels or 3 RGB) -> L [..., 1] float32 in [0, 100]."""
    if pixels.shape[-1] == 1:
        return tf.gather(tf.constant(_gray_level_lightness()), tf.cast(pixels, tf.int32))
    return color.lightness(pixels)


def colorize_pixels(
    generator: Callable[..., tf.Tensor],
    pixels: tf.Tensor,
    working_size: tf.Tensor | int,
    stride: int,
    temperature: tf.Tensor | None = None,
    stripe_pixels: int = STRIPE_PIXELS,
    guidance: tuple[tf.Tensor, ...] | None = None,
) -> tf.Tensor:
    """uint8 [N, H, W, C] (C = 1 gray, 3 RGB whose L is used) -> uint8 RGB [N, H, W, 3].

    `temperature` float32 [N] goes to generators that take one (see `has_temperature`);
    `guidance` (hint_y, hint_x, hint_colors [N, K], reference_bytes [N]; see
    `guidance_inputs`) to generators that take hints (see `takes_hints`).
    Runs eagerly or traced; the export traces it into every signature.
    """
    if pixels.shape[-1] not in (1, 3):
        raise ValueError(f"pixels must have 1 or 3 channels, got shape {pixels.shape}")
    shape = tf.shape(pixels)
    batch, height, width = shape[0], shape[1], shape[2]

    # The model's view: resized in sRGB, as `make data` resizes photos, then converted.
    working = working_shape(height, width, working_size, stride)
    small = tf.image.resize(pixels, working, antialias=True)
    small = tf.clip_by_value(small / 255.0, 0.0, 1.0)
    if pixels.shape[-1] == 1:
        small = tf.repeat(small, 3, axis=-1)
    gray, _ = color.rgb_to_model(small)  # [N, h, w, 1]
    inputs = gray if temperature is None else [gray, temperature]
    if guidance is not None:
        inputs = [gray, *guidance_inputs(guidance, tf.stack([height, width]), working)]
    fake_color = generator(inputs, training=False)  # [N, h, w, 2] in [-1, 1]

    # Never taller than the photo: a small photo is one stripe of its own height, not a
    # stripe of stripe_pixels whose repeated bottom rows would cost ~15x a 32 px photo's work.
    rows_per_stripe = tf.clip_by_value(stripe_pixels // tf.maximum(batch * width, 1), 1, tf.maximum(height, 1))
    stripes = (height + rows_per_stripe - 1) // rows_per_stripe
    wide_color = upsample_columns(fake_color, width)  # [N, h, W, 2]

    def stripe(index: tf.Tensor) -> tf.Tensor:
        # The last stripe repeats the bottom row to keep every stripe the same height.
        rows = tf.minimum(index * rows_per_stripe + tf.range(rows_per_stripe), height - 1)
        lightness = _lightness(tf.gather(pixels, rows, axis=1))  # [N, R, W, 1]
        fake = upsample_rows(wide_color, rows, height)  # [N, R, W, 2]
        return color.model_to_rgb((lightness - color.L_OFFSET) / color.L_SCALE, fake)

    # One stripe at a time: parallel stripes would multiply the temporaries they exist to bound.
    parts = tf.map_fn(stripe, tf.range(stripes), fn_output_signature=tf.TensorSpec([None, None, None, 3], tf.uint8),
                      parallel_iterations=1)  # [S, N, R, W, 3]  # fmt: skip
    rgb = tf.reshape(tf.transpose(parts, [1, 0, 2, 3, 4]), [batch, stripes * rows_per_stripe, width, 3])
    return rgb[:, :height]


def header_size(data: tf.Tensor) -> tf.Tensor:
    """int64 [2] (height, width) of encoded JPEG/PNG/GIF/BMP bytes (scalar string), from its header alone.

    [0, 0] for other bytes, which the decoder then refuses with its own error. GIF gives its
    logical screen, the canvas every frame is drawn on; BMP's height is negative for
    top-down rows.
    """
    # The first 32 bytes, zero-padded, so that a truncated header reads as zeros instead of failing here.
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, 32), tf.constant(bytes(32))]), 0, 32)
    octets = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)  # [32]

    def number(start: int, length: int, big_endian: bool) -> tf.Tensor:
        weights = [256**i for i in range(length)]
        return tf.reduce_sum(octets[start : start + length] * tf.constant(weights[::-1] if big_endian else weights, tf.int64))

    def signed32(value: tf.Tensor) -> tf.Tensor:
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    magic = tf.strings.substr(head, 0, 4)
    png = lambda: tf.stack([number(20, 4, True), number(16, 4, True)])  # IHDR: width, height  # noqa: E731
    gif = lambda: tf.stack([number(8, 2, False), number(6, 2, False)])  # noqa: E731
    bmp = lambda: tf.stack([signed32(number(22, 4, False)), signed32(number(18, 4, False))])  # noqa: E731
    jpeg = lambda: tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.int64)  # reads the frame header  # noqa: E731
    return tf.case([(tf.equal(magic, b"\x89PNG"), png), (tf.equal(tf.strings.substr(magic, 0, 3), b"GIF"), gif),
                    (tf.equal(tf.strings.substr(magic, 0, 2), b"BM"), bmp),
                    (tf.equal(tf.strings.substr(magic, 0, 2), b"\xff\xd8"), jpeg)],
                   default=lambda: tf.zeros([2], tf.int64))  # fmt: skip


def decode_rgb(data: tf.Tensor, max_pixels: int = MAX_PIXELS) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes (scalar string) -> uint8 RGB [H, W, 3].

    Any mode: gray is repeated, 16-bit is scaled to 8, CMYK JPEGs are converted (by the
    decoder), transparency is composited over white as a viewer shows it. An image of
    more than `max_pixels` pixels raises InvalidArgumentError (TF Serving: HTTP 400)
    before any pixel is decoded.
    """
    size = header_size(data)
    fits = tf.debugging.Assert(
        size[0] * size[1] <= max_pixels,
        [tf.strings.format("image of {} x {} pixels is more than the {} pixels this export decodes (max_pixels in "
                           "assets.extra/export.json)", (size[1], size[0], max_pixels))],  # fmt: skip
    )
    with tf.control_dependencies([fits]):
        image = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)  # [H, W, 1..4]
    channels = tf.shape(image)[-1]
    base = tf.cond(channels >= 3, lambda: image[..., :3], lambda: tf.repeat(image[..., :1], 3, axis=-1))

    def over_white() -> tf.Tensor:
        alpha = tf.cast(image[..., -1:], tf.float32) / 255.0
        return tf.cast(tf.round(tf.cast(base, tf.float32) * alpha + 255.0 * (1.0 - alpha)), tf.uint8)

    rgb = tf.cond(channels % 2 == 0, over_white, lambda: base)  # 2 and 4 channels carry alpha
    return tf.ensure_shape(rgb, [None, None, 3])


def takes_hints(generator: keras.Model) -> bool:
    """Whether a generator takes [gray, local_hints, global_hint] besides gray (MODEL=guided).

    The contract (models/hints.py has the tensors): its functional `network` has three inputs,
    gray [B, H, W, 1], local hints [B, H, W, 3] and a global hint [B, G].
    """
    network = getattr(generator, "network", None)
    return isinstance(network, keras.Model) and len(network.inputs) == 3


def hex_colors_to_rgb(colors: tf.Tensor) -> tf.Tensor:
    """string [...] of "#rrggbb" (either case) -> uint8 [..., 3].

    Anything else raises InvalidArgumentError (TF Serving: HTTP 400) naming the first bad one.
    """
    valid = tf.strings.regex_full_match(colors, "#[0-9a-fA-F]{6}")
    first_bad = tf.concat([tf.boolean_mask(tf.reshape(colors, [-1]), ~tf.reshape(valid, [-1])), [""]], 0)[0]
    check = tf.debugging.Assert(tf.reduce_all(valid), [tf.strings.join(
        ["hint colour ", first_bad, " is not #rrggbb (six hexadecimal digits, e.g. #d02020)"])])  # fmt: skip
    with tf.control_dependencies([check]):
        digits = tf.io.decode_raw(tf.strings.substr(tf.where(valid, colors, "#000000"), 1, 6), tf.uint8)
    # [..., 6] also for no colours at all, where decode_raw cannot know the 6
    digits = tf.reshape(tf.cast(digits, tf.int32), tf.concat([tf.shape(colors), [6]], 0))
    # ASCII: "0"-"9" are 48-57; "a"-"f" 97-102, and "A"-"F" 65-70 become those with bit 5 set.
    values = tf.where(digits <= 57, digits - 48, tf.bitwise.bitwise_or(digits, 32) - 87)
    return tf.cast(values[..., 0::2] * 16 + values[..., 1::2], tf.uint8)


def local_hints(hint_y: tf.Tensor, hint_x: tf.Tensor, hint_colors: tf.Tensor, photo_shape: tf.Tensor,
                working: tf.Tensor, patch: int = HINT_PATCH) -> tf.Tensor:  # fmt: skip
    """One photo's hints -> local hints [h, w, 3] at the working size (models/hints.py's layout).

    hint_y, hint_x int32 [K]: a pixel of the H x W photo (photo_shape [2]); hint_colors string
    [K] "#rrggbb". Each becomes a `patch`-pixel square at the working size `working` [2]
    = (h, w) holding the colour's Lab ab / 110; the colour's own L is ignored. A hint
    outside the photo raises InvalidArgumentError (TF Serving: HTTP 400).
    """
    points = tf.stack([tf.cast(hint_y, tf.int32), tf.cast(hint_x, tf.int32)], -1)  # [K, 2]
    photo_shape = tf.cast(photo_shape, tf.int32)
    inside = tf.reduce_all((points >= 0) & (points < photo_shape), axis=-1)
    bad = tf.concat([tf.boolean_mask(points, ~inside), [[-1, -1]]], 0)[0]
    check = tf.debugging.Assert(tf.reduce_all(inside), [tf.strings.format(
        "hint at x={}, y={} is outside the photo ({} x {} pixels)", (bad[1], bad[0], photo_shape[1], photo_shape[0]))])
    with tf.control_dependencies([check]):
        # The working pixel whose area holds the photo pixel's centre.
        scale = tf.cast(working, tf.float32) / tf.cast(photo_shape, tf.float32)
        points = tf.minimum(tf.cast(tf.floor((tf.cast(points, tf.float32) + 0.5) * scale), tf.int32), working - 1)
    ab = color.rgb_to_lab(hex_colors_to_rgb(hint_colors))[..., 1:] / color.AB_SCALE  # [K, 2]
    return hints.local_hints_from_points(points, ab, working[0], working[1], patch)[0]


def reference_hint(reference: tf.Tensor, max_pixels: int = MAX_PIXELS) -> tf.Tensor:
    """Encoded reference photo (scalar string; "" for none) -> its global hint [G] (models/hints.py).

    The photo is shrunk to about REFERENCE_SIDE**2 pixels (its ab histogram hardly moves) and
    must have colour: a mean chroma under MIN_REFERENCE_CHROMA raises InvalidArgumentError
    (TF Serving: HTTP 400), as does anything `decode_rgb` refuses. "" gives no global hint (zeros).
    """

    def given() -> tf.Tensor:
        rgb = decode_rgb(reference, max_pixels)
        shape = tf.shape(rgb)
        small = tf.image.resize(rgb, working_shape(shape[0], shape[1], REFERENCE_SIDE, 1), antialias=True)
        _, ab = color.rgb_to_model(tf.clip_by_value(small / 255.0, 0.0, 1.0))  # [h, w, 2]
        chroma = tf.reduce_mean(tf.norm(ab, axis=-1)) * color.AB_SCALE
        check = tf.debugging.Assert(chroma >= MIN_REFERENCE_CHROMA, [tf.strings.format(
            "the reference photo is gray (mean chroma {}, under {} Lab units): it holds no colour to copy",
            (tf.round(chroma * 10) / 10, MIN_REFERENCE_CHROMA))])  # fmt: skip
        with tf.control_dependencies([check]):
            return hints.global_hint(ab[None])[0]

    return tf.cond(tf.strings.length(reference) > 0, given, lambda: hints.no_global_hint(1)[0])


def guidance_inputs(guidance: tuple[tf.Tensor, ...], photo_shape: tf.Tensor,
                    working: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:  # fmt: skip
    """(hint_y, hint_x, hint_colors [N, K], reference_bytes [N]) -> (local hints [N, h, w, 3], global hint [N, G])."""
    hint_y, hint_x, hint_colors, reference = guidance
    spec = tf.TensorSpec([None, None, 3], tf.float32)
    local = tf.map_fn(lambda one: local_hints(*one, photo_shape, working), (hint_y, hint_x, hint_colors),
                      fn_output_signature=spec)  # fmt: skip
    global_ = tf.map_fn(reference_hint, reference, fn_output_signature=tf.TensorSpec([None], tf.float32))
    return local, global_


def input_specs(temperature: bool, hints: bool = False) -> dict[str, list[tf.TensorSpec]]:
    """signature name -> its inputs in argument order; a spec's name is the request key."""
    temperature_spec = [tf.TensorSpec([None], tf.float32, name="temperature")] if temperature else []
    specs = {
        SERVING_DEFAULT: [tf.TensorSpec([None, None, None, 1], tf.uint8, name="gray"), *temperature_spec],
        COLORIZE_IMAGE: [tf.TensorSpec([None], tf.string, name="image_bytes"), *temperature_spec],
        COLORIZE_AT_SIZE: [tf.TensorSpec([None, None, None, 3], tf.uint8, name="image"),
                           tf.TensorSpec([], tf.int32, name="working_size"), *temperature_spec],
    }  # fmt: skip
    if hints:
        if temperature:
            raise ValueError("a generator that takes hints and a temperature is not supported by the export")
        guidance = [tf.TensorSpec([None, None], tf.int32, name="hint_y"), tf.TensorSpec([None, None], tf.int32, name="hint_x"),
                    tf.TensorSpec([None, None], tf.string, name="hint_colors"),
                    tf.TensorSpec([None], tf.string, name="reference_bytes")]  # fmt: skip
        specs[COLORIZE_GUIDED_IMAGE] = [tf.TensorSpec([None], tf.string, name="image_bytes"), *guidance]
        specs[COLORIZE_GUIDED] = [*specs[COLORIZE_AT_SIZE], *guidance]
    return specs


def _signature_functions(generator: Callable[..., tf.Tensor], working_size: int, stride: int,
                         max_pixels: int) -> dict[str, Callable]:  # fmt: skip
    """signature name -> its function (inputs as in `input_specs`, a dict of outputs)."""

    def serving_default(gray: tf.Tensor, *temperature: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUTS[SERVING_DEFAULT]: colorize_pixels(generator, gray, working_size, stride, *temperature)}

    def colorize_image(image_bytes: tf.Tensor, *temperature: tf.Tensor) -> dict[str, tf.Tensor]:
        def one(args: tuple) -> tf.Tensor:
            data, *per_image = args
            rgb = colorize_pixels(generator, decode_rgb(data, max_pixels)[None], working_size, stride,
                                  *[value[None] for value in per_image])  # fmt: skip
            return tf.io.encode_png(rgb[0])

        # One photo at a time: the photos of a batch may all have different sizes.
        return {OUTPUTS[COLORIZE_IMAGE]: tf.map_fn(one, (image_bytes, *temperature), fn_output_signature=tf.string)}

    def colorize_at_size(image: tf.Tensor, size: tf.Tensor, *temperature: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUTS[COLORIZE_AT_SIZE]: colorize_pixels(generator, image, size, stride, *temperature)}

    def colorize_guided_image(image_bytes: tf.Tensor, *guidance: tf.Tensor) -> dict[str, tf.Tensor]:
        def one(args: tuple) -> tf.Tensor:
            data, *per_image = args
            rgb = colorize_pixels(generator, decode_rgb(data, max_pixels)[None], working_size, stride,
                                  guidance=tuple(value[None] for value in per_image))  # fmt: skip
            return tf.io.encode_png(rgb[0])

        return {OUTPUTS[COLORIZE_GUIDED_IMAGE]: tf.map_fn(one, (image_bytes, *guidance), fn_output_signature=tf.string)}

    def colorize_guided(image: tf.Tensor, size: tf.Tensor, *guidance: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUTS[COLORIZE_GUIDED]: colorize_pixels(generator, image, size, stride, guidance=guidance)}

    return {SERVING_DEFAULT: serving_default, COLORIZE_IMAGE: colorize_image, COLORIZE_AT_SIZE: colorize_at_size,
            COLORIZE_GUIDED_IMAGE: colorize_guided_image, COLORIZE_GUIDED: colorize_guided}  # fmt: skip


class KernelsStoredInBfloat16:
    """Calls `generator` with its kernels read from bfloat16 copies, so that a SavedModel of
    it stores them at half the size (WEIGHTS); the vectors (biases, normalisation
    statistics, zhang's decoding weights) stay exact.

    The copies are cast back to float32 where the generator reads them: the graph computes
    at the precision it was built with. Rounding the kernels costs a model trained in
    mixed_bfloat16 nothing it has not seen, as its layers round them to bf16 at every step.
    """

    def __init__(self, generator: keras.Model):
        self.generator = generator
        kernels = [weight for weight in generator.weights if len(weight.shape) >= 2 and "float" in weight.dtype]
        self.kernels = [(weight, tf.Variable(tf.cast(weight.value, tf.bfloat16), trainable=False))
                        for weight in kernels]  # fmt: skip

    def __call__(self, inputs, training: bool = False):
        substituted = [(weight, tf.cast(stored, weight.dtype)) for weight, stored in self.kernels]
        with keras.StatelessScope(state_mapping=substituted):
            return self.generator(inputs, training=training)


class FrozenWeights:
    """Calls `generator` (inference mode) through copies of its graph whose weights are
    constants, one per input form in `examples` (eager inputs of each way the signatures
    call it; any sizes then, at the same ranks and dtypes).

    With the weights constant, the runtime casts them to the compute precision once, when
    it optimises the graph, and oneDNN keeps each convolution's weights in its own layout
    between calls; read from variables, both happen again at every call. The pix2pix
    generator at 256 px, batch 1, mixed_bfloat16: 12-13 images/s from variables, 15-17.5
    frozen (BENCHMARKS.md, "A frozen generator"). Every signature calling one form shares
    its frozen function, so a SavedModel stores the weights once per form.

    Frozen here and not when a signature is first traced: a trace that reads the variables
    lists them as its own, and the SavedModel would store them a second time.
    """

    def __init__(self, generator: Callable[..., tf.Tensor], examples: list[tf.Tensor | list[tf.Tensor]]):
        self._frozen = {}
        for inputs in examples:
            several = isinstance(inputs, (list, tuple))
            specs = [tf.TensorSpec([None] * x.shape.rank, x.dtype) for x in _flat(inputs)]
            forward = tf.function(lambda *given, several=several: generator(list(given) if several else given[0],
                                                                             training=False))  # fmt: skip
            traced = forward.get_concrete_function(*specs)
            self._frozen[_input_form(inputs)] = (convert_variables_to_constants_v2(traced), traced.structured_outputs)

    def __call__(self, inputs, training: bool = False):
        if training:
            raise ValueError("a frozen generator runs in inference mode only")
        form = _input_form(inputs)
        if form not in self._frozen:
            raise ValueError(f"no frozen graph for inputs {form}; frozen: {list(self._frozen)}")
        frozen, structure = self._frozen[form]
        return tf.nest.pack_sequence_as(structure, frozen(*_flat(inputs)))  # it returns a flat list


def _flat(inputs) -> list[tf.Tensor]:
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def _input_form(inputs) -> tuple:
    return isinstance(inputs, (list, tuple)), tuple((x.shape.rank, x.dtype.name) for x in _flat(inputs))


def generator_inputs(temperature: bool, hints: bool) -> list[tf.Tensor | list[tf.Tensor]]:
    """An eager example of each way `colorize_pixels` calls the generator under the signatures
    of `input_specs(temperature, hints)`."""
    gray = tf.zeros([1, 16, 16, 1])
    forms = [[gray, tf.ones([1])] if temperature else gray]
    if hints:
        none = (tf.zeros([1, 0], tf.int32), tf.zeros([1, 0], tf.int32), tf.zeros([1, 0], tf.string), tf.constant([""]))
        forms.append([gray, *guidance_inputs(none, tf.constant([16, 16]), tf.constant([16, 16]))])
    return forms


# How the export stores the generator's kernels (`write`): float32, or bfloat16 for half the
# size, e.g. for a model shipped inside a repository (export/pretrained/).
WEIGHTS = ("float32", "bfloat16")


def write(generator: keras.Model, path: str | Path, working_size: int, stride: int, temperature: bool,
          max_pixels: int = MAX_PIXELS, hints: bool = False, weights: str = "float32",
          winograd: bool = False) -> None:  # fmt: skip
    """Write the SavedModel with every signature into `path` (which must not exist yet);
    `hints`: the generator takes them (`takes_hints`), and the guided signatures are added;
    `weights`: how its kernels are stored (WEIGHTS); `winograd`: the wide float32 convolutions
    go by Winograd's algorithm, compiled by XLA for each size they are run at
    (models.unet.winograd_at_any_size)."""
    if weights == "bfloat16":
        generator = KernelsStoredInBfloat16(generator)
    with unet.winograd_at_any_size(winograd):
        generator = FrozenWeights(generator, generator_inputs(temperature, hints))
    archive = keras.export.ExportArchive()
    # No archive.track(generator): the endpoints hold its weights as constants, and tracking it
    # would store its variables as well (keras-team/keras#23553: twice the size, twice the memory
    # in TF Serving).
    functions = _signature_functions(generator, working_size, stride, max_pixels)
    for name, specs in input_specs(temperature, hints).items():
        archive.add_endpoint(name, functions[name], input_signature=specs)
    # An export is for inference: the custom gradients of models.unet's convolutions are left out.
    archive.write_out(str(path), options=tf.saved_model.SaveOptions(experimental_custom_gradients=False),
                      verbose=False)  # fmt: skip
