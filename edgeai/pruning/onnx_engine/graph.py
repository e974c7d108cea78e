"""An index over an ONNX model's main graph: who makes and who reads each tensor, which
tensors are constants (and their values), and the name each node is known by.

ONNX does not require node names, nor unique ones; the pruner names a node by its own
name when that is unique and not empty, and otherwise by its first output tensor's
name (tensor names are unique in ONNX's single-assignment graphs). The names are the
engine's only: the saved model keeps the nodes exactly as they were.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

# Constant tensors read as values at most this many elements, so that a huge
# constant is never copied just to look at it (weights are read by their consumers).
SMALL_CONSTANT = 64
CONTROL_FLOW = ("If", "Loop", "Scan")


def attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of ``node``'s attribute ``name`` (ints, floats, lists, tensors as ONNX
    gives them), or ``default`` when it is absent."""
    for item in node.attribute:
        if item.name == name:
            return onnx.helper.get_attribute_value(item)
    return default


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held in ``node``'s attributes (If's branches, Loop's and Scan's body)."""
    for item in node.attribute:
        if item.type == onnx.AttributeProto.GRAPH:
            yield item.g
        elif item.type == onnx.AttributeProto.GRAPHS:
            yield from item.graphs


def captured_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from the scopes around it (used but not defined inside)."""
    defined = {value.name for value in graph.input} | {init.name for init in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(name for name in node.input if name)
        for inner in subgraphs(node):
            used |= captured_names(inner)
        defined.update(node.output)
    return used - defined


def constant_of_node(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node (None for sparse or string constants)."""
    for item in node.attribute:
        if item.name == "value":
            return numpy_helper.to_array(item.t)
        if item.name == "value_float":
            return np.array(item.f, dtype=np.float32)
        if item.name == "value_floats":
            return np.array(list(item.floats), dtype=np.float32)
        if item.name == "value_int":
            return np.array(item.i, dtype=np.int64)
        if item.name == "value_ints":
            return np.array(list(item.ints), dtype=np.int64)
    return None


class GraphIndex:
    """Lookups over ``model.graph``; built once per model and never changed by it."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.nodes = list(graph.node)
        self.initializers = {init.name: init for init in graph.initializer}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[tuple[int, int]]] = {}
        for index, node in enumerate(self.nodes):
            for position, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((index, position))
            for inner in subgraphs(node):
                for name in captured_names(inner):
                    self.consumers.setdefault(name, []).append((index, -1))
            for name in node.output:
                if name:
                    self.producer[name] = index
        self.outputs = [value.name for value in graph.output]
        # Graph inputs that are also initializers (IR < 4 exports) are weights, not inputs.
        self.inputs = [value for value in graph.input if value.name not in self.initializers]
        self.names = self._node_names()
        self.opset = next((entry.version for entry in model.opset_import
                           if entry.domain in ("", "ai.onnx")), 0)
        self._constants: dict[str, np.ndarray | None] = {}

    def _node_names(self) -> list[str]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.name] = counts.get(node.name, 0) + 1
        return [node.name if node.name and counts[node.name] == 1
                else (node.output[0] if node.output and node.output[0] else f"{node.op_type}_{i}")
                for i, node in enumerate(self.nodes)]

    def used(self, name: str) -> bool:
        """Is tensor ``name`` read by a node or given out as a model output?"""
        return bool(self.consumers.get(name)) or name in self.outputs

    def is_constant(self, name: str) -> bool:
        """Is ``name`` a constant: an initializer, a Constant node, or an Identity or Cast
        of one?"""
        if not name:
            return False
        if name in self.initializers:
            return True
        index = self.producer.get(name)
        if index is None:
            return False
        node = self.nodes[index]
        if node.op_type == "Constant":
            return True
        return node.op_type in ("Identity", "Cast") and self.is_constant(node.input[0])

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (see :meth:`is_constant`), else None."""
        if name not in self._constants:
            self._constants[name] = self._read_constant(name)
        return self._constants[name]

    def small_constant(self, name: str) -> np.ndarray | None:
        """A constant's value if it has at most :data:`SMALL_CONSTANT` elements."""
        if not self.is_constant(name):
            return None
        if name in self.initializers:
            dims = self.initializers[name].dims
            if int(np.prod(dims)) > SMALL_CONSTANT:
                return None
        value = self.constant(name)
        return value if value is not None and value.size <= SMALL_CONSTANT else None

    def _read_constant(self, name: str) -> np.ndarray | None:
        if not name:
            return None
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        index = self.producer.get(name)
        if index is None:
            return None
        node = self.nodes[index]
        if node.op_type == "Constant":
            return constant_of_node(node)
        if node.op_type == "Identity":
            return self.constant(node.input[0])
        if node.op_type == "Cast":
            value = self.constant(node.input[0])
            if value is None:
                return None
            to = attribute(node, "to")
            return value.astype(onnx.helper.tensor_dtype_to_np_dtype(to))
        return None

    def use_count(self, name: str) -> int:
        """How many node inputs (and model outputs) read ``name``."""
        return len(self.consumers.get(name, ())) + self.outputs.count(name)
