"""Hints for the guided model (models/guided.py): local colour points and a global colour hint.

Zhang, Zhu, Isola, Geng, Lin, Yu and Efros (2017), "Real-Time User-Guided Image
Colorization with Learned Deep Priors", give the network two kinds of hint beside the gray
image, and train without any human input by sampling both from the photo's own colour:

    local_hints  float32 [B, H, W, 3]: channels 0-1 the hint's ab in model scaling (Lab ab
                 / 110, in [-1, 1]; zero where there is no hint), channel 2 the mask (1 at
                 hinted pixels, else 0). A user's clicks, or at training time a few patches
                 of the truth, each set to the patch's mean colour.
    global_hint  float32 [B, G], G = GLOBAL_HINT_SIZE = Q + 2, Q = len(preprocess.color.ab_bins()):
                 [0:Q]   the ab histogram over the project's quantised ab bins, summing to 1.
                         Every pixel counts (its nearest bin; a gray pixel goes to the bin at
                         a = b = 0), times its weight when weights are given (0 for padding
                         or pixels a user masked out).
                 [Q]     mean saturation: the weighted mean of the chroma sqrt(a^2 + b^2) / 110.
                 [Q+1]   the "given" flag: 1 when a global hint is given; 0 when not, and then
                         [0:Q+1] are all 0 too, which is what the network learns as "no hint".
                 A reference photo's colours at use time; the truth's own at training time,
                 dropped at random so that the model also works without one.

Every function is plain TensorFlow, usable eagerly, inside tf.function, in a tf.data map
(with a seed tensor rather than a tf.random.Generator) and in a SavedModel signature.

Randomness (`rng`): a tf.random.Generator (its state advances; what the training step
keeps in `step.state` so that resume is exact) or a stateless seed, an int tensor [2].
"""

from __future__ import annotations

import math

import tensorflow as tf

from preprocess import color

# The paper's (and their code's) training distribution: the number of points is geometric
# with success probability 1/8 (mean 7), the patch sides uniform in 1..9 pixels, and the
# patch positions Gaussian around the centre with a quarter of the side as deviation.
POINT_PROBABILITY = 1.0 / 8.0
PATCH_SIZES = tuple(range(1, 10))
# The cap on sampled points: P(N >= 64) = (7/8)**64 = 2e-4 at the paper's rate.
MAX_POINTS = 64


def __getattr__(name: str) -> int:
    # Q needs the ab bins, a second to compute: only when someone asks.
    if name == "GLOBAL_HINT_SIZE":
        return global_hint_size()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def global_hint_size() -> int:
    """G = Q + 2: the histogram over the Q in-gamut ab bins, the mean saturation, the given flag."""
    return len(color.ab_bins()) + 2


def no_global_hint(batch_size: int | tf.Tensor) -> tf.Tensor:
    """Zeros [B, G]: no global hint (the given flag 0)."""
    return tf.zeros(tf.stack([batch_size, global_hint_size()]), tf.float32)


def no_local_hints(gray: tf.Tensor) -> tf.Tensor:
    """Zeros [B, H, W, 3] for gray [B, H, W, 1]: no local hints."""
    shape = tf.shape(gray)
    return tf.zeros(tf.concat([shape[:3], [3]], 0), tf.float32)


def global_hint(color_ab: tf.Tensor, weights: tf.Tensor | None = None) -> tf.Tensor:
    """color [B, H, W, 2] in model scaling, weights [B, H, W] >= 0 or None -> global hint [B, G], given.

    The histogram sums to 1 for each image; an image whose weights are all 0 gets a zero
    histogram and saturation (but the given flag 1: callers refuse such references).
    """
    color_ab = tf.cast(color_ab, tf.float32)
    shape = tf.shape(color_ab)
    batch = shape[0]
    bins = len(color.ab_bins())
    if weights is None:
        weights = tf.ones(shape[:3], tf.float32)
    weights = tf.cast(weights, tf.float32)
    total = tf.reduce_sum(weights, axis=[1, 2])  # [B]
    index = color.nearest_bin(color_ab * color.AB_SCALE)  # [B, H, W] int32 in [0, Q)
    # one segment per (image, bin): a one-hot [B, H, W, Q] would be 270 MB at 64 x 64 x 64
    segment = index + bins * tf.range(batch)[:, None, None]
    counts = tf.math.unsorted_segment_sum(tf.reshape(weights, [-1]), tf.reshape(segment, [-1]), batch * bins)
    histogram = tf.reshape(counts, [batch, bins]) / tf.maximum(total, 1e-12)[:, None]  # [B, Q]
    chroma = tf.norm(color_ab, axis=-1)  # [B, H, W], ab / 110 units
    saturation = tf.reduce_sum(chroma * weights, axis=[1, 2]) / tf.maximum(total, 1e-12)  # [B]
    return tf.concat([histogram, saturation[:, None], tf.ones([batch, 1])], axis=-1)


