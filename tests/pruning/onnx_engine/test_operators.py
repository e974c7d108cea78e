"""Channel dependencies read from the ONNX graph, operator by operator.

Each case is a small graph written with ``onnx.helper`` and pruned at 0.5 by the real
engine; the job's own proof (exactness against the masked original, round trip) runs
on every one, and the tests check what the rewrite did to the file: widths, sliced
weights, rewritten sizes, and what was kept whole and why.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeai.pruning.onnx_engine.graph import attribute
from tests.pruning.onnx_engine.conftest import Net, layers, run_onnx


def pruned_model(out, result) -> onnx.ModelProto:
    return onnx.load(out / result.artifact)


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def assert_runs_like(original_path, out, result, *arrays):
    """The pruned file runs in ONNX Runtime and gives outputs of the original's shapes."""
    before = run_onnx(original_path, *arrays)
    after = run_onnx(out / result.artifact, *arrays)
    assert [a.shape for a in after] == [b.shape for b in before]
    check = result.report["verification"]["exactness"]
    assert check["passed"] is True and check["max_rel_diff"] <= 1e-4


X = np.random.default_rng(5).normal(size=(2, 3, 8, 8)).astype(np.float32)


def test_concat_offsets_map_back_to_each_producer(tmp_path, prune_onnx):
    net = Net()
    a, b = net.conv(net.x, 3, 8, name="a"), net.conv(net.x, 3, 6, name="b")
    joined = net.node("Concat", [a, b], axis=1)
    path = net.save(tmp_path, net.head(net.conv(joined, 14, 6, name="d"), 6))
    result, out = prune_onnx(path, 0.5)
    rows = layers(result)
    assert [rows[n]["channels_after"] for n in ("a", "b", "d")] == [4, 3, 3]
    model = pruned_model(out, result)
    assert constants(model)[node(model, "d").input[1]].shape == (3, 7, 3, 3)
    assert_runs_like(path, out, result, X)


@pytest.mark.parametrize("opset", [17, 18])
def test_split_sizes_follow_the_channels(tmp_path, prune_onnx, opset):
    """Split on the channels: each part keeps its own channels; explicit sizes are
    rewritten, an equal split (opset 18's num_outputs) gets explicit sizes."""
    net = Net(opset=opset)
    a = net.conv(net.x, 3, 12, name="a")
    if opset == 17:
        parts = net.node("Split", [a, net.const(np.array([4, 8]))], outputs=2, name="split",
                         axis=1)
        widths = (4, 8)
    else:
        parts = net.node("Split", [a], outputs=2, name="split", axis=1, num_outputs=2)
        widths = (6, 6)
    p, q = net.conv(parts[0], widths[0], 6, name="p"), net.conv(parts[1], widths[1], 6, name="q")
    path = net.save(tmp_path, net.head(net.node("Add", [p, q]), 6))
    result, out = prune_onnx(path, 0.5)
    model = pruned_model(out, result)
    split = node(model, "split")
    sizes = constants(model)[split.input[1]].tolist()
    assert sum(sizes) == layers(result)["a"]["channels_after"] == 6
    assert attribute(split, "num_outputs") is None
    assert [constants(model)[node(model, n).input[1]].shape[1] for n in ("p", "q")] == sizes
    assert_runs_like(path, out, result, X)


def test_a_split_part_that_would_lose_every_channel_keeps_its_group_whole(tmp_path,
                                                                         prune_onnx):
    """The lowest-L1 channels all in one part of a Split: pruning them would leave a
    zero-channel tensor, so the group stays whole and the report says why."""
    net = Net()
    weights = net.rng.normal(size=(12, 3, 3, 3)).astype(np.float32)
    weights[:4] *= 0.01  # part 0 holds the four weakest filters
    a = net.node("Relu", [net.node("Conv", [net.x, net.const(weights)], name="a",
                                   pads=[1, 1, 1, 1])])
    parts = net.node("Split", [a, net.const(np.array([4, 8]))], outputs=2, name="split", axis=1)
    p, q = net.conv(parts[0], 4, 6, name="p"), net.conv(parts[1], 8, 6, name="q")
    path = net.save(tmp_path, net.head(net.node("Add", [p, q]), 6))
    result, out = prune_onnx(path, 0.4)
    rows = layers(result)
    assert rows["a"]["status"] == "unsupported" and rows["a"]["channels_after"] == 12
    assert rows["a"]["reason"] == "could not be rewired: it would empty a part of Split split"
    assert rows["p"]["channels_after"] == 4  # the other groups are still pruned
    assert any("left whole (it would empty a part of Split split)" in warning
               for warning in result.report["warnings"])
    assert_runs_like(path, out, result, X)


