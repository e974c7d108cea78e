"""Files the ONNX engine refuses, each with a message that says what is allowed: not
ONNX at all, weights in external data files (paths!), opsets and operators it does not
know, free sizes other than the batch, inputs it cannot feed, files too large, and
models ONNX Runtime cannot run. Nothing of them is ever run or followed."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeai.pruning import PruningError
from edgeai.pruning.onnx_engine import loading
from tests.pruning.onnx_engine.conftest import Net


def small(opset: int = 17, **kwargs) -> Net:
    net = Net(opset=opset, **kwargs)
    net.out = net.head(net.conv(net.x, 3, 8, name="a"), 8)
    return net


def refused(prune_onnx, path, *fragments):
    with pytest.raises(PruningError) as caught:
        prune_onnx(path, 0.5)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("content", [
    b"not a model at all\n", b"\x89HDF\r\n\x1a\n" + b"\0" * 200, os.urandom(4096),
    b"PK\x03\x04" + b"\0" * 100,
])
def test_a_file_that_is_not_onnx(tmp_path, prune_onnx, content):
    path = tmp_path / "net.onnx"
    path.write_bytes(content)
    refused(prune_onnx, path, "net.onnx is not an ONNX model", "onnx.save or torch.onnx.export")


def test_external_data_is_refused_without_opening_it(tmp_path, prune_onnx):
    """Weights saved beside the model (data_location EXTERNAL, a path inside the file):
    refused when the model is read, before any path it names is opened; the data file's
    absence makes no difference, nor would /etc/passwd as its location."""
    net = small()
    model = net.model(net.out)
    onnx.save(model, tmp_path / "net.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    (tmp_path / "weights.bin").unlink()
    refused(prune_onnx, tmp_path / "net.onnx", "keeps its weights in external data files",
            "save_as_external_data=False")
    hostile = onnx.load(tmp_path / "net.onnx", load_external_data=False)
    for init in hostile.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "/etc/passwd"
    onnx.save(hostile, tmp_path / "hostile.onnx")
    refused(prune_onnx, tmp_path / "hostile.onnx", "external data files")


@pytest.mark.parametrize("opset", [9, 27])
def test_an_opset_outside_the_supported_range(tmp_path, prune_onnx, opset):
    net = small()
    model = net.model(net.out)
    model.opset_import[0].version = opset
    path = tmp_path / "net.onnx"
    onnx.save(model, path)
    refused(prune_onnx, path, f"uses ONNX opset {opset}; opsets 11 to 26 are pruned here",
            "convert_version")


def test_the_newest_supported_opset_runs_in_onnx_runtime():
    """MAX_OPSET is what ONNX Runtime runs: if an upgrade changes that, this fails."""
    net = small(opset=loading.MAX_OPSET)
    from edgeai.pruning.onnx_engine.runtime import make_session

    make_session(net.model(net.out).SerializeToString())


def test_operators_outside_the_standard_domain(tmp_path, prune_onnx):
    net = small()
    net.nodes.append(helper.make_node("FusedGelu", [net.out], ["extra"], domain="com.microsoft",
                                      name="gelu"))
    graph = helper.make_graph(net.nodes, "net", net.inputs,
                              [helper.make_tensor_value_info("extra", TensorProto.FLOAT, None)],
                              net.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
    path = tmp_path / "net.onnx"
    onnx.save(model, path)
    refused(prune_onnx, path, "operators outside the standard ONNX domain",
            "com.microsoft.FusedGelu")


def test_an_operator_onnx_does_not_know(tmp_path, prune_onnx):
    net = small()
    model = net.model(net.out)
    model.graph.node[1].op_type = "Reluu"
    path = tmp_path / "net.onnx"
    onnx.save(model, path)
    refused(prune_onnx, path, "is not a valid ONNX model", "Reluu")


def test_model_local_functions_are_refused(tmp_path, prune_onnx):
    net = small()
    model = net.model(net.out)
    function = helper.make_function("local", "Twice", ["x"], ["y"],
                                    [helper.make_node("Add", ["x", "x"], ["y"])],
                                    [helper.make_opsetid("", 17)])
    model.functions.append(function)
    path = tmp_path / "net.onnx"
    onnx.save(model, path)
    refused(prune_onnx, path, "defines its own functions (local.Twice)", "inline_local_functions")


def test_free_sizes_other_than_the_batch(tmp_path, prune_onnx):
    net = Net(input_shape=("batch", 3, "height", "width"))
    out = net.head(net.conv(net.x, 3, 8, name="a"), 8)
    graph = helper.make_graph(net.nodes, "net", net.inputs,
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT,
                                                             ["batch", 4])], net.initializers)
    path = tmp_path / "net.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), path)
    refused(prune_onnx, path, "input 'x' of net.onnx has a free size at axis 2 (height)",
            "only the first axis (the batch) may be free")


def test_inputs_the_engine_cannot_feed(tmp_path, prune_onnx):
    text = helper.make_tensor_value_info("words", TensorProto.STRING, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Identity", ["words"], ["same"])], "net",
                              [text], [helper.make_tensor_value_info("same", TensorProto.STRING,
                                                                     ["batch", 4])])
    path = tmp_path / "net.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), path)
    refused(prune_onnx, path, "input 'words' of net.onnx has element type STRING",
            "allowed: float32")


def test_a_file_over_the_size_bound_is_refused_before_it_is_read(tmp_path, prune_onnx):
    """A sparse file of 1 GB + 1 byte: refused on its size, never read (a 2 GB protobuf
    is more than protobuf can hold; the API's upload limit comes first anyway)."""
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as handle:
        handle.truncate(loading.MAX_MODEL_BYTES + 1)
    refused(prune_onnx, path, "huge.onnx is 1024 MB; ONNX files up to 1024 MB are pruned here")


def test_a_model_onnx_runtime_cannot_run(tmp_path, prune_onnx):
    """Valid to the checker, wrong in its weights' shapes: the runtime's reason."""
    net = Net()
    out = net.node("Conv", [net.x, net.weight(8, 5, 3, 3)], name="a")
    path = tmp_path / "net.onnx"
    graph = helper.make_graph(net.nodes, "net", net.inputs,
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              net.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model.graph.output[0].type.tensor_type.shape.dim.add().dim_param = "batch"
    onnx.save(model, path)
    refused(prune_onnx, path, "ONNX Runtime cannot run net.onnx on a batch of its input shape")


def test_a_model_with_nothing_prunable_says_why(tmp_path, prune_onnx):
    net = Net()
    out = net.node("Relu", [net.node("Softmax", [net.x], axis=1)])
    refused(prune_onnx, net.save(tmp_path, out), "Nothing prunable in this model")


def test_a_fixed_batch_model_is_pruned_and_checked_at_its_batch(tmp_path, prune_onnx):
    """A model exported with batch 1 is not refused: it is verified at batch 1, and the
    dataset's samples run through it one at a time."""
    net = small(input_shape=(1, 3, 8, 8))
    path = net.save(tmp_path, net.out)
    data = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.normal(size=(30, 3, 8, 8)).astype(np.float32),
             y=rng.integers(0, 8, 30))
    result, _ = prune_onnx(path, 0.5, inputs={"dataset": data}, measure=True, batch_size=4)
    assert result.report["verification"]["exactness"]["passed"] is True
    assert result.report["evaluation"]["samples"] == 6
    speed = result.report["speed"]  # timed at its own batch; another one cannot be
    assert [(row["runtime"], row["batch"]) for row in speed["latencies"]] == [("onnxruntime", 1)]
    assert "onnxruntime at batch 4: PruningError: the model's batch is fixed at 1" in \
        speed["detail"]
