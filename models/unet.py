"""The pix2pix U-Net generator gray L -> colour ab, shared by `cgan` and `regression`.

Isola et al. (2017): 4x4 stride-2 convolutions, BatchNorm, LeakyReLU 0.2 on the way down,
ReLU on the way up with dropout 0.5 in the first decoder blocks, a skip connection from
each encoder block to its mirror, tanh out. Nazeri et al. (2018) used 5x5 kernels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator

import keras
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port

from models import winograd
from models.config import check, comma_separated
from preprocess import cpu_flags

# pix2pix initialises every convolution from N(0, 0.02).
INITIALIZER_STDDEV = 0.02


@keras.saving.register_keras_serializable(package="colorize")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras's BatchNormalization computed by TensorFlow's fused kernel on [B, H, W, C] images.

    Keras 3 normalises with about a dozen separate ops and upcasts bf16 activations to
    float32 and back around them; FusedBatchNormV3 (oneDNN's on CPU) takes bf16 in and keeps
    its statistics in float32 in one pass, and the graph optimizer can fold it into the
    convolution before it at inference. Measured with TensorFlow's profiler, Keras's ops
    were 6% of the cgan step at 32 px batch 64. The moving variance is updated with the
    unbiased batch variance, as PyTorch (and so the pix2pix reference) does, where Keras
    uses the biased one. Statistics synchronized over replicas (train/loop.py's
    synchronize_batch_norm) are Keras's all-reduced moments, with the same unbiased update.
    Other cases (masks, renormalised statistics, other ranks or axes) go to Keras's
    implementation.

    `statistics_sets` > 1 keeps that many sets of moving statistics (set 0 is Keras's own
    moving_mean and moving_variance; set i > 0 is moving_mean_i and moving_variance_i);
    `statistics_set` says which one a call normalises with, and updates when training: an
    int, or an int32 scalar tensor computed in the graph. A network trained at several
    image sizes keeps one set per size (SizeStatisticsNetwork): a feature map's statistics
    depend on the size (padding is a larger share of a small map), and one set mixed from
    both sizes coloured 32 px photos orange-brown while making 64 px ones dull
    (BENCHMARKS.md, "Batch-norm statistics per size"). Such a layer takes [B, C] features
    (iizuka's global path) as [B, 1, 1, C] images: Keras's implementation reads set 0 only.
    """

    def __init__(self, *args, statistics_sets: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.statistics_sets = statistics_sets
        self.statistics_set = 0  # read by call; SizeStatisticsNetwork.call sets it for its own call

    def build(self, input_shape) -> None:
        super().build(input_shape)
        for index in range(1, self.statistics_sets):
            for kind, initializer in (("mean", self.moving_mean_initializer),
                                      ("variance", self.moving_variance_initializer)):  # fmt: skip
                setattr(self, f"moving_{kind}_{index}", self.add_weight(
                    shape=self.moving_mean.shape, name=f"moving_{kind}_{index}", initializer=initializer,
                    trainable=False, autocast=False))  # fmt: skip

    def statistics(self, index: int) -> tuple[keras.Variable, keras.Variable]:
        """(moving mean, moving variance) of set `index`."""
        if index == 0:
            return self.moving_mean, self.moving_variance
        return getattr(self, f"moving_mean_{index}"), getattr(self, f"moving_variance_{index}")

    def get_config(self) -> dict:
        return {**super().get_config(), "statistics_sets": self.statistics_sets}

    def _moving_statistics(self) -> tuple[tf.Tensor, tf.Tensor]:
        """(moving mean, moving variance) [C] float32 of the set in use."""
        if not tf.is_tensor(self.statistics_set):
            return tuple(tf.cast(value, tf.float32) for value in self.statistics(self.statistics_set))
        sets = [self.statistics(index) for index in range(self.statistics_sets)]
        return tuple(tf.gather(tf.stack([tf.cast(pair[kind], tf.float32) for pair in sets]), self.statistics_set)
                     for kind in (0, 1))  # fmt: skip

    def _update_statistics(self, mean: tf.Tensor, variance: tf.Tensor) -> None:
        """The set in use's moving statistics := mean, variance [C] float32."""
        if not tf.is_tensor(self.statistics_set):
            for variable, value in zip(self.statistics(self.statistics_set), (mean, variance)):
                variable.assign(value)
            return
        # every set is written, the others their own values, which they keep exactly
        for index in range(self.statistics_sets):
            for variable, value in zip(self.statistics(index), (mean, variance)):
                variable.assign(tf.where(tf.equal(self.statistics_set, index), value, variable))

    def call(self, inputs, training=None, mask=None):
        if self.statistics_sets > 1 and mask is None and len(inputs.shape) == 2 and self.axis in (1, -1):
            return tf.reshape(self.call(inputs[:, None, None, :], training), tf.shape(inputs))
        if mask is not None or self.renorm or len(inputs.shape) != 4 or self.axis not in (3, -1):
            if self.statistics_sets > 1:
                raise ValueError(f"{self.name}: several statistics sets need [B, H, W, C] images or [B, C] "
                                 f"features, without masks or renormalisation")  # fmt: skip
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        moving_mean, moving_variance = self._moving_statistics()
        learning = bool(training) and self.trainable
        if learning and self.synchronized:
            return self._synchronized_call(inputs, scale, offset, moving_mean, moving_variance)
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=scale, offset=offset, mean=moving_mean, variance=moving_variance,
            epsilon=self.epsilon, exponential_avg_factor=1.0 - self.momentum, is_training=learning,
        )  # fmt: skip
        if learning:  # the op returns the moving statistics already updated by its factor
            self._update_statistics(mean, variance)
        return tf.cast(outputs, self.compute_dtype)

    def _synchronized_call(self, inputs, scale, offset, moving_mean, moving_variance):
        """Training with the moments of every replica's batch, as the fused op would take them
        from one replica's batch of them all: N replicas keep one replica's moving statistics."""
        x = tf.cast(inputs, tf.float32)
        mean, variance = keras.ops.moments(x, axes=[0, 1, 2], synchronized=True)  # [C] each, biased
        context = tf.distribute.get_replica_context()  # None outside strategy.run: local moments then
        replicas = context.num_replicas_in_sync if context else 1
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]) * replicas, tf.float32)  # pixels per channel
        factor = 1.0 - self.momentum
        self._update_statistics((1.0 - factor) * moving_mean + factor * mean,
                                (1.0 - factor) * moving_variance
                                + factor * variance * count / tf.maximum(count - 1.0, 1.0))  # fmt: skip
        outputs = tf.nn.batch_normalization(x, mean, variance, offset, scale, self.epsilon)
        return tf.cast(outputs, self.compute_dtype)


