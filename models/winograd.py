"""Convolutions by Winograd's minimal filtering algorithm (Lavin and Gray, 2016).

F(m x m, r x r) computes an m x m block of a convolution's output from an (m + r - 1)^2
block of its input with (m + r - 1)^2 multiplications per channel pair instead of m^2 r^2:
the blocks go through a fixed linear transform, the channels are mixed by one batched
matrix product per transformed position, and a second transform gives the output. F(4x4,
3x3) does 4 times fewer multiplications, F(4x4, 2x2) 2.56 times. oneDNN computes float32
convolutions directly on AVX2 CPUs (its Winograd kernels need AVX-512), at about 85% of
the FMA peak, so fewer multiplications are the only way left to a faster step there; the
transforms are memory-bound and only pay compiled by XLA, which fuses them (uncompiled,
F(4x4, 3x3) was 1.1-3x slower than oneDNN; compiled, 1.7-2x faster on 256-512 channels).

The gradient is TensorFlow's of the same ops: the transposed transforms and two more
batched products, so the backward pass saves as much as the forward one. Float32 results
differ from the direct convolution's by about 1e-5 of the output's scale.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import tensorflow as tf

Side = int | tf.Tensor  # a side known when traced, or one known when run


def dims(tensor: tf.Tensor) -> list[Side]:
    """`tensor`'s shape: the sides known when traced as ints, the others as scalar tensors.
    Compiled by XLA, which sees every size, the tensors are constants; so `convolve` traced
    for any size (an export) compiles, once per size it is run at, to what it is for static ones."""
    static = tensor.shape.as_list()
    if None not in static:
        return static
    dynamic = tf.shape(tensor)
    return [side if side is not None else dynamic[axis] for axis, side in enumerate(static)]


def _at_least(value: Side, bound: int) -> Side:
    return tf.maximum(value, bound) if tf.is_tensor(value) else max(value, bound)


def all_of(conditions: list[bool | tf.Tensor]) -> bool | tf.Tensor:
    """Python's all() of conditions known when traced, a bool tensor if any is known only when run."""
    if not any(tf.is_tensor(condition) for condition in conditions):
        return all(conditions)
    return tf.reduce_all(tf.stack([tf.convert_to_tensor(condition) for condition in conditions]))