def test_nhwc_transposes_and_a_constant_flatten(tmp_path, prune_onnx):
    """tf2onnx's pattern: an NHWC input transposed to NCHW for the Conv and back before a
    Flatten into a dense MatMul; features are channel-last, and the Reshape's constant
    target is rewritten."""
    net = Net(input_shape=("batch", 8, 8, 3))
    a = net.conv(net.node("Transpose", [net.x], perm=[0, 3, 1, 2]), 3, 8, name="a")
    flat = net.node("Reshape", [net.node("Transpose", [a], perm=[0, 2, 3, 1]),
                                net.const(np.array([-1, 512]), name="target")], name="flatten")
    hidden = net.node("Relu", [net.node("Add", [net.node("MatMul", [flat, net.weight(512, 16)],
                                                         name="dense1"), net.weight(16)])])
    path = net.save(tmp_path, net.node("MatMul", [hidden, net.weight(16, 4)], name="dense2"))
    result, out = prune_onnx(path, 0.5)
    rows = layers(result)
    assert rows["a"]["channels_after"] == 4 and rows["dense1"]["channels_after"] == 8
    model = pruned_model(out, result)
    assert constants(model)["target"].tolist() == [-1, 256]
    weights = constants(model)[node(model, "dense1").input[1]]
    assert weights.shape == (256, 8)
    # Channel-last features: feature f is channel f % 8. The lowest-L1 filters went.
    original = constants(onnx.load(path))
    kept_channels = _kept_by_l1(original[node(model, "a").input[1]], axis=0, keep=4)
    kept_units = _kept_by_l1(original[node(model, "dense1").input[1]], axis=1, keep=8)
    rows_kept = [f for f in range(512) if f % 8 in kept_channels]
    np.testing.assert_array_equal(weights, original[node(model, "dense1").input[1]]
                                  [np.ix_(rows_kept, kept_units)])
    assert_runs_like(path, out, result, X.transpose(0, 2, 3, 1).copy())


def _kept_by_l1(weights: np.ndarray, axis: int, keep: int) -> list[int]:
    """The ``keep`` outputs with the largest L1 norm, in order (ties go by index)."""
    l1 = np.abs(np.moveaxis(weights, axis, 0)).reshape(weights.shape[axis], -1).sum(axis=1)
    order = sorted(range(len(l1)), key=lambda i: (float(l1[i]), i))
    return sorted(order[len(l1) - keep:])


def test_a_flatten_computed_from_shape_follows_by_itself(tmp_path, prune_onnx):
    """torch's x.view(x.size(0), -1): Shape -> Gather -> Unsqueeze -> Concat(-1) ->
    Reshape; the target is computed at run time, so the file keeps it as it is."""
    net = Net()
    a = net.conv(net.x, 3, 8, name="a")
    batch = net.node("Gather", [net.node("Shape", [a]), net.const(np.array(0))], axis=0)
    target = net.node("Concat", [net.node("Unsqueeze", [batch, net.const(np.array([0]))]),
                                 net.const(np.array([-1]))], axis=0)
    path = net.save(tmp_path, net.gemm(net.node("Reshape", [a, target]), 512, 4, name="fc"))
    result, out = prune_onnx(path, 0.5)
    assert layers(result)["a"]["channels_after"] == 4
    model = pruned_model(out, result)
    assert constants(model)[node(model, "fc").input[1]].shape == (256, 4)
    assert_runs_like(path, out, result, X)