# oneDNN's bf16 kernel for a convolution's weight gradient is 2 to 3 times slower than its
# float32 one when the gradient sums over few positions (batch x the smaller side's pixels):
# on the 32 px preset at batch 64, 35 ms against 12 ms for the 2x2 -> 1x1 block, 94 against
# 48 for the 2x2 -> 4x4 one, while the 16x16 blocks were 10% faster in bf16. Below this many
# positions the weight gradient is computed in float32 (bf16 operands cast up, exactly).
FLOAT32_WEIGHT_GRADIENT_POSITIONS = 2048


def _weight_gradient_in_float32(inputs: tf.Tensor, out_backprop: tf.Tensor) -> bool:
    """Whether a bf16 convolution's weight gradient is faster in float32 for these [B, H, W, C] shapes."""
    positions = [tensor.shape[0] * tensor.shape[1] * tensor.shape[2] if tensor.shape[:3].is_fully_defined() else None
                 for tensor in (inputs, out_backprop)]  # fmt: skip
    return (inputs.dtype == tf.bfloat16 and None not in positions
            and min(positions) <= FLOAT32_WEIGHT_GRADIENT_POSITIONS)  # fmt: skip


# On AVX2 CPUs oneDNN's float32 weight gradient is slow where the kernel is large and the
# gradient sums over few positions: on the 32 px preset at batch 64, 76 ms for the 2x2 -> 1x1
# block against 7.3 ms as one matrix product of the input's patches and the output's
# gradient; 16 against 11 ms at 4x4 -> 2x2; at 256 px, batch 4, 14 against 4 ms for the 1x1
# and 2x2 blocks and 92 against 55 ms for the 16x16 -> 32x32 decoder block. With fewer
# channels the patches cost more than they save (64 -> 128 channels at 128x128: 43 against
# 75 ms), so float32 kernels of at least this many input x output channels take the product
# (BENCHMARKS.md, "Weight gradients as one matrix product").
MATMUL_WEIGHT_GRADIENT_CHANNELS = 256 * 256


