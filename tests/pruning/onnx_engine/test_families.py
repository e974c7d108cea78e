"""Real exports pruned: ResNet-18, MobileNetV2 and EfficientNet-style networks from
``torch.onnx.export`` and a Keras CNN through tf2onnx.

Each prunes exactly (the job's proof, and the tests' own comparison in ONNX Runtime),
shrinks, keeps what a user relies on (opset, input and node names, a free batch), and
is timed in ONNX Runtime. A network whose lowest-L1 filters are zero gives the same
outputs after pruning, with the kept filters untouched. (Speed at realistic sizes is
in the bench: ``python -m bench.deploy onnx``.)
"""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from tests.pruning.onnx_engine.conftest import layers, run_onnx
from tests.pruning.onnx_engine.models import (
    FAMILIES,
    export_torch,
    family,
    keras_cnn,
    randomise_batchnorm,
)

NAMES = (*FAMILIES, "keras_cnn")


def export(name: str, folder, zero=None):
    """The network ``name`` exported into ``folder``; ``zero(model)`` adjusts it first."""
    path = folder / f"{name}.onnx"
    if name == "keras_cnn":
        _, model = keras_cnn(folder / "unused.onnx")
        if zero is not None:
            zero(model)
        from edgeai.pruning.keras_engine.deploy import to_onnx

        path.write_bytes(to_onnx(model))
        return path
    if zero is None:
        return family(name, path)
    torch.manual_seed(0)
    model = randomise_batchnorm(FAMILIES[name]())
    with torch.no_grad():
        zero(model)
    return export_torch(model, (3, 32, 32), path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("families")
    return {name: export(name, folder) for name in NAMES}


def sample(path, batch: int, seed: int = 3) -> np.ndarray:
    shape = [d.dim_value for d in onnx.load(path).graph.input[0].type.tensor_type.shape.dim][1:]
    return np.random.default_rng(seed).normal(size=(batch, *shape)).astype(np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_a_real_export_prunes_exactly_and_shrinks(exported, prune_onnx, name):
    path = exported[name]
    result, out = prune_onnx(path, 0.5, round_to=8, measure=True)
    report = result.report
    for check in report["verification"].values():
        assert check["passed"] is True and check["max_rel_diff"] <= 1e-4, check
    assert report["params_after"] < 0.6 * report["params_before"]
    assert report["macs_after"] < 0.6 * report["macs_before"]
    assert report["file_size_after"] < report["file_size_before"]
    assert not [row for row in report["layers"] if row["status"] == "unsupported"]
    pruned = [row for row in report["layers"] if row["status"] == "pruned"]
    assert pruned and all(row["channels_after"] % 8 == 0 for row in pruned)
    (latency,) = report["speed"]["latencies"]
    assert latency["runtime"] == "onnxruntime" and latency["batch"] == 1
    assert latency["before_ms"] > 0 and latency["after_ms"] > 0
    assert report["speed"]["threads"] == 1
    # What a user relies on: same opset, inputs, outputs and layer names; a free batch.
    before, after = onnx.load(path), onnx.load(out / result.artifact)
    assert after.opset_import == before.opset_import
    assert [i.name for i in after.graph.input] == [i.name for i in before.graph.input]
    assert [o.name for o in after.graph.output] == [o.name for o in before.graph.output]
    layer_ops = ("Conv", "Gemm", "MatMul")
    assert [n.name for n in after.graph.node if n.op_type in layer_ops] == \
        [n.name for n in before.graph.node if n.op_type in layer_ops]
    (got,) = run_onnx(out / result.artifact, sample(path, 3))
    assert got.shape[0] == 3 and np.isfinite(got).all()


def _zero_resnet(model):
    """layer1.0's inner channels 1, 6, 9, 14: conv1 filters and their BatchNorm shift."""
    _zero_conv_bn(model.layer1[0].conv1, model.layer1[0].bn1, [1, 6, 9, 14])


def _zero_mobilenet(model):
    """The first expanding block: expand and depthwise filters of 6 hidden channels."""
    block = model.features[4].conv  # InvertedResidual(8 -> 16, expand 6): 48 hidden
    channels = [0, 5, 11, 17, 30, 47][:6]
    for conv, norm in ((block[0], block[1]), (block[3], block[4])):
        _zero_conv_bn(conv, norm, channels)


def _zero_efficientnet(model):
    """An MBConv's hidden channels: expand and depthwise filters, and the squeeze-excite
    expansion that scales them (its channels are tied to theirs)."""
    block = model.blocks[1]
    channels = [2, 7, 20, 33, 40, 47]
    _zero_conv_bn(block.expand[0], block.expand[1], channels)
    _zero_conv_bn(block.depthwise[0], block.depthwise[1], channels)
    block.se.expand.weight[channels] = 0
    block.se.expand.bias[channels] = 0


def _zero_keras(model):
    """The stem group (stem conv and the residual branch added to it, through BatchNorm
    and the depthwise convolution): channels 3, 8, 12, 15 are zero everywhere."""
    channels = [3, 8, 12, 15]
    for name in ("stem", "block_b", "depthwise"):
        layer = model.get_layer(name)
        weights = layer.get_weights()
        if name == "depthwise":  # kernel [h, w, channels, multiplier]
            weights[0][:, :, channels] = 0
        else:
            weights[0][..., channels] = 0
        weights[1][channels] = 0
        layer.set_weights(weights)
    norm = next(layer for layer in model.layers if "batch_normalization" in layer.name)
    gamma, beta, mean, var = norm.get_weights()
    beta[channels], mean[channels] = 0, 0
    norm.set_weights([gamma, beta, mean, var])


def _zero_conv_bn(conv, norm, channels):
    conv.weight[channels] = 0
    norm.bias[channels] = 0
    norm.running_mean[channels] = 0


ZEROED = {
    "resnet18": (_zero_resnet, "/layer1/layer1.0/conv1/Conv", 16, 4),
    "mobilenet_v2": (_zero_mobilenet, "/features/features.4/conv/conv.0/Conv", 48, 6),
    "efficientnet": (_zero_efficientnet, "/blocks/blocks.1/expand/expand.0/Conv", 48, 6),
    "keras_cnn": (_zero_keras, "stem", 16, 4),
}


@pytest.mark.parametrize("name", NAMES)
def test_zeroed_filters_go_first_and_change_nothing(tmp_path, prune_onnx, name):
    """The group's zero channels are the lowest-L1; a plan prunes exactly that many, and
    the pruned file gives the original file's outputs in ONNX Runtime (not only the
    masked original's), its other filters untouched."""
    zero, group, width, count = ZEROED[name]
    path = export(name, tmp_path, zero)
    original = onnx.load(path)
    if name == "keras_cnn":  # tf2onnx names the Conv it fused with BatchNorm "Conv__N"
        group = next(n.name for n in original.graph.node
                     if n.op_type == "Conv" and "stem" in n.input[1])
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({group: count / width}))
    result, out = prune_onnx(path, 0.0, inputs={"plan": plan})
    assert layers(result)[group]["channels_after"] == width - count
    x = sample(path, 4)
    (want,), (got,) = run_onnx(path, x), run_onnx(out / result.artifact, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    node = next(n for n in original.graph.node if n.name == group)
    pruned = onnx.load(out / result.artifact)
    kept_weights = _constant(pruned, next(n for n in pruned.graph.node if n.name == group).input[1])
    weights = _constant(original, node.input[1])
    nonzero = [c for c in range(width) if np.abs(weights[c]).sum() > 0]
    assert len(nonzero) == width - count
    np.testing.assert_array_equal(kept_weights, weights[nonzero])


def _constant(model, name):
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    producer = next(n for n in model.graph.node if name in n.output)
    return _constant(model, producer.input[0])


def test_ommitted_names_a_node_a_folder_or_a_weight(exported, prune_onnx, tmp_path):
    """ommitted takes a node's name, a folder of them (/layer1 of /layer1/...), or the
    name of a weight initializer; the groups they carry keep their channels."""
    path = exported["resnet18"]
    result, _ = prune_onnx(path, 0.5, omitted=("/layer2",))
    rows = layers(result)
    assert all(row["status"] == "omitted" for name, row in rows.items()
               if name.startswith("/layer2/"))
    assert rows["/layer3/layer3.0/conv1/Conv"]["status"] == "pruned"
    result, _ = prune_onnx(path, 0.5, omitted=("/layer3/layer3.1/conv1/Conv",))
    rows = layers(result)
    assert rows["/layer3/layer3.1/conv1/Conv"]["status"] == "omitted"
    assert rows["/layer3/layer3.0/conv1/Conv"]["status"] == "pruned"
    model = onnx.load(path)
    weight = next(n.input[1] for n in model.graph.node
                  if n.name == "/layer4/layer4.0/conv1/Conv")
    result, _ = prune_onnx(path, 0.5, omitted=(weight,))
    assert layers(result)["/layer4/layer4.0/conv1/Conv"]["status"] == "omitted"
    assert math.isclose(result.report["percent"], 0.5)
