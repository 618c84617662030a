"""Winograd's algorithm computes what tf.nn.conv2d computes, both ways, for every form it accepts."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from models import winograd


@pytest.mark.parametrize("output_side, kernel_side", [(2, 3), (4, 3), (4, 2), (3, 4)])
def test_the_transforms_compute_a_block_of_the_correlation(output_side, kernel_side):
    a_t, g, b_t = (matrix.astype(np.float64) for matrix in winograd.transforms(output_side, kernel_side))
    rng = np.random.default_rng(0)
    for _ in range(5):
        block, taps = rng.normal(size=output_side + kernel_side - 1), rng.normal(size=kernel_side)
        expected = [sum(block[i + k] * taps[k] for k in range(kernel_side)) for i in range(output_side)]
        np.testing.assert_allclose(a_t @ ((g @ taps) * (b_t @ block)), expected, atol=1e-5)


def _outputs_and_gradients(convolve, images: tf.Tensor, kernel: tf.Tensor) -> list[np.ndarray]:
    with tf.GradientTape() as tape:
        tape.watch([images, kernel])
        outputs = convolve(images, kernel)
        weights = tf.reshape(tf.range(tf.size(outputs), dtype=tf.float32) % 7 - 3, tf.shape(outputs))
        loss = tf.reduce_sum(outputs * weights)
    return [tensor.numpy() for tensor in [outputs, *tape.gradient(loss, [images, kernel])]]


@pytest.mark.parametrize(
    "shape, kernel_side, stride, padding, dilation",
    [
        ((2, 12, 12, 3), 3, 1, "SAME", 1),  # ECCV16's 3x3 layers
        ((2, 9, 7, 3), 3, 1, "SAME", 1),  # sides that are no multiple of the 4x4 blocks
        ((2, 12, 8, 3), 3, 1, "SAME", 2),  # its dilated blocks
        ((1, 9, 10, 3), 3, 1, "VALID", 1),
        ((2, 8, 8, 3), 4, 2, "SAME", 1),  # the pix2pix encoder's and PatchGAN's strided layers
        ((2, 7, 9, 3), 4, 2, "SAME", 1),  # odd sides: uneven SAME padding
        ((2, 9, 10, 3), 4, 2, "VALID", 1),
        ((2, 10, 11, 3), 4, 1, "SAME", 1),  # the PatchGAN's stride-1 layer
        ((2, 6, 6, 3), 2, 1, "VALID", 1),
    ],
)
def test_convolve_computes_what_conv2d_computes_both_ways(shape, kernel_side, stride, padding, dilation):
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=shape), tf.float32)
    kernel = tf.constant(rng.normal(size=(kernel_side, kernel_side, shape[-1], 5)), tf.float32)
    assert winograd.supports(kernel.shape.as_list(), stride, padding, dilation, images.shape)
    ours = _outputs_and_gradients(lambda x, k: winograd.convolve(x, k, stride, padding, dilation), images, kernel)
    exact = _outputs_and_gradients(lambda x, k: tf.nn.conv2d(x, k, stride, padding, dilations=dilation), images, kernel)
    for name, mine, reference in zip(["outputs", "image gradient", "kernel gradient"], ours, exact):
        assert mine.shape == reference.shape, name
        np.testing.assert_allclose(mine, reference, atol=2e-5 * np.abs(reference).max(), err_msg=name)


@pytest.mark.parametrize(
    "shape, kernel_side, stride, padding, dilation",
    [((2, 9, 7, 3), 3, 1, "SAME", 1), ((2, 12, 8, 3), 3, 1, "SAME", 2), ((2, 7, 9, 3), 4, 2, "SAME", 1),
     ((2, 9, 10, 3), 4, 2, "VALID", 1), ((2, 10, 11, 3), 4, 1, "SAME", 1)],
)  # fmt: skip
def test_convolve_traced_for_any_size_and_compiled_by_xla_computes_what_conv2d_computes(
    shape, kernel_side, stride, padding, dilation
):
    """As an export runs it: traced with the sides and batch unknown, compiled by XLA at the
    size it is called with, and again at another."""
    rng = np.random.default_rng(0)
    kernel = tf.constant(rng.normal(size=(kernel_side, kernel_side, shape[-1], 5)), tf.float32)
    any_size = tf.TensorSpec([None, None, None, shape[-1]])
    convolve = tf.function(lambda x: winograd.convolve(x, kernel, stride, padding, dilation), jit_compile=True)
    convolve_transpose = tf.function(lambda x: winograd.convolve_transpose(x, kernel), jit_compile=True)
    for sides in [shape, (3, shape[1] + 4, shape[2] + 8, shape[-1])]:
        images = tf.constant(rng.normal(size=sides), tf.float32)
        exact = tf.nn.conv2d(images, kernel, stride, padding, dilations=dilation).numpy()
        ours = convolve.get_concrete_function(any_size)(images).numpy()
        assert ours.shape == exact.shape
        np.testing.assert_allclose(ours, exact, atol=2e-5 * np.abs(exact).max())
    if stride == 2 and padding == "SAME":
        outputs = tf.constant(rng.normal(size=(2, 5, 3, 5)), tf.float32)
        exact = tf.nn.conv2d_transpose(outputs, kernel, [2, 10, 6, shape[-1]], 2, "SAME").numpy()
        ours = convolve_transpose.get_concrete_function(tf.TensorSpec([None, None, None, 5]))(outputs).numpy()
        np.testing.assert_allclose(ours, exact, atol=2e-5 * np.abs(exact).max())


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 5, 7, 3), (3, 4, 4, 3)])
def test_convolve_transpose_computes_what_conv2d_transpose_computes_both_ways(shape):
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=shape), tf.float32)
    kernel = tf.constant(rng.normal(size=(4, 4, 5, shape[-1])), tf.float32)
    output_shape = [shape[0], 2 * shape[1], 2 * shape[2], 5]
    ours = _outputs_and_gradients(winograd.convolve_transpose, images, kernel)
    exact = _outputs_and_gradients(lambda x, k: tf.nn.conv2d_transpose(x, k, output_shape, 2, "SAME"), images, kernel)
    for name, mine, reference in zip(["outputs", "image gradient", "kernel gradient"], ours, exact):
        assert mine.shape == reference.shape, name
        np.testing.assert_allclose(mine, reference, atol=2e-5 * np.abs(reference).max(), err_msg=name)


@pytest.mark.parametrize(
    "kernel_shape, stride, padding, dilation, shape, supported",
    [
        ([3, 3, 8, 8], 1, "SAME", 1, [2, 8, 8, 8], True),
        ([5, 5, 8, 8], 1, "SAME", 1, [2, 8, 8, 8], False),  # no transforms for 5x5
        ([3, 3, 8, 8], 2, "SAME", 1, [2, 8, 8, 8], False),  # strided 3x3 (ECCV16's block ends)
        ([3, 3, 8, 8], 1, "SAME", 2, [2, 8, 9, 8], False),  # 9 columns are no multiple of the rate
        ([3, 3, 8, 8], 1, "SAME", 1, [None, 8, 8, 8], False),  # sizes unknown when traced (the export)
        ([4, 4, 8, 8], 2, "SAME", 2, [2, 8, 8, 8], False),
        ([4, 4, 8, 8], 1, "VALID", 1, [2, 3, 8, 8], False),  # empty output
    ],
)
def test_supports_only_what_convolve_computes(kernel_shape, stride, padding, dilation, shape, supported):
    assert winograd.supports(kernel_shape, stride, padding, dilation, tf.TensorShape(shape)) == supported
    if None not in shape:  # sides known only when run: the same answer, as a tensor where it depends on them
        sides = [tf.constant(side) for side in shape]
        assert bool(winograd.supports(kernel_shape, stride, padding, dilation, sides)) == supported


@pytest.mark.parametrize(
    "kernel_shape, stride, dilation, shape, tiles, saving",
    [
        ([3, 3, 8, 8], 1, 1, [8, 64, 64, 8], 8 * 16 * 16, 4.0),  # 4x4 output blocks, 6x6 transformed
        ([3, 3, 8, 8], 1, 1, [2, 8, 9, 8], 2 * 2 * 3, 2 * 8 * 9 * 9 / (12 * 36)),  # last block column: 1 of 4 used
        ([3, 3, 8, 8], 1, 2, [8, 32, 32, 8], 8 * 4 * 4 * 4, 4.0),  # 4 interleaved 16x16 grids per image
        ([4, 4, 8, 8], 2, 1, [4, 32, 32, 8], 4 * 4 * 4, 2.56),  # a 16x16 output; 2x2 kernel, 4x the channels
        ([4, 4, 8, 8], 2, 1, [64, 4, 4, 8], 64, 0.64),  # a 2x2 output in each 4x4 block
        ([4, 4, 8, 8], 1, 1, [1, 32, 32, 8], 11 * 11, 32 * 32 * 16 / (121 * 36)),  # 3x3 output blocks
    ],
)
def test_tiles_and_saving_count_the_output_blocks_and_the_multiplications(
    kernel_shape, stride, dilation, shape, tiles, saving
):
    convolution = [kernel_shape, stride, "SAME", dilation, tf.TensorShape(shape)]
    assert winograd.tiles(*convolution) == tiles
    assert winograd.saving(*convolution) == pytest.approx(saving)
    # the same counts for sides known only when run (an export's), as tensors
    convolution[-1] = [tf.constant(side) for side in shape]
    assert winograd.tiles(*convolution).numpy() == tiles
    assert winograd.saving(*convolution).numpy() == pytest.approx(saving)
    assert bool(winograd.supports(*convolution))