def test_a_size_read_from_the_channel_axis(tmp_path, prune_onnx):
    """x.view(b, x.size(1), -1) follows the channels by itself; the same size put on
    another axis cannot, and keeps them whole."""
    net = Net()
    a = net.conv(net.x, 3, 8, name="a")
    shape = net.node("Shape", [a])
    dims = [net.node("Gather", [shape, net.const(np.array([k]))], axis=0) for k in (0, 1)]
    target = net.node("Concat", [dims[0], dims[1], net.const(np.array([-1]))], axis=0)
    pooled = net.node("ReduceMean", [net.node("Reshape", [a, target])], axes=[2], keepdims=0)
    path = net.save(tmp_path, net.gemm(pooled, 8, 4, name="fc"))
    result, out = prune_onnx(path, 0.5)
    assert layers(result)["a"]["channels_after"] == 4
    assert_runs_like(path, out, result, X)

    net = Net()
    a = net.conv(net.x, 3, 8, name="a")
    b = net.conv(a, 8, 8, name="b")
    shape = net.node("Shape", [b])
    dims = [net.node("Gather", [shape, net.const(np.array([k]))], axis=0) for k in (0, 1)]
    moved = net.node("Reshape", [b, net.node("Concat", [dims[0], net.const(np.array([-1])),
                                                         dims[1]], axis=0)])
    path = net.save(tmp_path, net.gemm(net.node("ReduceMean", [moved], axes=[1], keepdims=0),
                                       8, 4, name="fc"))
    result, _ = prune_onnx(path, 0.5)
    rows = layers(result)
    assert rows["b"]["status"] == "unsupported"
    assert "uses a channel count for another axis" in rows["b"]["reason"]
    assert rows["a"]["channels_after"] == 4


def test_resize_with_scales_and_with_sizes(tmp_path, prune_onnx):
    net = Net()
    a = net.conv(net.x, 3, 8, name="a")
    up = net.node("Resize", [a, "", net.const(np.array([1, 1, 2, 2], np.float32))],
                  mode="nearest")
    path = net.save(tmp_path, net.head(net.conv(up, 8, 6, name="b"), 6))
    result, out = prune_onnx(path, 0.5)
    assert layers(result)["a"]["channels_after"] == 4
    assert_runs_like(path, out, result, X)

    net = Net(input_shape=(1, 3, 8, 8))  # a fixed batch: the sizes can be constants
    a = net.conv(net.x, 3, 8, name="a")
    up = net.node("Resize", [a, "", "", net.const(np.array([1, 8, 16, 16]), name="sizes")],
                  mode="nearest")
    path = net.save(tmp_path, net.head(net.conv(up, 8, 6, name="b"), 6))
    result, out = prune_onnx(path, 0.5)
    assert constants(pruned_model(out, result))["sizes"].tolist() == [1, 4, 16, 16]
    assert_runs_like(path, out, result, X[:1])


def test_squeeze_unsqueeze_and_a_broadcast_multiply_tie_channels(tmp_path, prune_onnx):
    """A squeeze-and-excitation block: the excitation's channels multiply the
    convolution's, one to one, so both producers are one group."""
    net = Net()
    a = net.conv(net.x, 3, 8, name="a")
    squeezed = net.node("Squeeze", [net.node("GlobalAveragePool", [a]),
                                    net.const(np.array([2, 3]))])
    hidden = net.node("Relu", [net.gemm(squeezed, 8, 4, name="se1")])
    gate = net.node("Unsqueeze", [net.node("Sigmoid", [net.gemm(hidden, 4, 8, name="se2")]),
                                  net.const(np.array([2, 3]))])
    scaled = net.node("Mul", [a, gate])
    path = net.save(tmp_path, net.head(net.conv(scaled, 8, 6, name="b"), 6))
    result, out = prune_onnx(path, 0.5)
    rows = layers(result)
    assert rows["a"]["channels_after"] == rows["se2"]["channels_after"] == 4
    assert rows["se1"]["channels_after"] == 2
    # One group, scored by the summed L1 of both producers' filters: a's and se2's.
    before, model = onnx.load(path), pruned_model(out, result)
    original = constants(before)
    conv, se1, se2 = (original[node(before, name).input[1]] for name in ("a", "se1", "se2"))
    scores = np.abs(conv).reshape(8, -1).sum(axis=1) + np.abs(se2).sum(axis=0)
    kept = sorted(sorted(range(8), key=lambda i: (float(scores[i]), i))[4:])
    np.testing.assert_array_equal(constants(model)[node(model, "se2").input[1]],
                                  se2[np.ix_(_kept_by_l1(se1, axis=1, keep=2), kept)])
    assert_runs_like(path, out, result, X)


