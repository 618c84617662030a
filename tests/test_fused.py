"""The fused kernels and custom gradients the models train with compute what Keras's own layers and Adam compute."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import unet
from models.unet import FusedBatchNormalization
from train.loop import FusedAdam


@pytest.fixture
def policy(request):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy(previous)


def _normalize(layer: keras.layers.BatchNormalization, images: tf.Tensor) -> dict[str, np.ndarray]:
    layer.build(images.shape)
    layer.gamma.assign(np.linspace(0.5, 2.0, images.shape[-1]))
    layer.beta.assign(np.linspace(-1.0, 1.0, images.shape[-1]))
    with tf.GradientTape() as tape:
        tape.watch(images)
        outputs = layer(images, training=True)
        loss = tf.reduce_sum(tf.cast(outputs, tf.float32) * tf.range(images.shape[-1], dtype=tf.float32))
    image_gradient, gamma_gradient, beta_gradient = tape.gradient(loss, [images, layer.gamma, layer.beta])
    return {
        "dtype": outputs.dtype,
        "outputs": tf.cast(outputs, tf.float32).numpy(),
        "image_gradient": image_gradient.numpy(),
        "gamma_gradient": gamma_gradient.numpy(),
        "beta_gradient": beta_gradient.numpy(),
        "moving_mean": layer.moving_mean.numpy(),
        "moving_variance": layer.moving_variance.numpy(),
        "inference": tf.cast(layer(images, training=False), tf.float32).numpy(),
    }


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"], indirect=True)
def test_fused_batch_norm_matches_keras(policy):
    images = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, size=(8, 5, 6, 4)).astype("float32"))
    keras_result = _normalize(keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5), images)
    fused_result = _normalize(FusedBatchNormalization(momentum=0.9, epsilon=1e-5), images)
    assert fused_result["dtype"] == keras_result["dtype"] == keras.mixed_precision.global_policy().compute_dtype
    for key in ("outputs", "image_gradient", "gamma_gradient", "beta_gradient", "moving_mean"):
        np.testing.assert_allclose(fused_result[key], keras_result[key], rtol=1e-3, atol=1e-3, err_msg=key)
    # The moving variance takes the unbiased batch variance (as PyTorch): n / (n - 1) of Keras's update.
    count = 8 * 5 * 6
    batch_variance = images.numpy().reshape(-1, 4).var(axis=0)
    np.testing.assert_allclose(fused_result["moving_variance"], 0.9 + 0.1 * batch_variance * count / (count - 1), rtol=2e-3)
    np.testing.assert_allclose(keras_result["moving_variance"], 0.9 + 0.1 * batch_variance, rtol=2e-3)


def test_fused_batch_norm_inference_uses_the_moving_statistics():
    layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
    images = tf.fill([2, 3, 3, 2], 5.0)
    layer.build(images.shape)
    layer.moving_mean.assign([1.0, 3.0])
    layer.moving_variance.assign([4.0, 1.0])
    outputs = layer(images, training=False).numpy()
    np.testing.assert_allclose(outputs[..., 0], (5.0 - 1.0) / np.sqrt(4.0 + 1e-5), rtol=1e-6)
    np.testing.assert_allclose(outputs[..., 1], (5.0 - 3.0) / np.sqrt(1.0 + 1e-5), rtol=1e-6)
    np.testing.assert_array_equal(layer.moving_mean.numpy(), [1.0, 3.0])  # inference does not update them


def test_fused_adam_matches_keras_adam_and_restores_its_checkpoint(tmp_path):
    initial = np.random.default_rng(1).normal(size=(20, 7)).astype("float32")
    trained = {}
    for optimizer_class in (keras.optimizers.Adam, FusedAdam):
        variable = keras.Variable(initial)
        optimizer = optimizer_class(1e-2, beta_1=0.5)
        optimizer.build([variable])
        apply = tf.function(lambda gradient: optimizer.apply_gradients([(gradient, variable)]))  # noqa: B023
        for step in range(15):
            apply(tf.constant(np.sin(np.arange(initial.size).reshape(initial.shape) * (step + 1)), tf.float32))
        trained[optimizer_class] = (variable, optimizer)
    fused_weights, keras_weights = (trained[key][0].numpy() for key in (FusedAdam, keras.optimizers.Adam))
    assert np.abs(fused_weights - initial).max() > 0.1  # it did train
    np.testing.assert_allclose(fused_weights, keras_weights, atol=1e-5)

    # A run trained with Keras's Adam resumes with FusedAdam: same slots, same checkpoint keys.
    variable, optimizer = trained[keras.optimizers.Adam]
    path = tf.train.Checkpoint(weights=variable, optimizer=optimizer).save(str(tmp_path / "ckpt"))
    restored_variable = keras.Variable(np.zeros_like(initial))
    restored_optimizer = FusedAdam(1e-2, beta_1=0.5)
    restored_optimizer.build([restored_variable])
    tf.train.Checkpoint(weights=restored_variable, optimizer=restored_optimizer).restore(path).assert_consumed()
    for restored, saved in zip(restored_optimizer.variables, optimizer.variables, strict=True):
        np.testing.assert_array_equal(restored.numpy(), saved.numpy())


def _graph_nodes(function: tf.types.experimental.ConcreteFunction) -> list:
    """Every node of `function`'s graph, those of the functions it calls (tf.cond branches) included."""
    graph = function.graph.as_graph_def()
    return list(graph.node) + [node for library in graph.library.function for node in library.node_def]