@functools.cache
def transforms(output_side: int, kernel_side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A^T [m, a], G [a, r], B^T [a, a]) of F(m, r), a = m + r - 1, by Toom-Cook.

    y = A^T [(G g) * (B^T d)] is the correlation y_i = sum_k d_(i+k) g_k of a block d of a
    values with r taps g. It is the transpose of the polynomial product of g and a degree
    m - 1 polynomial, evaluated at a - 1 points and at infinity (its leading coefficient)
    and rebuilt by Lagrange interpolation; the points 0, 1, -1, 2, -2, 1/2, ... keep the
    transforms' entries small, which is what keeps float32 accurate.
    """
    m, r = output_side, kernel_side
    a = m + r - 1
    candidates = [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -3.0]
    points = candidates[: a - 1]
    a_t = np.zeros([m, a])
    g = np.zeros([a, r])
    b_t = np.zeros([a, a])
    for j, point in enumerate(points):
        others = [other for other in points if other != point]
        a_t[:, j] = [point**i for i in range(m)]
        g[j] = [point**k / math.prod(point - other for other in others) for k in range(r)]
        # coefficients, lowest degree first, of prod over the other points of (x - other)
        b_t[j, : a - 1] = np.polynomial.polynomial.polyfromroots(others)
    a_t[m - 1, a - 1] = 1.0
    g[a - 1, r - 1] = 1.0
    b_t[a - 1] = np.polynomial.polynomial.polyfromroots(points)
    return a_t.astype(np.float32), g.astype(np.float32), b_t.astype(np.float32)


def _blocks(inputs: tf.Tensor, block: int, side: int, count: tuple[int, int]) -> tf.Tensor:
    """[B, rows * block + side - block, columns * block + side - block, C] ->
    [side, side, B, rows, columns, C]: the side x side windows every `block` positions."""
    batch, _, _, channels = dims(inputs)
    rows, columns = count
    overlap = side - block
    # pad to whole blocks, then each window is its block and the first rows of the next
    inputs = tf.pad(inputs, [[0, 0], [0, block - overlap], [0, block - overlap], [0, 0]])
    grid = tf.reshape(inputs, [batch, rows + 1, block, (columns + 1) * block, channels])
    grid = tf.concat([grid[:, :rows], grid[:, 1:, :overlap]], axis=2)  # [B, rows, side, W, C]
    grid = tf.reshape(grid, [batch, rows, side, columns + 1, block, channels])
    # [B, rows, side, columns, side, C]
    grid = tf.concat([grid[:, :, :, :columns], grid[:, :, :, 1:, :overlap]], axis=4)
    return tf.transpose(grid, [2, 4, 0, 1, 3, 5])


def convolve_valid(inputs: tf.Tensor, kernel: tf.Tensor, output_side: int) -> tf.Tensor:
    """tf.nn.conv2d(inputs, kernel, 1, "VALID") by F(output_side^2, r^2).

    inputs [B, H, W, C] and kernel [r, r, C, K] float32 (C and K known when traced) -> [B,
    H - r + 1, W - r + 1, K]. Outputs whose sides are not multiples of `output_side` are
    computed on zero-padded blocks and cropped.
    """
    batch, height, width, channels = dims(inputs)
    r, _, _, out_channels = kernel.shape
    a_t, g, b_t = transforms(output_side, r)
    m, side = output_side, output_side + r - 1
    out_height, out_width = height - r + 1, width - r + 1
    rows, columns = -(-out_height // m), -(-out_width // m)
    inputs = tf.pad(inputs, [[0, 0], [0, rows * m - out_height], [0, columns * m - out_width], [0, 0]])
    windows = tf.reshape(_blocks(inputs, m, side, (rows, columns)), [side * side, -1])
    transformed = tf.reshape(tf.matmul(np.kron(b_t, b_t), windows), [side * side, -1, channels])
    kernel = tf.reshape(tf.matmul(np.kron(g, g), tf.reshape(kernel, [r * r, -1])), [side * side, channels, -1])
    products = tf.reshape(tf.matmul(transformed, kernel), [side * side, -1])  # [a^2, B rows columns K]
    outputs = tf.reshape(tf.matmul(np.kron(a_t, a_t), products), [m, m, batch, rows, columns, out_channels])
    outputs = tf.reshape(tf.transpose(outputs, [2, 3, 0, 4, 1, 5]), [batch, rows * m, columns * m, out_channels])
    return outputs[:, :out_height, :out_width]


# F(m, r) taken for each kernel side r: the largest m whose float32 error stays near 1e-5
# (F(6x6, 3x3) was already 1.5 times F(4x4, 3x3)'s) with (m + r - 1)^2 <= 36 transformed
# positions, which keeps the transforms' memory traffic below the products' time.
OUTPUT_SIDE = {2: 4, 3: 4, 4: 3}


def supports(kernel_shape: list[int], stride: int, padding: str, dilation: int,
             inputs_shape: tf.TensorShape | list[Side]) -> bool | tf.Tensor:  # fmt: skip
    """Whether `convolve` computes this convolution: a non-empty output, square kernels of a
    side in OUTPUT_SIDE at stride 1 (dilated where H and W are multiples of the rate), or 4x4
    kernels at stride 2, undilated. `inputs_shape` [B, H, W, C] as `dims` gives it (sides
    unknown when traced are None in a TensorShape: False); a bool tensor if it holds tensors.
    """
    if None in list(inputs_shape) or kernel_shape[0] != kernel_shape[1]:
        return False
    side = kernel_shape[0]
    if not (side == 4 and dilation == 1 if stride == 2 else stride == 1 and side in OUTPUT_SIDE):
        return False
    height, width = inputs_shape[1:3]
    reach = (side - 1) * dilation + 1
    conditions = [height >= reach, width >= reach] if padding == "VALID" else []
    if dilation > 1:
        conditions += [height % dilation == 0, width % dilation == 0]
    return all_of(conditions)


def _output_sides(inputs_shape: tf.TensorShape | list[Side], kernel_side: int, stride: int, padding: str,
                  dilation: int) -> list[Side]:  # fmt: skip
    """The output's [height, width], as tf.nn.conv2d's."""
    reach = (kernel_side - 1) * dilation + 1
    return [-(-side // stride) if padding == "SAME" else (side - reach) // stride + 1 for side in inputs_shape[1:3]]


def tiles(kernel_shape: list[int], stride: int, padding: str, dilation: int,
          inputs_shape: tf.TensorShape | list[Side]) -> Side:  # fmt: skip
    """How many output blocks `convolve` computes (for what `supports` accepts): the kernel's
    transform is shared by all of them."""
    side = kernel_shape[0]
    height, width = _output_sides(inputs_shape, side, stride, padding, dilation)
    block = OUTPUT_SIDE[2 if stride == 2 else side]
    grids = dilation * dilation
    return inputs_shape[0] * grids * -(-height // dilation // block) * -(-width // dilation // block)


def saving(kernel_shape: list[int], stride: int, padding: str, dilation: int,
           inputs_shape: tf.TensorShape | list[Side]) -> float | tf.Tensor:  # fmt: skip
    """The direct convolution's multiplications over those of `convolve`'s products (for what
    `supports` accepts): 4 for 3x3 kernels, 2.56 for 4x4 ones at stride 2, less where the
    output's sides are no multiple of the blocks' (a 2x2 output in a 4x4 block: 0.64)."""
    side = kernel_shape[0]
    # in float: a large photo's count of multiplications overflows int32
    real = lambda count: tf.cast(count, tf.float64) if tf.is_tensor(count) else count  # noqa: E731
    height, width = map(real, _output_sides(inputs_shape, side, stride, padding, dilation))
    # at stride 2 the products run a 2x2 kernel over 4 times the channels (the input's 2x2 blocks)
    kernel_block, channel_factor = (2, 4) if stride == 2 else (side, 1)
    transformed = (OUTPUT_SIDE[kernel_block] + kernel_block - 1) ** 2
    products = real(tiles(kernel_shape, stride, padding, dilation, inputs_shape)) * transformed * channel_factor
    return real(inputs_shape[0]) * height * width * side * side / products


def _pads(side: Side, out_side: Side, kernel_side: int, stride: int, padding: str) -> list[Side]:
    """[before, after] padding of one side, as tf.nn.conv2d's SAME (or none for VALID)."""
    if padding == "VALID":
        return [0, 0]
    total = _at_least((out_side - 1) * stride + kernel_side - side, 0)
    return [total // 2, total - total // 2]


def convolve(inputs: tf.Tensor, kernel: tf.Tensor, stride: int, padding: str, dilation: int = 1) -> tf.Tensor:
    """tf.nn.conv2d(inputs, kernel, stride, padding, dilations=dilation) by Winograd, for what
    `supports` accepts. A 4x4 kernel at stride 2 is a 2x2 one at stride 1 on the input's
    2x2 blocks stacked as channels; a kernel dilated by d is an undilated one on each of the
    d x d interleaved grids of the input."""
    batch, height, width, channels = shape = dims(inputs)
    side, _, _, out_channels = kernel.shape
    if stride == 2:
        out_sides = _output_sides(shape, side, 2, padding, 1)
        pads = [_pads(s, out, side, 2, padding) for s, out in zip((height, width), out_sides)]
        inputs = tf.pad(inputs, [[0, 0], *[[before, _at_least(2 * (out + 1) - s - before, 0)]
                                           for (before, _), s, out in zip(pads, (height, width), out_sides)], [0, 0]])  # fmt: skip
        blocks = tf.nn.space_to_depth(inputs[:, : 2 * (out_sides[0] + 1), : 2 * (out_sides[1] + 1)], 2)
        # kernel row 2 t + d reads block row t, sub-row d (and so for columns)
        kernel = tf.reshape(tf.transpose(tf.reshape(kernel, [2, 2, 2, 2, channels, out_channels]),
                                         [0, 2, 1, 3, 4, 5]), [2, 2, 4 * channels, out_channels])  # fmt: skip
        return convolve_valid(blocks, kernel, OUTPUT_SIDE[2])
    reach = (side - 1) * dilation + 1
    pads = [_pads(s, s, reach, 1, padding) for s in (height, width)]
    inputs = tf.pad(inputs, [[0, 0], *pads, [0, 0]])
    if dilation == 1:
        return convolve_valid(inputs, kernel, OUTPUT_SIDE[side])
    d = dilation
    padded_height, padded_width = dims(inputs)[1:3]
    grids = tf.reshape(inputs, [batch, padded_height // d, d, padded_width // d, d, channels])
    grids = tf.reshape(tf.transpose(grids, [2, 4, 0, 1, 3, 5]), [d * d * batch, padded_height // d, padded_width // d,
                                                                  channels])  # fmt: skip
    outputs = convolve_valid(grids, kernel, OUTPUT_SIDE[side])
    out_height, out_width = dims(outputs)[1:3]
    outputs = tf.transpose(tf.reshape(outputs, [d, d, batch, out_height, out_width, out_channels]), [2, 3, 0, 4, 1, 5])
    return tf.reshape(outputs, [batch, out_height * d, out_width * d, out_channels])


def convolve_transpose(inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """tf.nn.conv2d_transpose(inputs, kernel, [B, 2 H, 2 W, K], 2, "SAME") for a 4x4 kernel
    [4, 4, K, C] and inputs [B, H, W, C]: the adjoint of `convolve` at stride 2, which is what
    a transposed convolution is, taken by TensorFlow's gradient of it (its forward products
    are unused and pruned)."""
    batch, height, width, _ = dims(inputs)
    outputs = tf.zeros([batch, 2 * height, 2 * width, kernel.shape[2]], inputs.dtype)
    with tf.GradientTape() as tape:
        tape.watch(outputs)
        convolved = convolve(outputs, kernel, 2, "SAME")
    return tape.gradient(convolved, outputs, output_gradients=inputs)
