"""Measurements of an ONNX model for the report: parameters, MACs, widths, a summary.

Parameters are the elements of the model's floating-point initializers (its weights;
integer constants such as shapes are not parameters). MACs follow the rule every
engine shares: a convolution counts its output elements x kernel size x input
channels per group (a transposed one: input elements x kernel size x output channels
per group), a Gemm or MatMul its output elements x the features it reads; the sizes
are those of a probe run at batch 1.
"""
from __future__ import annotations

import math

import numpy as np
import onnx

from edgeai.pruning.onnx_engine import runtime
from edgeai.pruning.onnx_engine.graph import GraphIndex, attribute
from edgeai.pruning.onnx_engine.loading import OnnxSource

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.BFLOAT16)
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def count_params(model: onnx.ModelProto) -> int:
    """Elements of the floating-point initializers."""
    return int(sum(math.prod(init.dims) for init in model.graph.initializer
                   if init.data_type in FLOAT_TYPES))


def _weight_shape(index: GraphIndex, node: onnx.NodeProto) -> tuple[int, ...] | None:
    if len(node.input) < 2 or not index.is_constant(node.input[1]):
        return None
    name = node.input[1]
    if name in index.initializers:
        return tuple(int(d) for d in index.initializers[name].dims)
    value = index.constant(name)
    return tuple(value.shape) if value is not None else None


def layer_widths(model: onnx.ModelProto) -> dict[str, int]:
    """Output channels of every Conv, ConvTranspose, Gemm and MatMul with constant
    weights, by node name (as the engine names nodes)."""
    index = GraphIndex(model)
    widths = {}
    for name, node in zip(index.names, index.nodes, strict=True):
        if node.op_type not in LAYER_OPS:
            continue
        shape = _weight_shape(index, node)
        if shape is None or len(shape) < 2:
            continue
        if node.op_type == "Conv":
            widths[name] = shape[0]
        elif node.op_type == "ConvTranspose":
            widths[name] = shape[1] * int(attribute(node, "group", 1))
        elif node.op_type == "Gemm":
            widths[name] = shape[0] if attribute(node, "transB", 0) else shape[1]
        elif len(shape) == 2:
            widths[name] = shape[1]
    return widths


def count_macs(model: onnx.ModelProto, source: OnnxSource,
               known: dict[str, tuple[int, ...]] | None = None) -> int:
    """Multiply-accumulates per sample (see the module docstring); ``known``: every
    tensor's shape at batch 1 where the caller has them (the original's probe)."""
    index = GraphIndex(model)
    layers = [node for node in index.nodes if node.op_type in LAYER_OPS]
    if not layers:
        return 0
    wanted = [node.output[0] for node in layers] + \
        [node.input[0] for node in layers if node.op_type in ("ConvTranspose", "MatMul")]
    batch = source.inputs[0].batch or 1
    if known is not None and all(name in known for name in wanted):
        shapes = dict(known)
    else:
        values = runtime.probe(model, source.example(1, seed=0), wanted)
        shapes = {name: tuple(np.shape(value)) for name, value in values.items()}
        del values
    total = 0
    for node in layers:
        weight = _weight_shape(index, node)
        out = math.prod(shapes[node.output[0]])
        if node.op_type == "Conv" and weight is not None:
            total += out * math.prod(weight[2:]) * weight[1]
        elif node.op_type == "ConvTranspose" and weight is not None:
            total += math.prod(shapes[node.input[0]]) * math.prod(weight[2:]) * weight[1]
        elif node.op_type == "Gemm" and weight is not None:
            total += out * (weight[1] if attribute(node, "transB", 0) else weight[0])
        elif node.op_type == "MatMul":
            total += out * int(shapes[node.input[0]][-1])
    return int(total // batch)


def summary_text(model: onnx.ModelProto, source: OnnxSource) -> str:
    """A plain-text table of the nodes with channels (what the status message shows)."""
    index = GraphIndex(model)
    widths = layer_widths(model)
    line = "-" * 92
    rows = [line, f"{'Node':<56} {'Op':<14} {'Channels':>8} {'Params':>10}", "=" * 92]
    for name, node in zip(index.names, index.nodes, strict=True):
        if name not in widths:
            continue
        params = sum(math.prod(index.initializers[t].dims) for t in node.input
                     if t in index.initializers
                     and index.initializers[t].data_type in FLOAT_TYPES)
        shown = name if len(name) <= 56 else "..." + name[-53:]
        rows.append(f"{shown:<56} {node.op_type:<14} {widths[name]:>8} {params:>10,}")
    inputs = ", ".join(f"{item.name} {[item.batch or 'batch', *item.sample_shape]}"
                       for item in source.inputs)
    rows += ["=" * 92, f"Total params: {count_params(model):,}",
             f"Inputs: {inputs}", f"Opset: {index.opset}; nodes: {len(index.nodes)}", line]
    return "\n".join(rows)
