"""Getting accuracy back without training, for ONNX models: a least-squares refit.

He et al. 2017 ("Channel Pruning for Accelerating Very Deep Neural Networks"): a
layer that lost input channels gets the weights that best reproduce, from its
remaining inputs, the original layer's outputs on the calibration data (ridge
regularised, at most :data:`MAX_ROWS` sampled rows). Refittable: Conv over 1-D or 2-D
inputs with group 1 and explicit padding, Gemm (alpha = beta = 1, A not transposed),
MatMul with a 2-D constant weight. Layers are refit in graph order, each on the
inputs the earlier refits produce, and a refit is kept only if it lowers the layer's
error on calibration samples it did not fit. (BatchNorm re-estimation has nothing to
do here: exporters fold BatchNorm into the convolutions before the file is written.)
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgeai.pruning.metric import Data
from edgeai.pruning.onnx_engine import runtime
from edgeai.pruning.onnx_engine.graph import GraphIndex, attribute
from edgeai.pruning.onnx_engine.rewrite import drop_unread
from edgeai.pruning.structure import Loaded

MAX_ROWS = 8192
RIDGE = 1e-3


class _Layer:
    """A refittable node of the pruned model: how its input becomes rows of a matrix
    that its weight multiplies, and how a solution goes back into the model."""

    def __init__(self, node: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray | None):
        self.node, self.weight, self.bias = node, weight, bias
        self.op = node.op_type

    def rows(self, x: np.ndarray) -> np.ndarray:
        if self.op != "Conv":
            return x.reshape(-1, x.shape[-1])
        return _patches(x, self.node, self.weight.shape[2:])

    def targets(self, y: np.ndarray, keep: np.ndarray) -> np.ndarray:
        if self.op != "Conv":
            return y.reshape(-1, y.shape[-1])[:, keep]
        y = y[:, keep].reshape(y.shape[0], int(keep.sum()), -1)
        return y.transpose(0, 2, 1).reshape(-1, y.shape[1])

    def matrix(self, weight: np.ndarray) -> np.ndarray:
        """The weight as [rows' width, outputs]."""
        if self.op == "Conv":
            return weight.reshape(weight.shape[0], -1).T
        if self.op == "Gemm" and attribute(self.node, "transB", 0):
            return weight.T
        return weight

    def from_matrix(self, matrix: np.ndarray) -> np.ndarray:
        if self.op == "Conv":
            return matrix.T.reshape(self.weight.shape)
        if self.op == "Gemm" and attribute(self.node, "transB", 0):
            return matrix.T
        return matrix


def _patches(x: np.ndarray, node: onnx.NodeProto, kernel: tuple[int, ...]) -> np.ndarray:
    """im2col of a 1-D or 2-D convolution's input: one row per output position, columns
    ordered (channel, kernel positions) like the weight's."""
    if x.ndim == 3:
        x = x[:, :, None, :]
        kernel = (1, *kernel)
    spatial = len(kernel)
    strides = list(attribute(node, "strides", [1] * spatial))
    dilations = list(attribute(node, "dilations", [1] * spatial))
    pads = list(attribute(node, "pads", [0] * 2 * spatial))
    if len(strides) == 1:  # a 1-D conv seen as 2-D
        strides, dilations = [1, *strides], [1, *dilations]
        pads = [0, pads[0], 0, pads[1]]
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    windows = np.lib.stride_tricks.sliding_window_view(x, span, axis=(2, 3))
    windows = windows[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]
    # [N, C, Ho, Wo, kh, kw] -> [N, Ho, Wo, C, kh, kw] -> rows
    windows = windows.transpose(0, 2, 3, 1, 4, 5)
    return windows.reshape(-1, int(np.prod(windows.shape[3:])))


def _refittable(index: GraphIndex, node: onnx.NodeProto) -> bool:
    weight = index.constant(node.input[1]) if len(node.input) > 1 else None
    if weight is None:
        return False
    if node.op_type == "Conv":
        return weight.ndim in (3, 4) and int(attribute(node, "group", 1)) == 1 and \
            attribute(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    if node.op_type == "Gemm":
        return not attribute(node, "transA", 0) and float(attribute(node, "alpha", 1.0)) == 1 \
            and float(attribute(node, "beta", 1.0)) == 1
    return node.op_type == "MatMul" and weight.ndim == 2


def _collect(model: onnx.ModelProto, data: Data, tensors: list[str],
             ) -> dict[str, list[np.ndarray]]:
    """The values of ``tensors`` over ``data``, chunk by chunk."""
    prober = runtime.Prober(model, tensors)
    found: dict[str, list[np.ndarray]] = {name: [] for name in tensors}
    for x, _ in data.chunks():
        for name, value in prober.run(x).items():
            found[name].append(value)
    return found


def _sample(rows: np.ndarray, targets: np.ndarray, limit: int, seed: int,
            ) -> tuple[np.ndarray, np.ndarray]:
    if len(rows) <= limit:
        return rows, targets
    pick = np.random.default_rng(seed).permutation(len(rows))[:limit]
    return rows[pick], targets[pick]


def _layer_data(layer: _Layer, xs: list[np.ndarray], ys: list[np.ndarray], keep: np.ndarray,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Rows and targets over every chunk, at most :data:`MAX_ROWS` of them."""
    limit = max(1, math.ceil(MAX_ROWS / max(1, len(xs))))
    rows, targets = [], []
    for seed, (x, y) in enumerate(zip(xs, ys, strict=True)):
        r, t = _sample(layer.rows(x), layer.targets(y, keep), limit, seed)
        rows.append(r.astype(np.float64))
        targets.append(t.astype(np.float64))
    return np.concatenate(rows), np.concatenate(targets)


def _solve(rows: np.ndarray, targets: np.ndarray, bias: bool) -> np.ndarray:
    """Ridge least squares: [rows 1] @ W ~= targets."""
    a = np.concatenate([rows, np.ones((len(rows), 1))], axis=1) if bias else rows
    gram = a.T @ a
    gram += np.eye(len(gram)) * RIDGE * max(float(gram.diagonal().mean()), 1e-12)
    return np.linalg.solve(gram, a.T @ targets)


def _error(rows: np.ndarray, targets: np.ndarray, matrix: np.ndarray,
           bias: np.ndarray | None) -> float:
    predicted = rows @ matrix
    if bias is not None:
        predicted = predicted + bias.reshape(-1)
    return float(((predicted - targets) ** 2).mean())


def refit_layers(pruned: Any, loaded: Loaded, removal: Any, fit: Data,
                 check: Data) -> dict[str, list[str]]:
    """Refit, in place, every layer of ``pruned`` (an ``OnnxModel``) that lost input
    channels (see the module docstring); ``loaded`` holds the unmasked original."""
    source = loaded.extra
    graph = source.graph
    report: dict[str, list[str]] = {"refit": [], "refit_rejected": []}
    lost = {item.node for item in graph.slicings
            if item.role == "consumer" and not removal.kept(item.elements).all()}
    original = source.index
    candidates = [position for position in sorted(lost)
                  if _refittable(original, original.nodes[position])]
    if not candidates or len(fit) < 4 or len(check) < 1:
        return report
    outputs = [original.nodes[p].output[0] for p in candidates]
    want_fit = _collect(original.model, fit, outputs)
    want_check = _collect(original.model, check, outputs)
    for position, output in zip(candidates, outputs, strict=True):
        name = original.names[position]
        cmap = graph.maps.get(output)
        index = GraphIndex(pruned.proto)
        where = index.names.index(name)
        node = pruned.proto.graph.node[where]
        width = index.constant(node.input[1])
        has_bias = len(node.input) > 2 and bool(node.input[2])
        bias = index.constant(node.input[2]) if has_bias else None
        if width is None or (has_bias and (bias is None or bias.size <= 1)):
            continue
        layer = _Layer(node, width, bias)
        keep = removal.kept(cmap.elements) if cmap is not None else \
            np.ones(want_fit[output][0].shape[1 if layer.op != "MatMul" else -1], dtype=bool)
        inputs = _collect(pruned.proto, fit, [node.input[0]])[node.input[0]]
        checks = _collect(pruned.proto, check, [node.input[0]])[node.input[0]]
        rows, targets = _layer_data(layer, inputs, want_fit[output], keep)
        solution = _solve(rows, targets, bias is not None)
        matrix = solution[:rows.shape[1]]
        check_rows, check_targets = _layer_data(layer, checks, want_check[output], keep)
        current = _error(check_rows, check_targets, layer.matrix(width.astype(np.float64)),
                         bias)
        candidate = _error(check_rows, check_targets, matrix,
                           solution[-1] if bias is not None else None)
        if candidate < current:
            _replace(pruned.proto, where, 1, layer.from_matrix(matrix).astype(width.dtype))
            if bias is not None:
                _replace(pruned.proto, where, 2, solution[-1].reshape(bias.shape)
                         .astype(bias.dtype))
            report["refit"].append(name)
        else:
            report["refit_rejected"].append(name)
    return report


def _replace(model: onnx.ModelProto, position: int, slot: int, array: np.ndarray) -> None:
    """Give node ``position``'s input ``slot`` a new value: in place when the node is
    its only reader, else as a new initializer for this node."""
    node = model.graph.node[position]
    name = node.input[slot]
    readers = sum(1 for other in model.graph.node for item in other.input if item == name)
    for init in model.graph.initializer:
        if init.name == name and readers == 1:
            init.CopyFrom(numpy_helper.from_array(array, name))
            return
    taken = {init.name for init in model.graph.initializer} | \
        {out for other in model.graph.node for out in other.output}
    new_name, counter = f"{name}_refit", 1
    while new_name in taken:
        counter += 1
        new_name = f"{name}_refit{counter}"
    model.graph.initializer.append(numpy_helper.from_array(array, new_name))
    node.input[slot] = new_name
    drop_unread(model, {name})