def _convolve(layer: keras.layers.Layer, images: tf.Tensor) -> tuple[list[np.ndarray], set[str]]:
    """Outputs and gradients (images, kernel, bias) of `layer`, and the dtypes its weight gradient ran in."""
    layer.build(images.shape)
    layer.kernel.assign(np.random.default_rng(1).normal(0.0, 0.2, layer.kernel.shape))
    layer.bias.assign(np.arange(layer.filters) * 0.1)

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            tape.watch(images)
            outputs = tf.cast(layer(images), tf.float32)
            loss = tf.reduce_sum(outputs**2)
        return [outputs, *tape.gradient(loss, [images, layer.kernel, layer.bias])]

    weight_gradient_dtypes = {tf.dtypes.as_dtype(node.attr["T"].type).name
                              for node in _graph_nodes(forward_backward.get_concrete_function())
                              if node.op == "Conv2DBackpropFilter"}  # fmt: skip
    return [tensor.numpy() for tensor in forward_backward()], weight_gradient_dtypes


def _assert_same_results(ours: list[np.ndarray], exact: list[np.ndarray], tolerance: float = 1e-5) -> None:
    """Two layers' `_convolve` results agree: same shapes, values within `tolerance` of each result's largest."""
    for name, mine, reference in zip(["outputs", "image gradient", "kernel gradient", "bias gradient"], ours, exact):
        assert mine.shape == reference.shape, name
        np.testing.assert_allclose(mine, reference, atol=tolerance * np.abs(reference).max(), err_msg=name)