def test_grouped_and_depthwise_convolutions(tmp_path, prune_onnx):
    """A grouped Conv keeps its groups, each losing the same positions; a depthwise one
    (with a channel multiplier) follows its input and its group attribute shrinks."""
    net = Net()
    a = net.conv(net.x, 3, 8, name="a")
    grouped = net.conv(a, 8, 8, group=2, name="g")
    depthwise = net.conv(grouped, 8, 16, group=8, name="dw")
    path = net.save(tmp_path, net.head(net.conv(depthwise, 16, 6, name="b"), 6))
    result, out = prune_onnx(path, 0.5)
    rows = layers(result)
    assert [rows[n]["channels_after"] for n in ("a", "g", "dw")] == [4, 4, 8]
    assert rows["dw"]["reason"] == "follows its input channels (depthwise)"
    model = pruned_model(out, result)
    assert constants(model)[node(model, "g").input[1]].shape == (4, 2, 3, 3)
    assert attribute(node(model, "g"), "group") == 2
    assert attribute(node(model, "dw"), "group") == 4
    assert_runs_like(path, out, result, X)


def test_conv_transpose_batchnorm_pad_instance_norm_and_gemm(tmp_path, prune_onnx):
    net = Net()
    a = net.conv(net.x, 3, 8, name="a", relu=False)
    scale = net.const(np.linspace(0.5, 1.5, 8, dtype=np.float32))
    variance = net.const(np.linspace(0.5, 2, 8, dtype=np.float32))
    normed = net.node("BatchNormalization", [a, scale, net.weight(8), net.weight(8), variance])
    padded = net.node("Pad", [normed, net.const(np.array([0, 0, 1, 1, 0, 0, 1, 1]))])
    inorm = net.node("InstanceNormalization", [padded, net.weight(8), net.weight(8)])
    up = net.node("ConvTranspose", [net.node("Relu", [inorm]), net.weight(8, 6, 2, 2),
                                    net.weight(6)], name="up", strides=[2, 2])
    pooled = net.node("Flatten", [net.node("GlobalAveragePool", [net.node("Relu", [up])])])
    hidden = net.node("Relu", [net.gemm(pooled, 6, 8, name="fc1", trans_b=1)])
    path = net.save(tmp_path, net.gemm(hidden, 8, 4, name="fc"))
    result, out = prune_onnx(path, 0.5)
    rows = layers(result)
    assert [rows[n]["channels_after"] for n in ("a", "up", "fc1")] == [4, 3, 4]
    model = pruned_model(out, result)
    assert constants(model)[node(model, "up").input[1]].shape == (4, 3, 2, 2)
    assert constants(model)[node(model, "fc1").input[1]].shape == (4, 3)  # transB: [out, in]
    assert_runs_like(path, out, result, X)


def _pick(net, a):
    return net.node("Slice", [a, net.const(np.array([0])), net.const(np.array([4])),
                              net.const(np.array([1]))]), 4


