"""Rewriting an ONNX model without the planned channels, and masking the original.

Both work on a copy of the original's ``ModelProto`` and apply what the analysis
recorded (:mod:`.channels`): each :class:`Slicing` loses the removed positions (the
mask zeroes them instead, for producers' filters and consumers' input weights), each
:class:`SizeEdit` gets the kept count, a depthwise Conv's ``group`` and Split's sizes
follow their channels. Nodes, names, attributes, the opset and the graph's structure
stay as they were: a constant read by one node is changed in place under its own name;
one shared with nodes that need it differently is copied to ``<name>_pruned`` for this
node. Constants left unread by the copy are dropped, and the shapes the file recorded
for channel-carrying tensors (``value_info``) are removed, since they changed.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgeai.pruning.onnx_engine.channels import ChannelGraph
from edgeai.pruning.onnx_engine.graph import GraphIndex, subgraphs


class Removal:
    """Which elements a plan removes: ``kept(elements)`` is a mask over positions."""

    def __init__(self, graph: ChannelGraph, removed_roots: set[int]):
        self.graph = graph
        roots = graph.uf.all_roots()
        self.keep = ~np.isin(roots, np.fromiter(removed_roots, dtype=np.int64,
                                                count=len(removed_roots)))

    def kept(self, elements: np.ndarray) -> np.ndarray:
        return self.keep[elements]


def emptied_splits(graph: ChannelGraph, removal: Removal, groups: list[Any]) -> dict[str, str]:
    """The groups whose removal would leave a part of a Split without channels (ONNX
    Runtime does not run a zero-channel tensor into a convolution), with why."""
    found: dict[str, str] = {}
    for split in graph.split_edits:
        for part in split.parts:
            if len(part) and not removal.kept(part).any():
                roots = set(graph.uf.roots(part).tolist())
                name = graph.index.names[split.node]
                for group in groups:
                    if roots & set(np.asarray(group.handle).tolist()):
                        found[group.key] = f"it would empty a part of Split {name}"
    return found


def rewrite(graph: ChannelGraph, removal: Removal, mask: bool = False) -> onnx.ModelProto:
    """A new model without the removed channels (``mask``: the original with their
    producers' filters and consumers' input weights zeroed instead)."""
    index = graph.index
    model = onnx.ModelProto()
    model.CopyFrom(index.model)
    edits: dict[tuple[int, int], np.ndarray] = {}

    def value(node: int, position: int) -> np.ndarray:
        key = (node, position)
        if key not in edits:
            original = index.constant(index.nodes[node].input[position])
            assert original is not None, "the analysis slices constants only"
            edits[key] = np.array(original, copy=True)
        return edits[key]

    for item in graph.slicings:
        if mask and item.role == "follower":
            continue
        keep = removal.kept(item.elements)
        if keep.all():
            continue
        array = value(item.node, item.input)
        if mask:
            index_: list[Any] = [slice(None)] * array.ndim
            index_[item.axis] = np.flatnonzero(~keep)
            array[tuple(index_)] = 0
        else:
            edits[(item.node, item.input)] = np.compress(keep, array, axis=item.axis)
    if not mask:
        for size in graph.size_edits:
            array = value(size.node, size.input)
            flat = array.reshape(-1)
            flat[size.index] = int(removal.kept(size.elements).sum())
        for group in graph.group_edits:
            _set_attribute(model.graph.node[group.node], "group",
                           int(removal.kept(group.elements).sum()))
        for split in graph.split_edits:
            sizes = np.array([int(removal.kept(part).sum()) for part in split.parts],
                             dtype=np.int64)
            _set_split(model, index, split.node, sizes, edits)
    replaced = _apply(model, index, edits)
    drop_unread(model, replaced)
    if not mask:
        changed = {name for name, cmap in graph.maps.items()
                   if not removal.kept(cmap.elements).all()}
        kept_info = [info for info in model.graph.value_info if info.name not in changed]
        del model.graph.value_info[:]
        model.graph.value_info.extend(kept_info)
    return model


def _set_attribute(node: onnx.NodeProto, name: str, value: int | list[int]) -> None:
    for item in node.attribute:
        if item.name == name:
            node.attribute.remove(item)
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _set_split(model: onnx.ModelProto, index: GraphIndex, position: int, sizes: np.ndarray,
               edits: dict[tuple[int, int], np.ndarray]) -> None:
    """Split's sizes: the ``split`` input from opset 13 (it replaces ``num_outputs``),
    the attribute before."""
    node = model.graph.node[position]
    if index.opset < 13:
        _set_attribute(node, "split", sizes.tolist())
        return
    for item in list(node.attribute):
        if item.name == "num_outputs":
            node.attribute.remove(item)
    if len(node.input) < 2:
        node.input.append("")
    edits[(position, 1)] = sizes


def _unique(base: str, taken: set[str]) -> str:
    name = f"{base}_pruned"
    counter = 1
    while name in taken:
        counter += 1
        name = f"{base}_pruned{counter}"
    taken.add(name)
    return name


def _apply(model: onnx.ModelProto, index: GraphIndex,
           edits: dict[tuple[int, int], np.ndarray]) -> set[str]:
    """Put every edited constant into ``model``; return the names nodes stopped reading."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    inputs = {value.name: value for value in graph.input}
    taken = set(initializers) | {name for node in graph.node for name in node.output}
    replaced: set[str] = set()
    for (position, slot), array in edits.items():
        node = graph.node[position]
        name = node.input[slot] if slot < len(node.input) else ""
        if name in initializers and index.use_count(name) == 1:
            initializers[name].CopyFrom(numpy_helper.from_array(array, name))
            if name in inputs:  # an IR < 4 file lists its weights as inputs too
                _set_dims(inputs[name], array.shape)
            continue
        new_name = _unique(name or f"{index.names[position]}_input{slot}", taken)
        graph.initializer.append(numpy_helper.from_array(array, new_name))
        if name:
            replaced.add(name)
        node.input[slot] = new_name
    return replaced


def _set_dims(value: onnx.ValueInfoProto, shape: tuple[int, ...]) -> None:
    dims = value.type.tensor_type.shape.dim
    del dims[:]
    for size in shape:
        dims.add().dim_value = int(size)


def drop_unread(model: onnx.ModelProto, candidates: set[str]) -> None:
    """Remove those of ``candidates`` (names nodes stopped reading) that nothing reads
    any more: initializers, Constant nodes, and Identity/Cast nodes of them."""
    graph = model.graph
    pending = set(candidates)
    while pending:
        read = {name for node in graph.node for name in node.input} | \
            {value.name for value in graph.output}
        for node in graph.node:
            for inner in subgraphs(node):
                read |= _names_read(inner)
        unread = {name for name in pending if name not in read}
        pending = set()
        for node in list(graph.node):
            if node.op_type in ("Constant", "Identity", "Cast") and node.output and \
                    node.output[0] in unread:
                graph.node.remove(node)
                pending.update(name for name in node.input if name)
        for init in list(graph.initializer):
            if init.name in unread:
                graph.initializer.remove(init)
                for value in list(graph.input):
                    if value.name == init.name:
                        graph.input.remove(value)


def _names_read(graph: onnx.GraphProto) -> set[str]:
    read = {name for node in graph.node for name in node.input}
    for node in graph.node:
        for inner in subgraphs(node):
            read |= _names_read(inner)
    return read