def _kernel_gradient_nodes(layer: keras.layers.Layer, shape: tuple[int, ...]) -> list:
    """The graph nodes of `layer`'s kernel gradient, traced for inputs of `shape`."""

    @tf.function
    def kernel_gradient(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(images) ** 2)
        return tape.gradient(loss, layer.kernel)

    return _graph_nodes(kernel_gradient.get_concrete_function(tf.TensorSpec(shape)))


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"], indirect=True)
@pytest.mark.parametrize(
    "project_layer, keras_layer, shape, padding",
    [
        (unet.Conv2D, keras.layers.Conv2D, (4, 8, 8, 5), "same"),  # 4 x 4 x 4 positions: float32 weight gradient in bf16
        (unet.Conv2D, keras.layers.Conv2D, (40, 16, 16, 5), "valid"),  # 40 x 7 x 7: bf16 stays
        (unet.Conv2DTranspose, keras.layers.Conv2DTranspose, (4, 3, 5, 5), "same"),
        (unet.Conv2DTranspose, keras.layers.Conv2DTranspose, (40, 8, 8, 5), "same"),
        (unet.Conv2DTranspose, keras.layers.Conv2DTranspose, (4, 3, 5, 5), "valid"),
    ],
)
def test_convolutions_compute_what_keras_computes_in_float32(policy, project_layer, keras_layer, shape, padding):
    images = tf.constant(np.random.default_rng(0).normal(size=shape).astype("float32"))
    ours, our_dtypes = _convolve(project_layer(6, 4, strides=2, padding=padding), images)
    keras.mixed_precision.set_global_policy("float32")
    exact, _ = _convolve(keras_layer(6, 4, strides=2, padding=padding), images)
    # bf16 keeps 8 significant bits; every result, the bias gradient's sum over all positions
    # included, stays within a few of them of float32's (Keras's own bf16 transposed
    # convolution sums its bias gradient in bf16, which stalls: up to 5 times too small here)
    tolerance = 1e-5 if policy == "float32" else 2e-2
    _assert_same_results(ours, exact, tolerance)
    positions = min(shape[0] * shape[1] * shape[2], ours[0].shape[0] * ours[0].shape[1] * ours[0].shape[2])
    if policy == "float32":
        assert our_dtypes == {"float32"}
    else:
        expected = "float32" if positions <= unet.FLOAT32_WEIGHT_GRADIENT_POSITIONS else "bfloat16"
        assert our_dtypes == {expected}, f"{positions} positions"


@pytest.mark.parametrize(
    "shape, filters, route",
    [
        ((1, 4, 4, 8), 6, "phases"),  # 16 positions
        ((2, 3, 5, 8), 6, "phases"),  # non-square, batch 2
        ((5, 16, 16, 8), 6, "transposed"),  # 1,280 positions
        ((5, 16, 16, 8), 2, "phases"),  # an output layer's few channels, at any size
    ],
)
def test_transposed_convolutions_take_the_faster_route_and_compute_the_same(shape, filters, route):
    """Small inputs and few output channels go through `_transpose_by_phases`, which must
    give TensorFlow's transposed convolution, and so must the choice made in the graph
    when the sizes are only known at run time (the export's signatures)."""
    layer = unet.Conv2DTranspose(filters, 4, strides=2, padding="same", use_bias=False)
    images = tf.constant(np.random.default_rng(0).normal(size=shape).astype("float32"))
    layer.build(images.shape)
    layer.kernel.assign(np.random.default_rng(1).normal(0.0, 0.2, layer.kernel.shape))
    expected = tf.nn.conv2d_transpose(images, layer.kernel, [shape[0], 2 * shape[1], 2 * shape[2], filters], 2, "SAME")

    known = tf.function(lambda images: layer(images)).get_concrete_function(tf.TensorSpec(shape))
    np.testing.assert_allclose(known(images).numpy(), expected.numpy(), atol=1e-5)
    assert ("Conv2DBackpropInput" in {node.op for node in _graph_nodes(known)}) == (route == "transposed")

    unknown = tf.function(lambda images: layer(images)).get_concrete_function(tf.TensorSpec([None, None, None, 8]))
    np.testing.assert_allclose(unknown(images).numpy(), expected.numpy(), atol=1e-5)
    unknown_ops = [node.op for node in _graph_nodes(unknown)]
    if filters <= unet.PHASED_TRANSPOSE_CHANNELS:
        assert "Conv2DBackpropInput" not in unknown_ops
    else:  # both routes in the graph, one taken per call; only the input is switched, the kernel reaches both as is
        assert unknown_ops.count("Switch") == 1 and "Conv2DBackpropInput" in unknown_ops