@pytest.mark.parametrize("build, reason", [
    (_pick, "Slice picks some of the channels"),
    (lambda net, a: (net.node("Softmax", [a], axis=1), 8), "Softmax normalises over the channels"),
    (lambda net, a: (net.node("LRN", [a], size=3), 8), "LRN is not followed by the pruner"),
    (lambda net, a: (net.node("ReduceSum", [a, net.const(np.array([1]))]), 1),
     "ReduceSum reduces over the channels"),
    (lambda net, a: (net.node("Gather", [a, net.const(np.array([0, 1, 2]))], axis=1), 3),
     "Gather picks some of the channels"),
    (lambda net, a: (net.node("DepthToSpace", [a], blocksize=2), 2),
     "DepthToSpace is not followed by the pruner"),
])
def test_operations_that_pick_or_mix_channels_keep_them_whole(tmp_path, prune_onnx, build,
                                                               reason):
    """The producer's group is left whole with the reason; the rest is still pruned."""
    net = Net()
    a = net.conv(net.x, 3, 8, name="a")
    mixed, channels = build(net, a)
    path = net.save(tmp_path, net.head(net.conv(mixed, channels, 6, name="b"), 6))
    result, out = prune_onnx(path, 0.5)
    rows = layers(result)
    assert rows["a"]["status"] == "unsupported" and rows["a"]["channels_after"] == 8
    assert reason in rows["a"]["reason"]
    assert rows["b"]["status"] == "pruned" and rows["b"]["channels_after"] == 3
    assert_runs_like(path, out, result, X)


def test_channels_added_to_a_model_input_are_kept(tmp_path, prune_onnx):
    net = Net()
    a = net.conv(net.x, 3, 3, name="a", relu=False)
    path = net.save(tmp_path, net.head(net.conv(net.node("Add", [a, net.x]), 3, 6, name="b"), 6))
    result, _ = prune_onnx(path, 0.5)
    assert "Add combines it with x, which the pruner does not follow" in \
        layers(result)["a"]["reason"]


def test_a_model_output_is_the_reason_given_first(tmp_path, prune_onnx):
    """Channels that reach a Softmax output: the report says output, not Softmax."""
    net = Net()
    scores = net.head(net.conv(net.x, 3, 8, name="a"), 8, classes=5)
    result, _ = prune_onnx(net.save(tmp_path, net.node("Softmax", [scores], axis=1)), 0.5)
    assert layers(result)["fc"]["status"] == "output"
    assert layers(result)["fc"]["reason"] == "produces a model output"


def test_several_inputs_and_outputs(tmp_path, prune_onnx):
    """Two inputs (an image and side features concatenated after pooling) and two outputs:
    channels reaching an output stay, the others go."""
    net = Net()
    side = net.add_input("side", ("batch", 5))
    a = net.conv(net.x, 3, 8, name="a")
    pooled = net.node("Flatten", [net.node("GlobalAveragePool", [a])])
    joined = net.node("Concat", [pooled, side], axis=1)
    hidden = net.node("Relu", [net.gemm(joined, 13, 6, name="fc1")])
    path = net.save(tmp_path, net.gemm(hidden, 6, 4, name="fc"), net.conv(a, 8, 6, name="b"))
    result, out = prune_onnx(path, 0.5)
    rows = layers(result)
    assert rows["a"]["channels_after"] == 4 and rows["fc1"]["channels_after"] == 3
    assert rows["b"]["status"] == rows["fc"]["status"] == "output"
    features = np.random.default_rng(1).normal(size=(2, 5)).astype(np.float32)
    assert_runs_like(path, out, result, X, features)


def test_constants_are_sliced_and_shared_ones_copied(tmp_path, prune_onnx):
    """Broadcast constants follow the channels; one shared by two groups that lose
    different channels is copied for each, and the original dropped."""
    net = Net()
    shared = net.const(np.linspace(1, 2, 8, dtype=np.float32).reshape(8, 1, 1), name="shared")
    a = net.conv(net.x, 3, 8, name="a", relu=False)
    a = net.node("Mul", [net.node("Add", [a, net.weight(1, 8, 1, 1)]), shared])
    b = net.node("Mul", [net.conv(net.x, 3, 8, name="b", relu=False), shared])
    joined = net.node("Concat", [net.node("Relu", [a]), net.node("Relu", [b])], axis=1)
    path = net.save(tmp_path, net.head(net.conv(joined, 16, 6, name="c"), 6))
    result, out = prune_onnx(path, 0.5)
    names = set(constants(pruned_model(out, result)))
    assert "shared" not in names and {"shared_pruned", "shared_pruned2"} <= names
    assert_runs_like(path, out, result, X)