def sample_global_hint(color_ab: tf.Tensor, rng: tf.random.Generator | tf.Tensor, probability: float) -> tf.Tensor:
    """The truth's global hint [B, G] for color [B, H, W, 2], each image's given with `probability`, else zeros."""
    given = _uniform(rng, tf.shape(color_ab)[:1]) < probability  # [B]
    return tf.where(given[:, None], global_hint(color_ab), 0.0)


def sample_local_hints(color_ab: tf.Tensor, rng: tf.random.Generator | tf.Tensor, points: int | tf.Tensor | None = None,
                       point_probability: float = POINT_PROBABILITY, patch_sizes: tuple[int, ...] = PATCH_SIZES,
                       max_points: int = MAX_POINTS) -> tf.Tensor:  # fmt: skip
    """Local hints [B, H, W, 3] sampled from the truth color [B, H, W, 2] (model scaling), as the paper trains.

    Each image gets N patches: N geometric, P(N = n) = (1 - p)^n p with p = `point_probability`
    (capped at `max_points`), or `points` (an int, or an int [B] tensor; then `max_points`
    is at least the int). Each patch is a square of a side drawn uniformly from `patch_sizes`,
    at a position drawn from a Gaussian around the image centre (deviation a quarter of the
    room left), clipped into the image; its hint is the truth's mean colour over the patch.
    Where patches overlap, the later one wins. The mask is 1 exactly on the patches.
    """
    color_ab = tf.cast(color_ab, tf.float32)
    shape = tf.shape(color_ab)
    batch = shape[0]
    if isinstance(points, int):
        max_points = max(max_points, points)
    if points is None:
        # inverse CDF of the geometric distribution: floor(log U / log(1 - p)), U in (0, 1]
        uniform = 1.0 - _uniform(rng, [batch], seed_index=0)
        count = tf.cast(tf.floor(tf.math.log(uniform) / math.log(1.0 - point_probability)), tf.int32)
    else:
        count = tf.broadcast_to(tf.cast(points, tf.int32), [batch])
    corner, side = sample_patches(rng, batch, shape[1], shape[2], max_points, patch_sizes)
    return patches_of_truth(color_ab, corner, side, count, max(patch_sizes))


def sample_patches(rng: tf.random.Generator | tf.Tensor, batch: int | tf.Tensor, height: int | tf.Tensor,
                   width: int | tf.Tensor, points: int, patch_sizes: tuple[int, ...] = PATCH_SIZES,
                   ) -> tuple[tf.Tensor, tf.Tensor]:  # fmt: skip
    """Where `points` patches per image go, as sample_local_hints places them: (corner [B, K, 2]
    int32 (row, column of the top left), side [B, K] int32 drawn uniformly from `patch_sizes`).

    Corners are Gaussian around the image centre with a quarter of the room left as
    deviation, clipped into the image.
    """
    sizes = tf.constant(patch_sizes, tf.int32)
    side = tf.gather(sizes, _uniform(rng, [batch, points], 0, len(patch_sizes), tf.int32, seed_index=1))  # [B, K]
    image = tf.cast(tf.stack([height, width]), tf.float32)
    room = image[None, None, :] - tf.cast(side, tf.float32)[..., None] + 1.0  # [B, K, 2]
    corner = _normal(rng, [batch, points, 2], seed_index=2) * room / 4.0 + room / 2.0  # [B, K, 2] (y, x)
    return tf.cast(tf.clip_by_value(tf.floor(corner), 0.0, room - 1.0), tf.int32), side


def patches_of_truth(color_ab: tf.Tensor, corner: tf.Tensor, side: tf.Tensor, count: tf.Tensor,
                     largest: int = max(PATCH_SIZES)) -> tf.Tensor:  # fmt: skip
    """Local hints [B, H, W, 3] from the first `count` [B] of the patches (corner [B, K, 2], side [B, K]
    of at most `largest` pixels) of color [B, H, W, 2], each set to the truth's mean colour over it;
    later patches win where they overlap."""
    color_ab = tf.cast(color_ab, tf.float32)
    points = tf.shape(side)[1]
    mean = _patch_means(color_ab, corner, side, largest)  # [B, K, 2]
    active = tf.sequence_mask(tf.minimum(tf.cast(count, tf.int32), points), points)  # [B, K]
    return _paint(color_ab, corner, side, mean, active)