@pytest.mark.parametrize(
    "project_layer, keras_layer, shape, through_conv3d",
    [
        (unet.Conv2D, keras.layers.Conv2D, (1, 32, 32, 5), True),  # 16 x 16 = 256 output positions
        (unet.Conv2D, keras.layers.Conv2D, (1, 16, 16, 5), False),  # 64: the kernel's reorder would cost more
        (unet.Conv2D, keras.layers.Conv2D, (2, 32, 32, 5), False),  # batch 2: Conv2D's own kernel is direct
        (unet.Conv2DTranspose, keras.layers.Conv2DTranspose, (1, 32, 32, 5), True),  # phases and input gradient
    ],
)
def test_batch_one_float32_convolutions_run_as_conv3d_where_large_and_compute_what_keras_computes(
    project_layer, keras_layer, shape, through_conv3d
):
    """`_conv2d`'s route: with sizes known at trace time, a float32 batch of one with at least
    CONV3D_OUTPUT_POSITIONS output positions goes through Conv3D, both ways, and gives what
    Keras's own layers give; the export's graphs (sizes unknown) keep Conv2D."""
    images = tf.constant(np.random.default_rng(0).normal(size=shape).astype("float32"))
    project = project_layer(6, 4, strides=2, padding="same")
    ours, _ = _convolve(project, images)
    exact, _ = _convolve(keras_layer(6, 4, strides=2, padding="same"), images)
    _assert_same_results(ours, exact)

    @tf.function
    def forward_backward(images):
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = tf.reduce_sum(project(images) ** 2)
        return tape.gradient(loss, images)

    known = {node.op for node in _graph_nodes(forward_backward.get_concrete_function(tf.TensorSpec(shape)))}
    assert ("Conv3D" in known) == through_conv3d
    unknown = forward_backward.get_concrete_function(tf.TensorSpec([None, None, None, shape[-1]]))
    assert "Conv3D" not in {node.op for node in _graph_nodes(unknown)}


@pytest.mark.parametrize(
    "project_layer, keras_layer, shape, strides, padding",
    [
        (unet.Conv2D, keras.layers.Conv2D, (3, 4, 4, 256), 2, "same"),  # the 32 px preset's 4x4 -> 2x2 block
        (unet.Conv2D, keras.layers.Conv2D, (2, 5, 7, 256), 1, "same"),  # odd sides: uneven SAME padding
        (unet.Conv2D, keras.layers.Conv2D, (2, 9, 6, 256), 2, "valid"),
        (unet.Conv2DTranspose, keras.layers.Conv2DTranspose, (3, 2, 2, 256), 2, "same"),
        (unet.Conv2DTranspose, keras.layers.Conv2DTranspose, (2, 3, 2, 256), 2, "valid"),
    ],
)
def test_large_float32_kernels_get_their_gradient_as_one_matrix_product_equal_to_keras(
    project_layer, keras_layer, shape, strides, padding
):
    """Kernels of at least MATMUL_WEIGHT_GRADIENT_CHANNELS in x out channels take the weight
    gradient from `_filter_gradient_by_matmul`, which must be TensorFlow's own."""
    images = tf.constant(np.random.default_rng(0).normal(size=shape).astype("float32"))
    project = project_layer(256, 4, strides=strides, padding=padding)
    ours, _ = _convolve(project, images)
    exact, _ = _convolve(keras_layer(256, 4, strides=strides, padding=padding), images)
    _assert_same_results(ours, exact)
    ops = {node.op for node in _kernel_gradient_nodes(project, shape)}
    assert "Conv2DBackpropFilter" not in ops and {"ExtractImagePatches", "MatMul"} <= ops


def _weight_gradient_layouts(layer: keras.layers.Layer, shape: tuple[int, ...]) -> set[str]:
    """The data formats of the Conv2DBackpropFilter ops in `layer`'s kernel gradient."""
    nodes = _kernel_gradient_nodes(layer, shape)
    return {node.attr["data_format"].s.decode() for node in nodes if node.op == "Conv2DBackpropFilter"}