def _filter_gradient_by_matmul(inputs: tf.Tensor, kernel_shape: list[int], out_backprop: tf.Tensor,
                               strides: list[int], padding: str) -> tf.Tensor:  # fmt: skip
    """Conv2DBackpropFilter as patches^T @ out_backprop: [kh * kw * in, positions] x [positions, out]."""
    rows, columns, in_channels, out_channels = kernel_shape
    if padding == "SAME":
        pads = []
        for side, out_side, kernel_side, stride in zip(inputs.shape[1:3], out_backprop.shape[1:3], kernel_shape[:2],
                                                       strides[1:3]):  # fmt: skip
            total = max((out_side - 1) * stride + kernel_side - side, 0)
            pads.append([total // 2, total - total // 2])
        inputs = tf.pad(inputs, [[0, 0], *pads, [0, 0]])
    patches = tf.image.extract_patches(inputs, [1, rows, columns, 1], strides, [1, 1, 1, 1], "VALID")
    gradient = tf.matmul(tf.reshape(patches, [-1, rows * columns * in_channels]),
                         tf.reshape(out_backprop, [-1, out_channels]), transpose_a=True)  # fmt: skip
    return tf.reshape(gradient, kernel_shape)


# oneDNN's float32 weight gradient on channels-last data (the layout TensorFlow hands it) is
# slow on AVX2 CPUs for 3x3 kernels; on channels-first data it takes another kernel (im2col
# and GEMM). The ECCV16 network's layers at 256 px, batch 8, transposes included: 297 -> 153
# ms (64 channels, 256 -> 128 px), 387 -> 299 (256 channels at 64 px), 365 -> 251 (512 at
# 32 px), and 10 to 50% faster on every other 3x3 layer of at least 64 input channels; the
# pix2pix layers' 4x4 kernels gain nothing (BENCHMARKS.md, "Weight gradients on channels-first
# data"). Only measured on AVX2: CPUs with AVX-512 keep channels-last.
CHANNELS_FIRST_WEIGHT_GRADIENT_CHANNELS = 64


def _weight_gradient_channels_first(inputs: tf.Tensor, kernel_shape: list[int]) -> bool:
    """Whether to take the weight gradient on channels-first data (above); TensorFlow's own
    kernels, without oneDNN (TF_ENABLE_ONEDNN_OPTS=0), take channels-last only."""
    return (inputs.dtype == tf.float32 and tuple(kernel_shape[:2]) == (3, 3)
            and kernel_shape[2] >= CHANNELS_FIRST_WEIGHT_GRADIENT_CHANNELS and "avx512f" not in cpu_flags()
            and _pywrap_util_port.IsMklEnabled())  # fmt: skip


def _filter_gradient(inputs: tf.Tensor, kernel_shape: list[int], out_backprop: tf.Tensor, strides: list[int],
                     padding: str, dilations: list[int]) -> tf.Tensor:  # fmt: skip
    """Conv2DBackpropFilter, in float32 where `_weight_gradient_in_float32` says so, on
    channels-first data where `_weight_gradient_channels_first` says so, as one matrix product
    where MATMUL_WEIGHT_GRADIENT_CHANNELS says so; the inputs' dtype out."""
    if _weight_gradient_in_float32(inputs, out_backprop):
        gradient = tf.compat.v1.nn.conv2d_backprop_filter(tf.cast(inputs, tf.float32), kernel_shape,
                                                          tf.cast(out_backprop, tf.float32), strides, padding,
                                                          dilations=dilations)  # fmt: skip
        return tf.cast(gradient, inputs.dtype)
    if _weight_gradient_channels_first(inputs, kernel_shape):
        first = [0, 3, 1, 2]
        return tf.compat.v1.nn.conv2d_backprop_filter(tf.transpose(inputs, first), kernel_shape,
                                                      tf.transpose(out_backprop, first), [strides[i] for i in first],
                                                      padding, data_format="NCHW",
                                                      dilations=[dilations[i] for i in first])  # fmt: skip
    # Dilated kernels keep oneDNN's: their patches made ECCV16's dilated blocks 1.8x slower.
    if (inputs.dtype == tf.float32 and kernel_shape[2] * kernel_shape[3] >= MATMUL_WEIGHT_GRADIENT_CHANNELS
            and list(dilations) == [1, 1, 1, 1] and inputs.shape[1:3].is_fully_defined()
            and out_backprop.shape[1:3].is_fully_defined()):  # fmt: skip
        return _filter_gradient_by_matmul(inputs, kernel_shape, out_backprop, strides, padding)
    return tf.compat.v1.nn.conv2d_backprop_filter(inputs, kernel_shape, out_backprop, strides, padding,
                                                  dilations=dilations)  # fmt: skip


# At batch 1, with its kernel read from a variable, TensorFlow's oneDNN Conv2D leaves the
# kernel in TensorFlow's layout, and on AVX2 CPUs oneDNN then computes a float32 convolution
# by im2col and GEMM: 3x slower than its direct kernel on the pix2pix encoder's 128x128 and
# 64x64 blocks, 34x on the discriminator's 512-to-1 logits (42 ms against 1.2). Conv3D lets
# oneDNN lay the kernel out for its direct kernel, at the cost of reordering it at every
# call, which pays where the output has at least this many positions (at 8x8 the reorder of
# a 4 MB kernel makes Conv3D 1.8x slower). Batches of 4 and more get the direct kernel
# through Conv2D, and so do the export's frozen graphs (constant kernels, shapes unknown
# when traced: Conv3D was 5% slower there); bf16 keeps Conv2D, tuned on AMX. The cgan step
# at 256 px, batch 1: 0.90 -> 1.23 images/s (BENCHMARKS.md, "Batch-1 convolutions through
# Conv3D").
CONV3D_OUTPUT_POSITIONS = 256


def _conv2d(inputs: tf.Tensor, kernel: tf.Tensor, strides: int | list[int], padding: str,
            dilations: list[int] | None = None) -> tf.Tensor:  # fmt: skip
    """tf.nn.conv2d on NHWC (padding SAME or VALID), as a depth-1 Conv3D where that is faster (see above)."""
    rows_stride, columns_stride = (strides, strides) if isinstance(strides, int) else strides[1:3]
    rows_dilation, columns_dilation = (dilations or [1, 1, 1, 1])[1:3]
    if inputs.dtype != tf.float32 or not inputs.shape[:3].is_fully_defined():
        return tf.nn.conv2d(inputs, kernel, strides, padding, dilations=dilations)
    batch, height, width = inputs.shape[:3]
    if padding == "VALID":
        height -= (kernel.shape[0] - 1) * rows_dilation
        width -= (kernel.shape[1] - 1) * columns_dilation
    positions = -(-height // rows_stride) * -(-width // columns_stride)
    if batch != 1 or positions < CONV3D_OUTPUT_POSITIONS:
        return tf.nn.conv2d(inputs, kernel, strides, padding, dilations=dilations)
    return tf.nn.conv3d(inputs[:, None], kernel[None], [1, 1, rows_stride, columns_stride, 1], padding,
                        dilations=[1, 1, rows_dilation, columns_dilation, 1])[:, 0]  # fmt: skip


# oneDNN's transposed convolution is slow where it has little to work on: at batch 1 in
# bf16, 3-5x slower than `_transpose_by_phases` on the 1x1 to 8x8 inputs of the pix2pix
# decoder (its 16 MB kernels read at 4-7 GB/s), and 1.6-2.5x slower on the output layer's
# 2 channels at every size; from 32x32 inputs on, the phases are 5-25% slower. The
# generator at 256 px, batch 1, frozen and traced for its size: 14-18 images/s before,
# 23-28 with the phases up to this many input positions and for outputs of up to 3 channels
# (float32: 6.8-7.0 against 10.8-13.1); training steps are unchanged (BENCHMARKS.md,
# "Transposed convolutions by phases"). The export, traced for any size, has had the gain
# since the choice switches the input alone (`_either`).
PHASED_TRANSPOSE_POSITIONS = 1024
PHASED_TRANSPOSE_CHANNELS = 3


def _either(choice: tf.Tensor, inputs: tf.Tensor, if_true: Callable[[tf.Tensor], tf.Tensor],
            if_false: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:  # fmt: skip
    """if_true(inputs) if `choice` (a bool tensor) else if_false(inputs), decided when run: a
    Switch of `inputs` alone and a Merge, as a lowered tf.cond but without one's Switch on
    every other input. Through those, a frozen graph's kernels stop being constants: the
    graph optimiser no longer folds their transforms and oneDNN no longer keeps them in its
    layout between calls; the pix2pix generator traced for any size (the export) ran at
    half the speed of one traced for its size. For inference graphs and custom gradients'
    forward passes only: nothing differentiates through it."""
    otherwise, chosen = tf.raw_ops.Switch(data=inputs, pred=choice)
    return tf.raw_ops.Merge(inputs=[if_false(otherwise), if_true(chosen)]).output


def _transpose_by_phases(inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """tf.nn.conv2d_transpose(inputs, kernel, stride 2, SAME) for a 4x4 `kernel` [4, 4, out, in],
    computed as one stride-1 2x2 convolution that gives each of the four output phases
    (even or odd row, even or odd column) its own channels, which are then interleaved."""
    shape = tf.shape(inputs)
    out_channels = kernel.shape[2]
    # Output row 2m takes input rows m-1, m through kernel rows 3, 1; row 2m+1 takes rows
    # m, m+1 through kernel rows 2, 0: in the flipped kernel, phase r's tap t is row 2t + r.
    taps = tf.reshape(tf.reverse(kernel, [0, 1]), [2, 2, 2, 2, out_channels, -1])  # [ty, ry, tx, rx, out, in]
    taps = tf.reshape(tf.transpose(taps, [0, 2, 5, 1, 3, 4]), [2, 2, -1, 4 * out_channels])  # [ty, tx, in, 4 out]
    phases = _conv2d(tf.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]]), taps, 1, "VALID")  # [B, H+1, W+1, 4 out]
    rows = []
    for row in range(2):
        columns = [phases[:, row:row + shape[1], column:column + shape[2],
                          (2 * row + column) * out_channels:(2 * row + column + 1) * out_channels]
                   for column in range(2)]  # fmt: skip
        rows.append(tf.stack(columns, axis=3))  # [B, H, W, 2, out]
    return tf.reshape(tf.stack(rows, axis=2), [shape[0], 2 * shape[1], 2 * shape[2], out_channels])


def _transpose(inputs: tf.Tensor, kernel: tf.Tensor, output_shape: tf.Tensor, strides: list[int],
               padding: str) -> tf.Tensor:  # fmt: skip
    """tf.nn.conv2d_transpose, by `_transpose_by_phases` where that is faster; with the input's
    size unknown when traced (the export's signatures), chosen in the graph at each call.
    `output_shape` must be what Conv2DTranspose gives: with SAME padding, twice the input's sides."""

    def plain(inputs: tf.Tensor) -> tf.Tensor:
        return tf.nn.conv2d_transpose(inputs, kernel, output_shape, strides, padding)

    def by_phases(inputs: tf.Tensor) -> tf.Tensor:
        return _transpose_by_phases(inputs, kernel)

    if tuple(kernel.shape[:2]) != (4, 4) or list(strides) != [1, 2, 2, 1] or padding != "SAME":
        return plain(inputs)
    if kernel.shape[2] <= PHASED_TRANSPOSE_CHANNELS:
        return by_phases(inputs)
    if inputs.shape[:3].is_fully_defined():
        return by_phases(inputs) if inputs.shape[:3].num_elements() <= PHASED_TRANSPOSE_POSITIONS else plain(inputs)
    shape = tf.shape(inputs)
    return _either(shape[0] * shape[1] * shape[2] <= PHASED_TRANSPOSE_POSITIONS, inputs, by_phases, plain)


# On AVX2 CPUs, float32 convolutions are faster by Winograd's algorithm, compiled by XLA
# (models/winograd.py), where they have at least WINOGRAD_CHANNELS input and output channels,
# WINOGRAD_TILES output blocks, and WINOGRAD_SAVING times fewer multiplications than the
# direct convolution (an output that fills only part of its blocks saves less). Forward
# and backward: ECCV16's 3x3 layers of 128-512 channels at 256 px, batch 8, 1.6-3x; the
# pix2pix 4x4 stride-2 ones 1.6-1.7x (64 and 32 px inputs, batch 1 and 4) and 2.3x (8 px,
# batch 64); transposed ones 1.6-1.8x; the PatchGAN's stride-1 layer 3.4-3.6x. 64-channel
# layers timed even alone but made whole steps faster (cgan 256 px batch 4 +11%, batch 1
# +3-6%, zhang +2-3%, iizuka +4-9%); with 16 blocks (16x16 -> 8x8 at
# batch 4) the kernel's transform made the layer 0.55x; 2x2 outputs in 4x4 blocks made
# the cgan step at 32 px 0.82x. Steps: cgan 1.07-1.35x, zhang 2.1x, iizuka, cyclegan
# and guided 1.3-2.2x at 256 px (BENCHMARKS.md, "Winograd convolutions"). CPUs with
# AVX-512, which have oneDNN's own Winograd kernels, and bf16 were not measured and keep
# oneDNN's convolutions.
WINOGRAD_CHANNELS = 64
WINOGRAD_TILES = 64
WINOGRAD_SAVING = 2.0
# Decided when run (an export's graphs, models.unet.winograd_at_any_size: forward passes
# alone, where fewer blocks share the kernel's transform than in a training step): the
# pix2pix generator at 256 px, batch 1, 0.94x with 64 blocks and even with 256; at batch
# 16, 1.13x and 1.18x.
WINOGRAD_TILES_WHEN_RUN = 256


@tf.function(jit_compile=True)
def _winograd_convolution(inputs: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor | None, stride: int, padding: str,
                          dilation: int, transposed: bool) -> tf.Tensor:  # fmt: skip
    """winograd.convolve (or convolve_transpose) and the bias, compiled by XLA with its gradient."""
    if transposed:
        outputs = winograd.convolve_transpose(inputs, kernel)
    else:
        outputs = winograd.convolve(inputs, kernel, stride, padding, dilation)
    return outputs if bias is None else tf.nn.bias_add(outputs, bias)


_winograd_at_any_size = False


@contextlib.contextmanager
def winograd_at_any_size(enabled: bool = True) -> Iterator[None]:
    """Layers traced within, with sides unknown (an export's graphs), choose between Winograd's
    algorithm and oneDNN's convolution when run, by the sizes they get, as traced ones do by
    theirs; XLA compiles each layer once per size it sees. Off by default: such a graph needs
    XLA when run, which TF Serving has only with --xla_cpu_compilation_enabled. `enabled`
    False: a context that changes nothing, for callers that decide by a setting."""
    global _winograd_at_any_size
    previous, _winograd_at_any_size = _winograd_at_any_size, enabled
    try:
        yield
    finally:
        _winograd_at_any_size = previous


def winograd_on_this_cpu() -> bool:
    """Whether this CPU takes Winograd's algorithm at all: not where it has AVX-512 (see WINOGRAD_CHANNELS)."""
    return "avx512f" not in cpu_flags()


def _by_winograd(layer: keras.layers.Conv2D, inputs: tf.Tensor) -> bool | tf.Tensor:
    """Whether `layer` convolves `inputs` by Winograd's algorithm (see WINOGRAD_CHANNELS); a
    transposed layer as the adjoint of the convolution from its output to its input. A bool
    tensor for sides unknown when traced, within `winograd_at_any_size`."""
    if (inputs.dtype != tf.float32 or layer.data_format != "channels_last" or getattr(layer, "groups", 1) != 1
            or min(inputs.shape[-1] or 0, layer.filters) < WINOGRAD_CHANNELS
            or len(set(layer.strides)) != 1 or len(set(layer.dilation_rate)) != 1 or not winograd_on_this_cpu()
            or not (inputs.shape.is_fully_defined() or _winograd_at_any_size)):  # fmt: skip
        return False
    shape = winograd.dims(inputs)
    if isinstance(layer, keras.layers.Conv2DTranspose):
        if (tuple(layer.kernel_size) != (4, 4) or layer.strides[0] != 2 or layer.padding != "same"
                or layer.output_padding is not None):  # fmt: skip
            return False
        batch, height, width, _ = shape
        shape = [batch, 2 * height, 2 * width, layer.filters]
    convolution = [list(layer.kernel.shape), layer.strides[0], layer.padding.upper(), layer.dilation_rate[0], shape]
    supported = winograd.supports(*convolution)
    if supported is False:
        return False
    # (counted for supported sizes only while they are ints: an empty output would divide by zero)
    tiles = WINOGRAD_TILES if inputs.shape.is_fully_defined() else WINOGRAD_TILES_WHEN_RUN
    return winograd.all_of([supported, winograd.tiles(*convolution) >= tiles,
                            winograd.saving(*convolution) >= WINOGRAD_SAVING])  # fmt: skip


def _winograd_layer(layer: keras.layers.Conv2D, inputs: tf.Tensor) -> tf.Tensor:
    """`layer`'s convolution and bias by `_winograd_convolution`."""
    bias = tf.convert_to_tensor(layer.bias) if layer.use_bias else None
    return _winograd_convolution(inputs, tf.convert_to_tensor(layer.kernel), bias, layer.strides[0],
                                 layer.padding.upper(), layer.dilation_rate[0],
                                 isinstance(layer, keras.layers.Conv2DTranspose))  # fmt: skip


def _convolved(layer: keras.layers.Conv2D, inputs: tf.Tensor, keras_call: Callable[[tf.Tensor], tf.Tensor],
               direct: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:  # fmt: skip
    """`layer`'s outputs: by Winograd's algorithm where `_by_winograd`, else by `direct` (its
    convolution and bias) where `_plain`, else by Keras's own `keras_call`."""

    def activated(outputs: tf.Tensor) -> tf.Tensor:
        return layer.activation(outputs) if layer.activation is not None else outputs

    def by_winograd(inputs: tf.Tensor) -> tf.Tensor:
        return activated(_winograd_layer(layer, inputs))

    def otherwise(inputs: tf.Tensor) -> tf.Tensor:
        return activated(direct(inputs)) if _plain(layer) else keras_call(inputs)

    chosen = _by_winograd(layer, inputs)
    if chosen is False:
        return otherwise(inputs)
    if chosen is True:
        return by_winograd(inputs)
    return _either(chosen, inputs, by_winograd, otherwise)


def convolution_layers():
    """This module (its Conv2D and Conv2DTranspose) under a float32 policy, keras.layers
    otherwise: what the models build their convolutions from. In float32 this module's
    layers take Winograd's algorithm and the faster weight gradients above; in bf16 the
    models keep Keras's layers, with which their AMX figures were measured."""
    return sys.modules[__name__] if keras.mixed_precision.global_policy().compute_dtype == "float32" else keras.layers


def _plain(layer: keras.layers.Layer) -> bool:
    """A 2-D convolution the custom gradient below covers: NHWC, no groups; dilated only where
    TensorFlow has gradient kernels for it, oneDNN's in a traced graph (Keras's own call goes
    through space-to-batch there), and never transposed."""
    dilated = tuple(layer.dilation_rate) != (1, 1)
    if dilated and (isinstance(layer, keras.layers.Conv2DTranspose) or tf.executing_eagerly()
                    or not _pywrap_util_port.IsMklEnabled()):  # fmt: skip
        return False
    return (layer.data_format == "channels_last" and getattr(layer, "groups", 1) == 1
            and getattr(layer, "output_padding", None) is None)  # fmt: skip


def _convolution(layer: keras.layers.Layer, inputs: tf.Tensor, output_shape: tf.Tensor | None = None) -> tf.Tensor:
    """`layer`'s convolution (transposed with `output_shape`, by `_transpose`) and bias, with
    TensorFlow's own kernels both ways except the weight gradient (`_filter_gradient`) and
    the bias gradient, summed in float32: a bf16 sum over a few thousand positions was 13%
    off, where Keras's graph gets a fused kernel that accumulates in float32."""
    strides, padding, dilations = [1, *layer.strides, 1], layer.padding.upper(), [1, *layer.dilation_rate, 1]
    kernel = tf.convert_to_tensor(layer.kernel)

    def forward(inputs, kernel):
        if output_shape is None:
            return _conv2d(inputs, kernel, strides, padding, dilations)
        return _transpose(inputs, kernel, output_shape, strides, padding)

    def backward(inputs, kernel, out_backprop):
        if output_shape is None:
            return (tf.compat.v1.nn.conv2d_backprop_input(tf.shape(inputs), kernel, out_backprop, strides, padding,
                                                          dilations=dilations),
                    _filter_gradient(inputs, kernel.shape.as_list(), out_backprop, strides, padding, dilations))  # fmt: skip
        return (_conv2d(out_backprop, kernel, strides, padding),
                _filter_gradient(out_backprop, kernel.shape.as_list(), inputs, strides, padding, dilations))  # fmt: skip

    if not layer.use_bias:

        @tf.custom_gradient
        def convolve(inputs, kernel):
            return forward(inputs, kernel), lambda out_backprop: backward(inputs, kernel, out_backprop)

        return convolve(inputs, kernel)

    @tf.custom_gradient
    def convolve_and_add(inputs, kernel, bias):
        def gradients(out_backprop):
            bias_gradient = tf.reduce_sum(tf.cast(out_backprop, tf.float32), axis=[0, 1, 2])
            return (*backward(inputs, kernel, out_backprop), tf.cast(bias_gradient, bias.dtype))

        return tf.nn.bias_add(forward(inputs, kernel), bias), gradients

    return convolve_and_add(inputs, kernel, tf.convert_to_tensor(layer.bias))


@keras.saving.register_keras_serializable(package="colorize")
class Conv2D(keras.layers.Conv2D):
    """keras.layers.Conv2D with the gradients of `_convolution`."""

    def call(self, inputs):
        return _convolved(self, inputs, super().call, lambda inputs: _convolution(self, inputs))


@keras.saving.register_keras_serializable(package="colorize")
class Conv2DTranspose(keras.layers.Conv2DTranspose):
    """keras.layers.Conv2DTranspose with the gradients of `_convolution`."""

    def call(self, inputs):
        def direct(inputs: tf.Tensor) -> tf.Tensor:
            shape = tf.shape(inputs)
            sides = [shape[1] * self.strides[0], shape[2] * self.strides[1]]
            if self.padding == "valid":
                sides = [side + max(size - stride, 0) for side, size, stride in zip(sides, self.kernel_size,
                                                                                    self.strides)]  # fmt: skip
            return _convolution(self, inputs, tf.stack([shape[0], *sides, self.filters]))

        return _convolved(self, inputs, super().call, direct)


def batch_norm(name: str, sides: tuple[int, ...] = ()) -> keras.layers.BatchNormalization:
    """BatchNorm as in the pix2pix reference (PyTorch's momentum 0.1, eps 1e-5), fused; with
    one set of moving statistics per image side of `sides` (see SizeStatisticsNetwork).

    Keras' default momentum 0.99 lets the moving statistics lag a GAN's fast-moving weights
    by hundreds of steps: on a 32 px run, inference-mode validation L1 was twice the
    training-mode L1 until the statistics were recalibrated.
    """
    return FusedBatchNormalization(momentum=0.9, epsilon=1e-5, name=name, statistics_sets=max(len(sides), 1))


def batch_norms(network: keras.Model) -> list[FusedBatchNormalization]:
    """Every FusedBatchNormalization in `network`, nested models included."""
    return [layer for layer in network._flatten_layers() if isinstance(layer, FusedBatchNormalization)]


def copy_first_statistics(network: keras.Model) -> None:
    """Every extra statistics set of `network`'s batch norms set to a copy of set 0: the start
    of sets that a checkpoint from before they existed (a fine-tune's source) lacks."""
    for layer in batch_norms(network):
        for index in range(1, layer.statistics_sets):
            for target, source in zip(layer.statistics(index), layer.statistics(0)):
                target.assign(source)


class SizeStatisticsNetwork(keras.Model):
    """keras.Model(inputs, outputs) whose batch norms (made by `batch_norm(name, sides)`) keep
    one set of moving statistics per side of `sides`: a call normalises with, and when
    training updates, the set of the side nearest in area to its first input [B, H, W, C]
    (in log area: 40 px goes with 32 rather than 64). With fewer than two sides it is the
    plain network.

    The set's index is computed in the graph from the input's shape, so one traced call (the
    training step, the export's signatures) serves every size, and every caller of the
    network (validation, make evaluate, the export) gets the same choice. Not a
    tf.switch_case of the network per set: tf.distribute refuses the synchronized batch
    norms' all-reduce inside one (--strategy=mirrored), and a persistent GradientTape could
    not differentiate iizuka's resizes (a tf.cond each) inside one. The variables, and so the
    checkpoints, are those of keras.Model(inputs, outputs).
    """

    def __init__(self, inputs, outputs, sides: tuple[int, ...] = (), name: str | None = None) -> None:
        super().__init__(inputs, outputs, name=name)
        self.sides = tuple(sides)

    def call(self, inputs, training=None, mask=None, **kwargs):
        norms = batch_norms(self) if len(self.sides) > 1 else []
        if norms:
            shape = tf.shape(tf.nest.flatten(inputs)[0])
            log_area = tf.math.log(tf.cast(shape[1] * shape[2], tf.float32))
            log_areas = tf.math.log(tf.constant([float(side * side) for side in self.sides]))
            nearest = tf.argmin(tf.abs(log_areas - log_area), output_type=tf.int32)
            for layer in norms:
                layer.statistics_set = nearest  # read by the layers' calls below
        try:
            return super().call(inputs, training=training, mask=mask, **kwargs)
        finally:
            for layer in norms:
                layer.statistics_set = 0


@dataclasses.dataclass(frozen=True)
class StatisticsSides:
    """The setting of a model whose networks keep batch-norm statistics per image size, for
    its config dataclass to inherit (first among its bases: these checks then run the next
    base's, e.g. UNetConfig's)."""

    # Image sides, comma-separated (e.g. 64,32), that keep batch-norm statistics of their own:
    # a photo is normalised with those of the side nearest its working size. Training with
    # --scales sets it to the scales' sides; empty: one set for every size.
    statistics_sides: str = ""

    def __post_init__(self) -> None:
        self.sides  # noqa: B018 (checks --statistics_sides)
        following = getattr(super(), "__post_init__", None)
        if following is not None:
            following()

    @property
    def sides(self) -> tuple[int, ...]:
        """--statistics_sides as numbers; () without it."""
        sides = comma_separated("statistics_sides", self.statistics_sides, int, "image sides, e.g. 64,32")
        check(all(side >= 8 for side in sides) and len(set(sides)) == len(sides),
              f"--statistics_sides={self.statistics_sides}: distinct sides of at least 8 px")  # fmt: skip
        return sides


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """The generator's architecture; the defaults are pix2pix at 256 px (54 M weights)."""

    depth: int = 8  # stride-2 encoder blocks; image sides must be multiples of 2**depth
    base_width: int = 64  # channels of the first block, doubling per block ...
    max_width: int = 512  # ... up to this
    kernel_size: int = 4  # 5 as in Nazeri et al. (2018)
    dropout: float = 0.5
    dropout_blocks: int = 3  # decoder blocks nearest the bottleneck that use dropout

    def __post_init__(self) -> None:
        check(self.depth >= 1, f"--depth={self.depth}: must be at least 1")
        check(1 <= self.base_width <= self.max_width,
              f"--base_width={self.base_width}, --max_width={self.max_width}: need 1 <= base_width <= max_width")  # fmt: skip
        check(self.kernel_size >= 1, f"--kernel_size={self.kernel_size}: must be at least 1")
        check(0.0 <= self.dropout < 1.0, f"--dropout={self.dropout}: must be in [0, 1)")
        check(0 <= self.dropout_blocks < self.depth,
              f"--dropout_blocks={self.dropout_blocks}: must be in [0, depth-1={self.depth - 1}]")  # fmt: skip

    @property
    def stride(self) -> int:
        """Image sides must be multiples of this."""
        return 2**self.depth

    def widths(self) -> list[int]:
        """Channels of the encoder blocks, outermost first."""
        return [min(self.base_width * 2**i, self.max_width) for i in range(self.depth)]


# Overrides of the defaults per tile size; the CLI's `--preset=auto` takes the largest that
# fits the data. 32 px follows Nazeri et al.'s CIFAR-10 generator (five blocks, 32 -> 1).
PRESETS: dict[int, dict[str, object]] = {
    32: {"depth": 5, "dropout_blocks": 2},
    256: {},
}


def unet_generator(config: UNetConfig, name: str = "generator", channels: tuple[int, int] = (1, 2)) -> keras.Model:
    """gray [B, H, W, 1] in [-1, 1] -> fake_color [B, H, W, 2] float32 in (-1, 1).

    `channels` (in, out) = (3, 1) is cyclegan's to_gray: Lab [B, H, W, 3] -> fake_gray [B, H, W, 1].
    H and W must be multiples of `config.stride`. Under a mixed-precision policy every
    layer computes in 16 bits except the tanh, so the output stays float32. With the
    config's `sides` (cgan's and regression's --statistics_sides) the batch norms keep
    statistics per size; cyclegan's config has none: its generators keep one set.
    """
    init = keras.initializers.RandomNormal(stddev=INITIALIZER_STDDEV)
    widths = config.widths()
    sides = getattr(config, "sides", ())
    inputs = keras.Input([None, None, channels[0]], name="gray" if channels[0] == 1 else "color")  # [B, H, W, in]

    x = inputs
    skips = []
    for i, width in enumerate(widths):
        # [B, H / 2**(i+1), W / 2**(i+1), width]
        x = Conv2D(width, config.kernel_size, strides=2, padding="same", use_bias=False,
                                kernel_initializer=init, name=f"down{i + 1}_conv")(x)  # fmt: skip
        # No norm on the outermost block (pix2pix) nor the innermost: at 1x1 with batch 1,
        # BatchNorm would map every input to beta and cut the bottleneck off.
        if 0 < i < config.depth - 1:
            x = batch_norm(f"down{i + 1}_norm", sides)(x)
        x = keras.layers.LeakyReLU(0.2, name=f"down{i + 1}_act")(x)
        skips.append(x)

    # Decoder: mirror the encoder, concatenating each encoder output of the same size.
    for j, (width, skip) in enumerate(zip(reversed(widths[:-1]), reversed(skips[:-1]))):
        level = config.depth - 1 - j
        # [B, H / 2**level, W / 2**level, width]
        x = Conv2DTranspose(width, config.kernel_size, strides=2, padding="same", use_bias=False,
                                         kernel_initializer=init, name=f"up{level}_conv")(x)  # fmt: skip
        x = batch_norm(f"up{level}_norm", sides)(x)
        if j < config.dropout_blocks:
            # pix2pix's only source of noise: the generator ignores an input z.
            x = keras.layers.Dropout(config.dropout, name=f"up{level}_dropout")(x)
        x = keras.layers.ReLU(name=f"up{level}_act")(x)
        x = keras.layers.Concatenate(name=f"up{level}_skip")([x, skip])  # [..., 2 * width]

    # [B, H, W, out]
    x = Conv2DTranspose(channels[1], config.kernel_size, strides=2, padding="same",
                                     kernel_initializer=init, name="out_conv")(x)  # fmt: skip
    outputs = keras.layers.Activation("tanh", dtype="float32", name="fake_color" if channels[1] == 2 else "fake_gray")(x)
    return SizeStatisticsNetwork(inputs, outputs, sides, name=name)