def local_hints_from_points(points_yx: tf.Tensor, ab: tf.Tensor, height: int | tf.Tensor, width: int | tf.Tensor,
                            patch: int | tf.Tensor = 1) -> tf.Tensor:  # fmt: skip
    """Local hints [1, H, W, 3] from N points: points_yx [N, 2] int (row, column in the working
    image's pixels), ab [N, 2] in model scaling; each a square of side `patch` centred on the
    point (for an even side, the extra row and column are below and right), clipped to the image.
    Later points win where squares overlap. Points outside the image are the caller's to refuse.
    """
    points_yx = tf.cast(tf.reshape(points_yx, [-1, 2]), tf.int32)
    ab = tf.cast(tf.reshape(ab, [-1, 2]), tf.float32)
    n = tf.shape(points_yx)[0]
    patch = tf.cast(patch, tf.int32)
    corner = points_yx - (patch - 1) // 2  # [N, 2]; may be negative near an edge: _paint clips
    side = tf.fill([n], patch)
    zeros = tf.zeros(tf.stack([1, height, width, 2]), tf.float32)
    return _paint(zeros, corner[None], side[None], ab[None], tf.ones([1, n], tf.bool))


# ---------------------------------------------------------------------------------------
# helpers


def _paint(like: tf.Tensor, corner: tf.Tensor, side: tf.Tensor, ab: tf.Tensor, active: tf.Tensor) -> tf.Tensor:
    """Squares [B, K] (corner [B, K, 2] (y, x), side [B, K], colour ab [B, K, 2], active [B, K] bool)
    painted in order onto zeros shaped like `like` [B, H, W, 2] -> hints [B, H, W, 3] (ab, mask)."""
    shape = tf.shape(like)
    rows = tf.range(shape[1])[None, None, :]  # [1, 1, H]
    cols = tf.range(shape[2])[None, None, :]  # [1, 1, W]
    top, left = corner[..., 0:1], corner[..., 1:2]  # [B, K, 1]
    end = side[..., None]
    in_rows = (rows >= top) & (rows < top + end) & active[..., None]  # [B, K, H]
    in_cols = (cols >= left) & (cols < left + end)  # [B, K, W]
    hints = tf.zeros(tf.concat([shape[:3], [3]], 0), tf.float32)
    values = tf.concat([tf.cast(ab, tf.float32), tf.ones_like(ab[..., :1], tf.float32)], -1)  # [B, K, 3]

    # Squares one at a time, so a later one overwrites an earlier one as in the paper's code;
    # [B, K, H, W] at once would cost K times the memory. Stops after the last active square.
    last = tf.reduce_max(tf.reduce_sum(tf.cast(active, tf.int32), axis=1))

    def body(i, hints):
        cover = in_rows[:, i, :, None] & in_cols[:, i, None, :]  # [B, H, W]
        return i + 1, tf.where(cover[..., None], values[:, i, None, None, :], hints)

    _, hints = tf.while_loop(lambda i, _: i < last, body, (tf.constant(0), hints))
    return hints


def _patch_means(color_ab: tf.Tensor, corner: tf.Tensor, side: tf.Tensor, largest: int) -> tf.Tensor:
    """Mean colour [B, K, 2] of the squares (corner [B, K, 2], side [B, K] <= largest) of color [B, H, W, 2].

    A window of `largest` x `largest` pixels is gathered from each corner (the image padded
    so that it never leaves it) and averaged over its side x side part: exact, where a
    summed-area table would lose float32 precision on large images.
    """
    padded = tf.pad(color_ab, [[0, 0], [0, largest], [0, largest], [0, 0]])
    offsets = tf.range(largest)
    y = corner[..., 0, None, None] + offsets[:, None]  # [B, K, S, 1]
    x = corner[..., 1, None, None] + offsets[None, :]  # [B, K, 1, S]
    y, x = tf.broadcast_to(y, tf.shape(y + x)), tf.broadcast_to(x, tf.shape(y + x))  # [B, K, S, S]
    window = tf.gather_nd(padded, tf.stack([y, x], -1), batch_dims=1)  # [B, K, S, S, 2]
    inside = (offsets[:, None] < side[..., None, None]) & (offsets[None, :] < side[..., None, None])  # [B, K, S, S]
    inside = tf.cast(inside, tf.float32)[..., None]
    return tf.reduce_sum(window * inside, axis=[2, 3]) / tf.reduce_sum(inside, axis=[2, 3])


def _seed(rng: tf.Tensor, index: int) -> tf.Tensor:
    """A stateless seed of its own for each use, so that uses do not share random numbers."""
    return tf.random.experimental.stateless_fold_in(tf.cast(rng, tf.int64), index)


def _uniform(rng, shape, minval=0.0, maxval=1.0, dtype=tf.float32, seed_index: int = 3) -> tf.Tensor:
    if isinstance(rng, tf.random.Generator):
        return rng.uniform(shape, minval, maxval, dtype)
    return tf.random.stateless_uniform(shape, _seed(rng, seed_index), minval, maxval, dtype)


def _normal(rng, shape, seed_index: int) -> tf.Tensor:
    if isinstance(rng, tf.random.Generator):
        return rng.normal(shape)
    return tf.random.stateless_normal(shape, _seed(rng, seed_index))