@pytest.mark.parametrize(
    "shape, strides, dilation, flags, onednn, layouts",
    [
        ((2, 12, 12, 64), 1, 1, "fpu avx2", True, {"NCHW"}),  # ECCV16's 3x3 layers, on an AVX2 CPU
        ((2, 12, 10, 64), 2, 1, "fpu avx2", True, {"NCHW"}),
        ((2, 12, 12, 64), 1, 2, "fpu avx2", True, {"NCHW"}),  # its dilated blocks
        ((2, 12, 12, 64), 1, 1, "fpu avx2 avx512f", True, {"NHWC"}),  # measured on AVX2 only
        ((2, 12, 12, 32), 1, 1, "fpu avx2", True, {"NHWC"}),  # fewer input channels than it pays for
        ((2, 12, 12, 64), 1, 1, "fpu avx2", False, {"NHWC"}),  # TF_ENABLE_ONEDNN_OPTS=0: TensorFlow's NHWC kernels
    ],
)
def test_3x3_convolutions_compute_what_keras_computes_with_the_weight_gradient_on_the_faster_layout(
    monkeypatch, shape, strides, dilation, flags, onednn, layouts
):
    """zhang's 3x3 layers take `_convolution`'s gradients; on an AVX2 CPU a 3x3 kernel of at
    least CHANNELS_FIRST_WEIGHT_GRADIENT_CHANNELS input channels gets its weight gradient on
    channels-first data. Both give what Keras's own layer gives."""
    monkeypatch.setattr(unet, "cpu_flags", lambda: frozenset(flags.split()))
    if not onednn:  # the route's condition only: this process keeps oneDNN's kernels
        monkeypatch.setattr(unet._pywrap_util_port, "IsMklEnabled", lambda: False)
    images = tf.constant(np.random.default_rng(0).normal(size=shape).astype("float32"))
    project = unet.Conv2D(16, 3, strides=strides, dilation_rate=dilation, padding="same")
    ours, _ = _convolve(project, images)
    exact, _ = _convolve(keras.layers.Conv2D(16, 3, strides=strides, dilation_rate=dilation, padding="same"), images)
    _assert_same_results(ours, exact)
    assert _weight_gradient_layouts(project, shape) == layouts


def test_large_3x3_float32_kernels_on_avx2_keep_the_channels_first_weight_gradient(monkeypatch):
    """ECCV16's 3x3 layers of 256 x 256 channels and more were measured on channels-first
    data, not as one matrix product: on an AVX2 CPU the channels-first route comes first."""
    monkeypatch.setattr(unet, "cpu_flags", lambda: frozenset({"fpu", "avx2"}))
    shape = (2, 6, 6, 256)
    project = unet.Conv2D(256, 3, padding="same")
    project.build(shape)
    ops = {node.op for node in _kernel_gradient_nodes(project, shape)}
    assert _weight_gradient_layouts(project, shape) == {"NCHW"} and "MatMul" not in ops


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"], indirect=True)
def test_a_dilated_convolution_takes_onednn_s_dilated_kernels_when_traced_and_keras_s_call_eagerly(policy):
    """ECCV16's dilated blocks: traced with oneDNN, `_convolution` runs them as dilated
    convolutions (Keras's own call goes through space-to-batch) and must give Keras's numbers;
    eagerly, where TensorFlow has no dilated gradient kernel on the CPU, Keras's call stays."""
    images = tf.constant(np.random.default_rng(0).normal(size=(2, 12, 12, 8)).astype("float32"))
    layer = unet.Conv2D(4, 3, dilation_rate=2, padding="same")
    layer.build(images.shape)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.cast(layer(images), tf.float32) ** 2)
    eager = tape.gradient(loss, layer.kernel)
    assert eager.shape == (3, 3, 8, 4) and np.isfinite(eager.numpy()).all()
    traced = tf.function(layer).get_concrete_function(tf.TensorSpec(images.shape))
    assert "SpaceToBatchND" not in {node.op for node in _graph_nodes(traced)}
    if policy == "float32":
        ours, _ = _convolve(unet.Conv2D(4, 3, dilation_rate=2, padding="same"), images)
        exact, _ = _convolve(keras.layers.Conv2D(4, 3, dilation_rate=2, padding="same"), images)
        _assert_same_results(ours, exact)


def test_a_dilated_batch_of_one_through_conv3d_computes_what_keras_computes():
    images = tf.constant(np.random.default_rng(0).normal(size=(1, 20, 20, 4)).astype("float32"))
    project = unet.Conv2D(6, 3, dilation_rate=2, padding="valid")  # 16 x 16 = 256 output positions
    ours, _ = _convolve(project, images)
    exact, _ = _convolve(keras.layers.Conv2D(6, 3, dilation_rate=2, padding="valid"), images)
    _assert_same_results(ours, exact)
    forward = tf.function(project).get_concrete_function(tf.TensorSpec(images.shape))
    assert "Conv3D" in {node.op for node in _graph_nodes(forward)}


def _winograd_calls(monkeypatch, flags: str) -> list:
    """The calls `unet.Conv2D` makes to `_winograd_convolution` from now on, on a CPU with `flags`."""
    monkeypatch.setattr(unet, "cpu_flags", lambda: frozenset(flags.split()))
    calls = []
    compiled = unet._winograd_convolution
    monkeypatch.setattr(unet, "_winograd_convolution", lambda *args: calls.append(args) or compiled(*args))
    return calls


@pytest.mark.parametrize(
    "shape, kernel_side, strides, dilation, flags, by_winograd",
    [
        ((64, 8, 8, 128), 4, 2, 1, "avx2", True),  # the 32 px preset's 8x8 -> 4x4 block at batch 64
        ((2, 32, 32, 128), 3, 1, 2, "avx2", True),  # ECCV16's dilated blocks
        ((1, 24, 24, 128), 4, 1, 1, "avx2", True),  # the PatchGAN's stride-1 layer
        ((1, 16, 16, 128), 4, 2, 1, "avx2", False),  # 4 output blocks: too few
        ((64, 4, 4, 128), 4, 2, 1, "avx2", False),  # 2x2 outputs in 4x4 blocks: more multiplications
        ((64, 8, 8, 32), 4, 2, 1, "avx2", False),  # 32 input channels: too few
        ((64, 8, 8, 128), 4, 2, 1, "avx2 avx512f", False),  # measured on AVX2 only
        ((16, 8, 8, 128), 3, 2, 1, "avx2", False),  # strided 3x3: no transforms
    ],
)
def test_wide_float32_convolutions_go_through_winograd_and_compute_what_keras_computes(
    monkeypatch, shape, kernel_side, strides, dilation, flags, by_winograd
):
    """unet.Conv2D's route: float32 layers of at least WINOGRAD_CHANNELS input and output
    channels, WINOGRAD_TILES output blocks and WINOGRAD_SAVING, on a CPU without AVX-512,
    convolve by `_winograd_convolution`, and give Keras's outputs and gradients."""
    calls = _winograd_calls(monkeypatch, flags)
    images = tf.constant(np.random.default_rng(0).normal(size=shape).astype("float32"))
    arguments = dict(filters=128, kernel_size=kernel_side, strides=strides, dilation_rate=dilation, padding="same")
    ours, _ = _convolve(unet.Conv2D(**arguments), images)
    assert bool(calls) == by_winograd
    exact, _ = _convolve(keras.layers.Conv2D(**arguments), images)
    _assert_same_results(ours, exact, tolerance=2e-5)


@pytest.mark.parametrize(
    "shape, filters, by_winograd",
    [
        ((64, 4, 4, 512), 128, True),  # the 32 px preset's 4x4 -> 8x8 block at batch 64
        ((1, 32, 32, 128), 128, True),  # the pix2pix decoder's 32x32 -> 64x64 block at batch 1
        ((1, 16, 16, 256), 128, False),  # 16 output blocks: too few
        ((64, 2, 2, 256), 128, False),  # a 2x2 input in each 4x4 block: more multiplications
        ((64, 4, 4, 512), 32, False),  # 32 output channels: too few
    ],
)
def test_wide_float32_transposed_convolutions_go_through_winograd_and_compute_what_keras_computes(
    monkeypatch, shape, filters, by_winograd
):
    calls = _winograd_calls(monkeypatch, "avx2")
    images = tf.constant(np.random.default_rng(0).normal(size=shape).astype("float32"))
    ours, _ = _convolve(unet.Conv2DTranspose(filters, 4, strides=2, padding="same"), images)
    assert bool(calls) == by_winograd
    exact, _ = _convolve(keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="same"), images)
    _assert_same_results(ours, exact, tolerance=2e-5)


_STRIDED = dict(filters=128, kernel_size=4, strides=2, padding="same")
_DILATED = dict(filters=128, kernel_size=3, dilation_rate=2, padding="same")


@pytest.mark.parametrize(
    "transposed, arguments, shape, by_winograd",
    [
        (False, _STRIDED, (64, 16, 16, 128), True),  # 256 output blocks
        (False, _STRIDED, (64, 8, 8, 128), False),  # 64: enough in a training step, too few for a forward pass
        (False, _STRIDED, (64, 4, 4, 128), False),  # 2x2 outputs in 4x4 blocks
        (False, _DILATED, (4, 32, 32, 128), True),
        (False, _DILATED, (4, 32, 31, 128), False),  # an odd side: no 2x2 interleaved grids
        (False, dict(filters=128, kernel_size=4, padding="valid"), (1, 3, 40, 128), False),  # an empty output
        (True, _STRIDED, (4, 32, 32, 128), True),
        (True, _STRIDED, (1, 32, 32, 128), False),
    ],
)
def test_layers_traced_for_any_size_choose_winograd_by_the_size_they_run_at(
    monkeypatch, transposed, arguments, shape, by_winograd
):
    """An export's graphs are traced with sides unknown; within winograd_at_any_size each layer
    decides when run, by the size it gets (WINOGRAD_TILES_WHEN_RUN blocks at least), and
    computes what Keras's does."""
    monkeypatch.setattr(unet, "cpu_flags", lambda: frozenset({"avx2"}))
    classes = [unet.Conv2DTranspose, keras.layers.Conv2DTranspose] if transposed else [unet.Conv2D, keras.layers.Conv2D]
    ours, exact = (layer_class(**arguments) for layer_class in classes)
    images = tf.constant(np.random.default_rng(0).normal(size=shape).astype("float32"))
    for layer in (ours, exact):
        layer.build((None, None, None, shape[-1]))
    ours.kernel.assign(np.random.default_rng(1).normal(0.0, 0.2, ours.kernel.shape))
    exact.set_weights(ours.get_weights())
    any_size = tf.TensorSpec([None, None, None, shape[-1]])
    outside = []  # the default export's: oneDNN's convolution, decided when traced
    tf.function(lambda x: outside.append(unet._by_winograd(ours, x)) or x).get_concrete_function(any_size)
    assert outside == [False]
    with unet.winograd_at_any_size():
        route = tf.function(lambda x: tf.convert_to_tensor(unet._by_winograd(ours, x))).get_concrete_function(any_size)
        forward = tf.function(lambda x: ours(x)).get_concrete_function(any_size)
    assert bool(route(images)) == by_winograd
    # both ways in the graph, the input alone switched between them (the kernel stays a constant once frozen);
    # a transposed layer's oneDNN way switches it once more, between its own two (`_transpose`)
    assert [node.op for node in _graph_nodes(forward)].count("Switch") == (2 if transposed else 1)
    if arguments["padding"] == "valid" and min(shape[1:3]) < arguments["kernel_size"]:
        return  # an empty output, which TensorFlow's convolution gives as a row of uninitialised memory
    expected = exact(images).numpy()
    outputs = forward(images).numpy()
    assert outputs.shape == expected.shape
    np.testing.assert_allclose(outputs, expected, atol=2e-5 * np.abs(expected).max())


@pytest.mark.parametrize("policy", ["mixed_bfloat16"], indirect=True)
def test_bf16_convolutions_keep_onednn_s(monkeypatch, policy):
    calls = _winograd_calls(monkeypatch, "avx2")
    images = tf.constant(np.random.default_rng(0).normal(size=(64, 8, 8, 128)).astype("float32"))
    outputs, _ = _convolve(unet.Conv2D(128, 4, strides=2, padding="same"), images)
    assert outputs[0].shape == (64, 4, 4, 128) and not calls
