"""The channel-dependency graph of an ONNX model, read from the graph itself.

Every tensor that carries prunable channels has a :class:`ChannelMap`: the axis the
channels lie on and one *channel element* per position of that axis. Producers
(Conv, ConvTranspose, Gemm, and MatMul with a constant weight) create fresh
elements; per-channel operations (activations, BatchNormalization, pooling, Pad,
Resize, ...) pass their input's elements on; element-wise operations with two or more
inputs (Add, Mul, Where, ... with numpy broadcasting) unify their inputs' elements one
to one (a union-find); Concat joins its inputs' element lists and Split cuts them;
Transpose moves the axis; Reshape, Flatten, Squeeze and Unsqueeze are followed element
by element (row-major order), so that ``NCHW -> N(C*H*W)`` and the NHWC transposes
tf2onnx writes map every feature back to its channel. A depthwise Conv repeats each
input element once per output it makes. A set of elements that must go together is
one *channel*; producers that share channels form a *group*.

What the graph cannot follow is kept whole, with the reason: channels that reach a
model output, an operation no handler knows, a slice or gather that picks some
channels, a reduction over the channel axis, a size computed in a way the pruner
cannot rewrite. Integer tensors computed from ``Shape`` are followed too, so that a
Reshape's target size for the channel axis can be rewritten where it is a constant
(a Concat of Shape pieces and a constant, as tf2onnx writes for Flatten), or is known
to follow the channels by itself (``x.view(x.size(0), -1)``).

While it walks, the graph records what a rewrite must change: each constant to slice
(a :class:`Slicing`: weights of producers and consumers, biases, BatchNorm
parameters, broadcast constants), each constant that holds a channel count
(:class:`SizeEdit`), and the attributes that follow channel counts (a depthwise
Conv's ``group``, Split's sizes).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from edgeai.pruning.channel_sets import OUTPUT_REASON, UnionFind
from edgeai.pruning.onnx_engine.graph import CONTROL_FLOW, GraphIndex, attribute


@dataclass
class ChannelMap:
    """The channels a tensor carries: on ``axis``, position ``i`` is ``elements[i]``."""

    axis: int
    elements: np.ndarray


@dataclass
class Slicing:
    """A constant input of a node that loses the positions of removed elements along
    ``axis``. ``role``: ``producer`` (a filter bank's own outputs), ``consumer`` (the
    input weights of a layer that reads the channels) — both zeroed by the mask — or
    ``follower`` (a per-channel parameter: a bias, BatchNorm's, a depthwise filter)."""

    node: int
    input: int
    axis: int
    elements: np.ndarray
    role: str


@dataclass
class SizeEdit:
    """Entry ``index`` of a node's constant integer input holds the number of
    ``elements`` positions: it becomes the number kept."""

    node: int
    input: int
    index: int
    elements: np.ndarray


@dataclass
class GroupEdit:
    """A depthwise Conv's ``group`` attribute: the number of its input channels kept."""

    node: int
    elements: np.ndarray


@dataclass
class SplitEdit:
    """Split on the channel axis: its sizes become the kept positions of each part."""

    node: int
    parts: list[np.ndarray]


@dataclass
class Producer:
    """A node that makes channels of its own: its fresh elements and each filter's L1."""

    node: int
    name: str
    op: str
    space: np.ndarray
    l1: np.ndarray


@dataclass
class Layer:
    """A node with output channels (a producer, or a depthwise Conv), for the report."""

    name: str
    op: str
    channels: int
    node: int
    fixed: str | None = None  # why the engine keeps it whole on its own
    depthwise: bool = False


@dataclass
class Shapes:
    """Every tensor's shape on a probe run at batch 1 (``one``) and, where the batch is
    free, at batch 2 (``two``: which axes follow the batch)."""

    one: dict[str, tuple[int, ...]]
    two: dict[str, tuple[int, ...]] | None


# One element of an integer tensor computed from shapes: ("const", value, origin) where
# origin (node, input, index) is where the constant enters, ("dim", tensor, axis) the
# size of a channel axis, or ("stable",) a value pruning does not change.
ShapeItem = tuple


@dataclass
class ChannelGraph:
    """Elements, the tensors that carry them, and why some are frozen (see the module
    docstring)."""

    index: GraphIndex
    shapes: Shapes
    uf: UnionFind = field(default_factory=UnionFind)
    maps: dict[str, ChannelMap] = field(default_factory=dict)
    frozen: list[tuple[np.ndarray, str, str]] = field(default_factory=list)
    # (elements in channel order, parts, node): a grouped Conv stays valid only if each
    # of its ``parts`` contiguous channel blocks loses the same positions.
    constraints: list[tuple[np.ndarray, int, str]] = field(default_factory=list)
    inexact: list[tuple[np.ndarray, str]] = field(default_factory=list)
    slicings: list[Slicing] = field(default_factory=list)
    size_edits: list[SizeEdit] = field(default_factory=list)
    group_edits: list[GroupEdit] = field(default_factory=list)
    split_edits: list[SplitEdit] = field(default_factory=list)
    producers: list[Producer] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    shape_values: dict[str, list[ShapeItem]] = field(default_factory=dict)

    def freeze(self, elements: np.ndarray | None, node: str, reason: str) -> None:
        """Keep ``elements`` whole, for ``reason`` (found at ``node``)."""
        if elements is not None and len(elements):
            self.frozen.append((elements, node, reason))

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        """Tie ``a[i]`` to ``b[i]`` for every position: they are one channel."""
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            self.uf.union(x, y)

    def carriers(self) -> dict[str, np.ndarray]:
        """For each node, the elements its outputs carry."""
        carried: dict[str, list[np.ndarray]] = {}
        for tensor, cmap in self.maps.items():
            node = self.index.producer.get(tensor)
            if node is not None:
                carried.setdefault(self.index.names[node], []).append(cmap.elements)
        return {name: np.concatenate(parts) for name, parts in carried.items()}


# -- the walk --------------------------------------------------------------------------
def build_graph(index: GraphIndex, shapes: Shapes) -> ChannelGraph:
    """Walk the model's nodes in order (ONNX graphs are topologically sorted) and build
    its :class:`ChannelGraph`; model outputs freeze the channels they carry."""
    graph = ChannelGraph(index, shapes)
    for position, node in enumerate(index.nodes):
        visit = Visit(graph, node, position)
        visit.check_shape_inputs()
        handler = HANDLERS.get(node.op_type, _unknown)
        if node.domain not in ("", "ai.onnx") or node.op_type in CONTROL_FLOW:
            handler = _unknown
        outputs = handler(visit)
        for name, cmap in zip(node.output, outputs, strict=False):
            if name and cmap is not None:
                graph.maps[name] = cmap
        _track_shape_value(visit)
    for name in index.outputs:
        cmap = graph.maps.get(name)
        if cmap is not None:
            graph.freeze(cmap.elements, "output", OUTPUT_REASON)
    return graph


class Visit:
    """One node on the walk: what a handler needs to decide its outputs' channels."""

    def __init__(self, graph: ChannelGraph, node: onnx.NodeProto, position: int):
        self.graph, self.node, self.position = graph, node, position
        self.name = graph.index.names[position]
        self.inputs = list(node.input)

    # -- reading ---------------------------------------------------------------------
    def map(self, i: int) -> ChannelMap | None:
        """The channels input ``i`` carries (None: none the pruner follows)."""
        name = self.inputs[i] if i < len(self.inputs) else ""
        return self.graph.maps.get(name) if name else None

    def mapped(self) -> list[tuple[int, ChannelMap]]:
        """(position, channels) of every input that carries channels."""
        return [(i, m) for i in range(len(self.inputs)) if (m := self.map(i)) is not None]

    def has(self, i: int) -> bool:
        """Is optional input ``i`` given?"""
        return i < len(self.inputs) and bool(self.inputs[i])

    def shape(self, name: str) -> tuple[int, ...]:
        """Tensor ``name``'s shape at batch 1 (from the probe, or a constant's own)."""
        index = self.graph.index
        if name in self.graph.shapes.one:
            return self.graph.shapes.one[name]
        if name in index.initializers:
            return tuple(int(d) for d in index.initializers[name].dims)
        value = index.constant(name)
        return tuple(value.shape) if value is not None else ()

    def rank(self, name: str) -> int:
        """Tensor ``name``'s number of axes."""
        return len(self.shape(name))

    def out_shape(self, k: int = 0) -> tuple[int, ...]:
        """The shape of output ``k``."""
        return self.shape(self.node.output[k])

    def batch_axes(self, name: str) -> set[int]:
        """The axes of ``name`` whose size follows the batch."""
        two = self.graph.shapes.two
        if two is None or name not in two:
            return set()
        return {axis for axis, (a, b) in enumerate(zip(self.shape(name), two[name],
                                                       strict=False)) if a != b}

    def constant(self, i: int) -> np.ndarray | None:
        """Input ``i``'s value if it is a constant, else None."""
        return self.graph.index.constant(self.inputs[i]) if self.has(i) else None

    def is_constant(self, i: int) -> bool:
        """Is input ``i`` a constant?"""
        return self.has(i) and self.graph.index.is_constant(self.inputs[i])

    def attr(self, name: str, default: Any = None) -> Any:
        """The node's attribute ``name`` (``default`` when absent)."""
        return attribute(self.node, name, default)

    def used(self, k: int) -> bool:
        """Is output ``k`` read by anything?"""
        return k < len(self.node.output) and bool(self.node.output[k]) \
            and self.graph.index.used(self.node.output[k])

    def shape_value(self, i: int) -> list[ShapeItem] | None:
        """Input ``i`` as a list of :data:`ShapeItem` (None if it is not followed)."""
        if not self.has(i):
            return None
        name = self.inputs[i]
        value = self.graph.index.small_constant(name)
        if value is not None and np.issubdtype(value.dtype, np.integer) and value.ndim <= 1:
            return [("const", int(v), (self.position, i, k))
                    for k, v in enumerate(value.reshape(-1).tolist())]
        return self.graph.shape_values.get(name)

    # -- recording -------------------------------------------------------------------
    def freeze(self, cmap: ChannelMap | None, reason: str) -> None:
        """Keep the channels of ``cmap`` whole, for ``reason`` (found at this node)."""
        if cmap is not None:
            self.graph.freeze(cmap.elements, self.name, reason)

    def keep_inputs(self, reason: str) -> list[ChannelMap | None]:
        """Channels into this node are kept whole; its outputs carry none."""
        for _, cmap in self.mapped():
            self.freeze(cmap, reason)
        return [None] * len(self.node.output)

    def fresh_frozen(self, width: int, reason: str) -> np.ndarray:
        """``width`` new channels that stay whole (a part the pruner does not follow)."""
        elements = self.graph.uf.make(width)
        self.graph.freeze(elements, self.name, reason)
        return elements

    def slice(self, i: int, axis: int, elements: np.ndarray, role: str) -> None:
        """Record that constant input ``i`` loses removed ``elements`` along ``axis``."""
        self.graph.slicings.append(Slicing(self.position, i, axis, elements, role))

    def producer(self, width: int, l1: np.ndarray) -> np.ndarray:
        """This node makes ``width`` fresh channels scored by ``l1``; return them."""
        space = self.graph.uf.make(width)
        self.graph.producers.append(Producer(self.position, self.name, self.node.op_type,
                                             space, l1))
        return space

    def layer(self, channels: int, fixed: str | None = None, depthwise: bool = False) -> None:
        """List this node among the layers with channels (for the report)."""
        self.graph.layers.append(Layer(self.name, self.node.op_type, channels, self.position,
                                       fixed, depthwise))

    def check_shape_inputs(self) -> None:
        """Sizes of channel axes read by an operation that does not just pass them on
        (arithmetic on shapes, ConstantOfShape, ...) cannot be rewritten: freeze them."""
        reads = SIZE_INPUTS.get(self.node.op_type, ())
        if self.node.op_type in SHAPE_OPS:
            return
        for i, name in enumerate(self.inputs):
            if i in reads or not name:
                continue
            for item in self.graph.shape_values.get(name, ()):
                if item[0] == "dim":
                    self.freeze(self.graph.maps.get(item[1]),
                                f"its channel count is used by {self.node.op_type}, a "
                                "computation the pruner does not rewrite")

    def size_entry(self, item: ShapeItem | None, elements: np.ndarray) -> str | None:
        """Check that a size the graph holds for a channel axis follows the channels
        (``elements``, the positions of that axis) when they are pruned, recording the
        edit that makes it so; return why it cannot, or None."""
        if item is None:
            return "its size is computed in the graph in a way the pruner does not follow"
        if item[0] == "const":
            if item[1] == -1:
                return None
            if item[1] != len(elements):
                return f"its size {item[1]} is not the {len(elements)} channels"
            node, i, k = item[2]
            self.graph.size_edits.append(SizeEdit(node, i, k, elements))
            return None
        if item[0] == "dim":
            source = self.graph.maps.get(item[1])
            if source is not None and np.array_equal(source.elements, elements):
                return None
            return "its size is read from another tensor's shape"
        return "its size is computed in the graph in a way the pruner does not follow"


# -- handlers: one per kind of operation ---------------------------------------------------
def _unknown(v: Visit) -> list[ChannelMap | None]:
    """An operation no handler knows: channels through it are kept whole."""
    kind = v.node.op_type if v.node.domain in ("", "ai.onnx") else \
        f"{v.node.domain}.{v.node.op_type}"
    return v.keep_inputs(f"{kind} is not followed by the pruner; channels through it "
                         "are kept")


def _same(v: Visit) -> list[ChannelMap | None]:
    """Element by element on one tensor (activations, Cast, Identity, Dropout, Clip with
    constant bounds): every output carries the input's channels."""
    for i, cmap in v.mapped():
        if i > 0:
            v.freeze(cmap, f"{v.node.op_type} uses it as a parameter")
    return [v.map(0)] * len(v.node.output)


def _aligned_axis(v: Visit, i: int, out_rank: int, cmap: ChannelMap) -> int:
    return cmap.axis + out_rank - v.rank(v.inputs[i])


def _elementwise(v: Visit) -> list[ChannelMap | None]:
    """Inputs broadcast against each other (numpy rules): channels on the same output
    axis are tied one to one; a constant of the channels' width along that axis is
    sliced with them; a tensor the pruner does not follow keeps them whole."""
    mapped = v.mapped()
    if not mapped:
        return [None] * len(v.node.output)
    out_shape = v.out_shape()
    out_rank = len(out_shape)
    axes = {_aligned_axis(v, i, out_rank, cmap) for i, cmap in mapped}
    if len(axes) > 1:
        return v.keep_inputs(f"{v.node.op_type} combines channels on different axes")
    axis = axes.pop()
    width = out_shape[axis]
    wide = [cmap for _, cmap in mapped if len(cmap.elements) == width]
    for _, cmap in mapped:
        if len(cmap.elements) != width:
            v.freeze(cmap, f"{v.node.op_type} broadcasts it over {width} channels")
    if not wide:
        return [None] * len(v.node.output)
    result = wide[0]
    for other in wide[1:]:
        v.graph.unify(result.elements, other.elements)
    for i, name in enumerate(v.inputs):
        if not name or v.map(i) is not None:
            continue
        shape = v.shape(name)
        own_axis = axis - (out_rank - len(shape))
        if own_axis < 0 or shape[own_axis] == 1:
            continue
        if v.is_constant(i):
            v.slice(i, own_axis, result.elements, "follower")
        else:
            v.freeze(result, f"{v.node.op_type} combines it with {name}, which the pruner "
                             "does not follow")
    return [result] + [None] * (len(v.node.output) - 1)


def _channel_axis_one(v: Visit, what: str) -> ChannelMap | None:
    cmap = v.map(0)
    if cmap is not None and cmap.axis != 1:
        v.freeze(cmap, f"{what} works on axis 1, not the channels' axis {cmap.axis}")
        return None
    return cmap


def _per_channel(params: tuple[int, ...]) -> Callable[[Visit], list[ChannelMap | None]]:
    """An operation on each channel (axis 1) alone: BatchNormalization and
    InstanceNormalization (their parameters are sliced), pooling."""

    def handle(v: Visit) -> list[ChannelMap | None]:
        cmap = _channel_axis_one(v, v.node.op_type)
        for i, other in v.mapped():
            if i > 0:
                v.freeze(other, f"{v.node.op_type} uses it as a parameter")
        extra = [k for k in range(1, len(v.node.output)) if v.used(k)]
        if cmap is None:
            return [None] * len(v.node.output)
        if extra:
            v.freeze(cmap, f"{v.node.op_type}'s extra outputs (indices or statistics) are "
                           "used")
            return [None] * len(v.node.output)
        for i in params:
            if not v.has(i):
                continue
            if not v.is_constant(i):
                v.freeze(cmap, f"{v.node.op_type}'s parameters are not constants")
                return [None] * len(v.node.output)
            if v.rank(v.inputs[i]) >= 1 and v.shape(v.inputs[i])[0] == len(cmap.elements):
                v.slice(i, 0, cmap.elements, "follower")
        return [cmap] + [None] * (len(v.node.output) - 1)

    return handle


def _transpose(v: Visit) -> list[ChannelMap | None]:
    cmap = v.map(0)
    if cmap is None:
        return [None]
    rank = v.rank(v.inputs[0])
    perm = list(v.attr("perm", list(reversed(range(rank)))))
    return [ChannelMap(perm.index(cmap.axis), cmap.elements)]


def _landing(cmap: ChannelMap, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
             ) -> tuple[int, np.ndarray] | None:
    """Where a row-major reshape puts the channels: (the axis whose position alone says
    which channel an element is, and the channel of each position), or None when no
    axis does (the channels are spread over several axes)."""
    shape = [1] * len(in_shape)
    shape[cmap.axis] = len(cmap.elements)
    ids = np.broadcast_to(cmap.elements.reshape(shape), in_shape).reshape(out_shape)
    for axis, size in enumerate(out_shape):
        if size <= 1:
            continue
        line = ids[tuple(slice(None) if a == axis else slice(0, 1) for a in range(ids.ndim))]
        if np.array_equal(np.broadcast_to(line, ids.shape), ids):
            return axis, line.reshape(-1).copy()
    return None


def _reshape(v: Visit) -> list[ChannelMap | None]:
    """Reshape, Flatten, Squeeze, Unsqueeze: each element keeps its row-major position,
    so the channels land on the output axis whose position alone decides the channel
    (``(C, H, W) -> C*H*W``: feature f is channel f // (H*W); ``(H, W, C) -> H*W*C``:
    f % C). Reshape's target size on that axis is rewritten where it is a constant;
    the other operations need no change."""
    cmap = v.map(0)
    for i, other in v.mapped():
        if i > 0:
            v.freeze(other, f"{v.node.op_type} uses it as a shape")
    if cmap is None:
        return [None]
    in_shape, out_shape = v.shape(v.inputs[0]), v.out_shape()
    if len(set(cmap.elements.tolist())) == 1:
        v.freeze(cmap, "a single channel")
        return [None]
    landed = _landing(cmap, in_shape, out_shape)
    if landed is None:
        v.freeze(cmap, f"{v.node.op_type} {list(in_shape)} -> {list(out_shape)} spreads the "
                       "channels over several axes")
        return [None]
    axis, elements = landed
    if axis in v.batch_axes(v.node.output[0]):
        v.freeze(cmap, f"{v.node.op_type} {list(in_shape)} -> {list(out_shape)} mixes the "
                       "channels with the batch")
        return [None]
    if v.node.op_type == "Reshape":
        why = _reshape_target(v, cmap, axis, elements)
        if why is not None:
            v.freeze(cmap, f"Reshape: {why}")
            return [None]
    return [ChannelMap(axis, elements)]


def _reshape_target(v: Visit, cmap: ChannelMap, axis: int, elements: np.ndarray) -> str | None:
    """Check (and plan the edit of) a Reshape's target shape; the reason it fails."""
    target = v.shape_value(1)
    if target is None:
        return "its target shape is computed in a way the pruner does not follow"
    allow_zero = bool(v.attr("allowzero", 0))
    for position, item in enumerate(target):
        if item[0] == "const" and item[1] == 0 and not allow_zero:
            # 0 copies the input's size at the same position.
            copies_channels = position == cmap.axis
            if position == axis:
                if copies_channels and np.array_equal(cmap.elements, elements):
                    continue
                return "its target copies a size that is not the channels'"
            if copies_channels:
                return "its target copies the channel count to another axis"
            continue
        if position == axis:
            why = v.size_entry(item, elements)
            if why is not None:
                return why
        elif item[0] == "dim":
            return "its target uses a channel count for another axis"
    return None


def _concat(v: Visit) -> list[ChannelMap | None]:
    """On the channels' axis: the inputs' elements side by side (an input the pruner
    does not follow keeps its part whole). On another axis: the inputs' channels are the
    same channels."""
    mapped = v.mapped()
    if not mapped:
        return [None]
    out_rank = len(v.out_shape())
    axis = int(v.attr("axis", 0)) % out_rank
    if all(cmap.axis == axis for _, cmap in mapped):
        parts = []
        for i, name in enumerate(v.inputs):
            cmap = v.map(i)
            parts.append(cmap.elements if cmap is not None else v.fresh_frozen(
                v.shape(name)[axis], f"concatenated with {name}, which the pruner does not "
                                     "follow"))
        return [ChannelMap(axis, np.concatenate(parts))]
    if any(cmap.axis == axis for _, cmap in mapped):
        return v.keep_inputs("Concat joins channels on different axes")
    return _elementwise(v)


def _split(v: Visit) -> list[ChannelMap | None]:
    """On the channels' axis: each output gets its part of the elements (the sizes are
    rewritten); on another axis, every output carries the channels."""
    cmap = v.map(0)
    outputs = len(v.node.output)
    if cmap is None:
        return [None] * outputs
    rank = v.rank(v.inputs[0])
    axis = int(v.attr("axis", 0)) % rank
    if axis != cmap.axis:
        return [cmap] * outputs
    sizes = [v.shape(name)[axis] for name in v.node.output]
    if v.has(1) and not v.is_constant(1):
        v.freeze(cmap, "Split's sizes are computed in the graph")
        return [None] * outputs
    offsets = np.cumsum([0] + sizes)
    parts = [cmap.elements[offsets[k]:offsets[k + 1]] for k in range(outputs)]
    v.graph.split_edits.append(SplitEdit(v.position, parts))
    return [ChannelMap(axis, part) for part in parts]


def _slice(v: Visit) -> list[ChannelMap | None]:
    """A Slice that leaves the channels' axis whole passes them; one that cuts it keeps
    them whole."""
    cmap = v.map(0)
    if cmap is None:
        return [None]
    for i, other in v.mapped():
        if i > 0:
            v.freeze(other, "Slice uses it as a position")
    rank = v.rank(v.inputs[0])
    size = v.shape(v.inputs[0])[cmap.axis]
    # Opset 10 on (the loader takes 11 on): starts, ends, axes and steps are inputs.
    values = [v.constant(i) if v.has(i) else None for i in range(1, 5)]
    if values[0] is None or values[1] is None or \
            any(v.has(i) and values[i - 1] is None for i in range(1, 5)):
        v.freeze(cmap, "Slice's positions are computed in the graph")
        return [None]
    starts, ends = values[0].tolist(), values[1].tolist()
    axes = values[2].tolist() if values[2] is not None else list(range(len(starts)))
    steps = values[3].tolist() if values[3] is not None else [1] * len(starts)
    for start, end, ax, step in zip(starts, ends, axes, steps, strict=False):
        if int(ax) % rank != cmap.axis:
            continue
        if range(*slice(int(start), int(end), int(step)).indices(size)) != range(size):
            v.freeze(cmap, "Slice picks some of the channels")
            return [None]
    return [cmap]


def _gather(v: Visit) -> list[ChannelMap | None]:
    """Gather on another axis passes the channels (their axis shifts with the indices'
    rank); on the channels' axis it picks some of them: kept whole."""
    cmap = v.map(0)
    if v.map(1) is not None:
        v.freeze(v.map(1), "Gather uses it as indices")
    if cmap is None:
        return [None]
    rank = v.rank(v.inputs[0])
    axis = int(v.attr("axis", 0)) % rank
    if axis == cmap.axis:
        v.freeze(cmap, "Gather picks some of the channels")
        return [None]
    if cmap.axis < axis:
        return [cmap]
    return [ChannelMap(cmap.axis - 1 + v.rank(v.inputs[1]), cmap.elements)]


def _reduced_axes(v: Visit, rank: int) -> list[int] | None:
    """The axes a Reduce* reduces (None: computed in the graph)."""
    axes = v.attr("axes")
    if axes is None and v.has(1):
        value = v.constant(1)
        if value is None:
            return None
        axes = value.tolist()
    if not axes:
        return [] if v.attr("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(int(a) % rank for a in axes)


def _reduce(v: Visit) -> list[ChannelMap | None]:
    """A reduction over other axes passes the channels; one over the channels' axis
    keeps them whole (its result depends on how many there are)."""
    cmap = v.map(0)
    if cmap is None:
        return [None]
    rank = v.rank(v.inputs[0])
    if v.node.op_type in ("ArgMax", "ArgMin"):
        axes: list[int] | None = [int(v.attr("axis", 0)) % rank]
    else:
        axes = _reduced_axes(v, rank)
    if axes is None:
        v.freeze(cmap, f"{v.node.op_type}'s axes are computed in the graph")
        return [None]
    if cmap.axis in axes:
        v.freeze(cmap, f"{v.node.op_type} reduces over the channels")
        return [None]
    if v.attr("keepdims", 1):
        return [cmap]
    return [ChannelMap(cmap.axis - sum(1 for a in axes if a < cmap.axis), cmap.elements)]


def _softmax(v: Visit) -> list[ChannelMap | None]:
    """Softmax and its kin over another axis pass the channels; over the channels they
    are kept whole (every result depends on every channel)."""
    cmap = v.map(0)
    if cmap is None:
        return [None]
    rank = v.rank(v.inputs[0])
    if v.graph.index.opset < 13:
        axis = int(v.attr("axis", 1)) % rank
        mixes = cmap.axis >= axis  # the input is coerced to 2-D at ``axis``
    else:
        mixes = cmap.axis == int(v.attr("axis", -1)) % rank
    if mixes:
        # Kept whole, but still the same channels: a Softmax model output is reported
        # as the output it is.
        v.freeze(cmap, f"{v.node.op_type} normalises over the channels")
    return [cmap]


def _layer_normalization(v: Visit) -> list[ChannelMap | None]:
    """LayerNormalization over the channels: they pass (scale and bias sliced), but its
    statistics change when they go, so masking cannot reproduce the pruned model."""
    cmap = v.map(0)
    for i, other in v.mapped():
        if i > 0:
            v.freeze(other, "LayerNormalization uses it as a parameter")
    if cmap is None:
        return [None] * len(v.node.output)
    rank = v.rank(v.inputs[0])
    axis = int(v.attr("axis", -1)) % rank
    if any(v.used(k) for k in range(1, len(v.node.output))):
        v.freeze(cmap, "LayerNormalization's statistics outputs are used")
        return [None] * len(v.node.output)
    if cmap.axis >= axis:
        for i in (1, 2):
            if not v.has(i):
                continue
            if not v.is_constant(i):
                v.freeze(cmap, "LayerNormalization's parameters are not constants")
                return [None] * len(v.node.output)
            own = cmap.axis - (rank - v.rank(v.inputs[i]))
            if own >= 0 and v.shape(v.inputs[i])[own] != 1:
                v.slice(i, own, cmap.elements, "follower")
        v.graph.inexact.append((cmap.elements, f"pass through LayerNormalization ({v.name}), "
                                               "whose statistics change when channels go"))
    return [cmap] + [None] * (len(v.node.output) - 1)


def _pad(v: Visit) -> list[ChannelMap | None]:
    """Pad passes the channels when it pads other axes only."""
    cmap = v.map(0)
    if cmap is None:
        return [None]
    rank = v.rank(v.inputs[0])
    given = v.constant(1)  # an input from opset 11, the loader's lowest
    if given is None:
        v.freeze(cmap, "Pad's sizes are computed in the graph")
        return [None]
    pads = [int(p) for p in given.reshape(-1)]
    axes = list(range(rank))
    if v.has(3):
        value = v.constant(3)
        if value is None:
            v.freeze(cmap, "Pad's axes are computed in the graph")
            return [None]
        axes = [int(a) % rank for a in value.reshape(-1)]
    if cmap.axis in axes:
        k = axes.index(cmap.axis)
        if pads[k] or pads[k + len(axes)]:
            v.freeze(cmap, "Pad adds channels")
            return [None]
    return [cmap]


def _resize(v: Visit) -> list[ChannelMap | None]:
    """Resize passes the channels when it scales other axes; a ``sizes`` input names
    the channel count, which is rewritten where it is a constant."""
    cmap = v.map(0)
    if cmap is None:
        return [None]
    rank = v.rank(v.inputs[0])
    axes = [int(a) % rank for a in (v.attr("axes") or range(rank))]
    if cmap.axis not in axes:
        return [cmap]
    k = axes.index(cmap.axis)
    sizes = v.shape_value(3) if v.has(3) else None
    if v.has(3) and v.shape(v.inputs[3]) != (0,):
        why = v.size_entry(sizes[k] if sizes and k < len(sizes) else None, cmap.elements)
        if why is not None:
            v.freeze(cmap, f"Resize: {why}")
            return [None]
        return [cmap]
    scales = v.constant(2) if v.has(2) else None
    if scales is None or scales.size <= k or float(scales.reshape(-1)[k]) != 1.0:
        v.freeze(cmap, "Resize scales the channels' axis or computes its scales")
        return [None]
    return [cmap]


def _expand(v: Visit) -> list[ChannelMap | None]:
    """Expand broadcasts other axes; its shape's entry for the channels must follow them."""
    cmap = v.map(0)
    if cmap is None:
        return [None]
    out_rank = len(v.out_shape())
    axis = cmap.axis + out_rank - v.rank(v.inputs[0])
    target = v.shape_value(1)
    own = axis - (out_rank - len(target)) if target is not None else -1
    item = target[own] if target is not None and own >= 0 else ("const", 1, None)
    if item[0] == "const" and item[1] == 1:
        return [ChannelMap(axis, cmap.elements)]
    why = v.size_entry(item, cmap.elements)
    if why is not None:
        v.freeze(cmap, f"Expand: {why}")
        return [None]
    return [ChannelMap(axis, cmap.elements)]


def _tile(v: Visit) -> list[ChannelMap | None]:
    cmap = v.map(0)
    if cmap is None:
        return [None]
    repeats = v.constant(1)
    if repeats is None or int(repeats.reshape(-1)[cmap.axis]) != 1:
        v.freeze(cmap, "Tile repeats the channels")
        return [None]
    return [cmap]


def _weights(v: Visit, i: int, least_rank: int) -> np.ndarray | None:
    value = v.constant(i) if v.is_constant(i) else None
    return value if value is not None and value.ndim >= least_rank else None


def _keep_producer(v: Visit, width: int, reason: str) -> list[ChannelMap | None]:
    """A producer the pruner leaves whole: its inputs and its own channels are kept."""
    v.keep_inputs(reason)
    v.layer(width, fixed=reason)
    return [ChannelMap(1, v.fresh_frozen(width, reason))] + [None] * (len(v.node.output) - 1)


def _bias(v: Visit, i: int, space: np.ndarray) -> bool:
    """Slice a bias-like input with the outputs; False if it cannot be."""
    if not v.has(i):
        return True
    value = v.constant(i) if v.is_constant(i) else None
    if value is None:
        return False
    if value.ndim >= 1 and value.shape[-1] == len(space) and len(space) > 1:
        v.slice(i, value.ndim - 1, space, "producer")
    return value.ndim == 0 or value.shape[-1] in (1, len(space))


def _conv(v: Visit) -> list[ChannelMap | None]:
    """Conv: fresh output channels, its filters' L1 as their scores; its weights' input
    axis follows the channels it reads. A depthwise Conv (group = input channels) makes
    no channels of its own: each input channel's outputs follow it, and ``group`` is
    rewritten. A grouped Conv constrains its input and output channels to lose the same
    positions in every group."""
    width = v.out_shape()[1] if len(v.out_shape()) > 1 else 1
    weights = _weights(v, 1, 3)
    if weights is None:
        return _keep_producer(v, width, "its weights are not a constant")
    group = int(v.attr("group", 1))
    out_channels, per_group = weights.shape[0], weights.shape[1]
    in_channels = per_group * group
    cmap = _channel_axis_one(v, "Conv")
    if cmap is not None and len(cmap.elements) != in_channels:
        v.freeze(cmap, "Conv reads a different number of channels")
        cmap = None
    if group > 1 and group == in_channels:
        elements = (np.repeat(cmap.elements, out_channels // in_channels) if cmap is not None
                    else v.fresh_frozen(out_channels, "a depthwise convolution of channels "
                                                      "the pruner does not follow"))
        v.slice(1, 0, elements, "follower")
        if v.has(2):
            if not v.is_constant(2):
                v.freeze(cmap, "its bias is not a constant")
            else:
                v.slice(2, 0, elements, "follower")
        if cmap is not None:
            v.graph.group_edits.append(GroupEdit(v.position, cmap.elements))
        v.layer(out_channels, depthwise=True)
        return [ChannelMap(1, elements)]
    l1 = np.abs(weights.astype(np.float64)).reshape(out_channels, -1).sum(axis=1)
    space = v.producer(out_channels, l1)
    v.layer(out_channels)
    v.slice(1, 0, space, "producer")
    if not _bias(v, 2, space):
        v.graph.freeze(space, v.name, "its bias is not a constant")
    if group > 1:
        v.graph.constraints.append((space, group, v.name))
    if cmap is not None:
        if group > 1:
            v.graph.constraints.append((cmap.elements, group, v.name))
        v.slice(1, 1, cmap.elements[:per_group], "consumer")
    return [ChannelMap(1, space)]


def _conv_transpose(v: Visit) -> list[ChannelMap | None]:
    """ConvTranspose (weights [in, out/group, ...]): like Conv, for group 1."""
    width = v.out_shape()[1] if len(v.out_shape()) > 1 else 1
    weights = _weights(v, 1, 3)
    if weights is None:
        return _keep_producer(v, width, "its weights are not a constant")
    if int(v.attr("group", 1)) != 1:
        return _keep_producer(v, width, "a grouped ConvTranspose")
    if v.attr("output_shape") is not None and len(v.attr("output_shape")) >= len(v.out_shape()):
        return _keep_producer(v, width, "its output_shape attribute names the channels")
    cmap = _channel_axis_one(v, "ConvTranspose")
    out_channels = weights.shape[1]
    l1 = np.abs(weights.astype(np.float64)).swapaxes(0, 1).reshape(out_channels, -1).sum(axis=1)
    space = v.producer(out_channels, l1)
    v.layer(out_channels)
    v.slice(1, 1, space, "producer")
    if not _bias(v, 2, space):
        v.graph.freeze(space, v.name, "its bias is not a constant")
    if cmap is not None:
        if len(cmap.elements) == weights.shape[0]:
            v.slice(1, 0, cmap.elements, "consumer")
        else:
            v.freeze(cmap, "ConvTranspose reads a different number of channels")
    return [ChannelMap(1, space)]


def _gemm(v: Visit) -> list[ChannelMap | None]:
    """Gemm with a constant B: a dense layer. Its outputs are fresh channels (scored by
    their column of B), its inputs' channels select rows of B; C is sliced with the
    outputs."""
    out_shape = v.out_shape()
    width = out_shape[-1] if out_shape else 1
    weights = _weights(v, 1, 2)
    if weights is None or weights.ndim != 2:
        return _keep_producer(v, width, "its weights (B) are not a constant")
    trans_a, trans_b = int(v.attr("transA", 0)), int(v.attr("transB", 0))
    k_axis = 1 if trans_b else 0
    out_units = weights.shape[1 - k_axis]
    l1 = np.abs(weights.astype(np.float64)).sum(axis=k_axis)
    space = v.producer(out_units, l1)
    v.layer(out_units)
    v.slice(1, 1 - k_axis, space, "producer")
    if not _bias(v, 2, space):
        v.graph.freeze(space, v.name, "its C input is not a constant")
    cmap = v.map(0)
    if cmap is not None:
        if cmap.axis == (0 if trans_a else 1) and len(cmap.elements) == weights.shape[k_axis]:
            v.slice(1, k_axis, cmap.elements, "consumer")
        else:
            v.freeze(cmap, "Gemm reads the channels on another axis")
    return [ChannelMap(1, space)]


def _matmul(v: Visit) -> list[ChannelMap | None]:
    """MatMul with a constant 2-D weight: a dense layer over the last axis (fresh
    channels scored by their column); the channels it reads select rows. Between two
    computed tensors (attention) channels are kept."""
    weights = _weights(v, 1, 2)
    a_rank = v.rank(v.inputs[0])
    if weights is None or weights.ndim != 2 or a_rank < 2 or v.map(1) is not None:
        return v.keep_inputs("MatMul of two computed tensors" if weights is None
                             else "MatMul with weights of this shape")
    out_units = weights.shape[1]
    space = v.producer(out_units, np.abs(weights.astype(np.float64)).sum(axis=0))
    v.layer(out_units)
    v.slice(1, 1, space, "producer")
    cmap = v.map(0)
    if cmap is not None:
        if cmap.axis == a_rank - 1:
            v.slice(1, 0, cmap.elements, "consumer")
        else:
            v.freeze(cmap, "MatMul works along another axis")
    return [ChannelMap(len(v.out_shape()) - 1, space)]


def _shape(v: Visit) -> list[ChannelMap | None]:
    """Shape reads sizes, not values: nothing is tied (its result is followed as a
    shape value)."""
    return [None]


UNARY = (
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Cast", "CastLike", "Ceil",
    "Celu", "Clip", "Cos", "Cosh", "Dropout", "Elu", "Erf", "Exp", "Floor", "Gelu",
    "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN", "LeakyRelu", "Log", "Mish",
    "Neg", "Not", "Reciprocal", "Relu", "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin",
    "Sinh", "Softplus", "Softsign", "Sqrt", "Swish", "Tan", "Tanh", "ThresholdedRelu",
)
ELEMENTWISE = (
    "Add", "And", "BitShift", "Div", "Equal", "Greater", "GreaterOrEqual", "Less",
    "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul", "Or", "Pow", "PRelu", "Sub", "Sum",
    "Where", "Xor",
)
POOLING = ("AveragePool", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "LpPool",
           "MaxPool")
REDUCE = ("ArgMax", "ArgMin", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
          "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")

HANDLERS: dict[str, Callable[[Visit], list[ChannelMap | None]]] = {
    **dict.fromkeys(UNARY, _same),
    **dict.fromkeys(ELEMENTWISE, _elementwise),
    **dict.fromkeys(POOLING, _per_channel(())),
    **dict.fromkeys(REDUCE, _reduce),
    **dict.fromkeys(("Reshape", "Flatten", "Squeeze", "Unsqueeze"), _reshape),
    **dict.fromkeys(("Softmax", "LogSoftmax", "Hardmax"), _softmax),
    "BatchNormalization": _per_channel((1, 2, 3, 4)),
    "InstanceNormalization": _per_channel((1, 2)),
    "LayerNormalization": _layer_normalization,
    "Transpose": _transpose,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
    "Pad": _pad,
    "Resize": _resize,
    "Expand": _expand,
    "Tile": _tile,
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Shape": _shape,
}


# -- shape values: integer tensors computed from Shape ----------------------------------------
# Operations whose integer results are followed element by element; the inputs each
# operation reads as sizes (checked by its handler).
SHAPE_OPS = ("Shape", "Gather", "Slice", "Concat", "Cast", "Squeeze", "Unsqueeze", "Identity")
SIZE_INPUTS = {"Reshape": (1,), "Resize": (3,), "Expand": (1,), "Split": (1,)}


def _track_shape_value(v: Visit) -> None:
    """The shape value of ``v``'s first output, where its operation keeps one."""
    op = v.node.op_type
    if op not in SHAPE_OPS or not v.node.output or not v.node.output[0]:
        return
    result = _shape_value_of(v, op)
    if result is not None:
        v.graph.shape_values[v.node.output[0]] = result
        return
    # A channel count that goes where the pruner stops following it cannot be rewritten.
    for name in v.inputs:
        for item in v.graph.shape_values.get(name, ()):
            if item[0] == "dim":
                v.freeze(v.graph.maps.get(item[1]), f"its channel count is used by "
                                                    f"{op} in a way the pruner does not follow")


def _shape_value_of(v: Visit, op: str) -> list[ShapeItem] | None:
    if op == "Shape":
        name = v.inputs[0]
        rank = v.rank(name)
        cmap = v.graph.maps.get(name)
        start, end = int(v.attr("start", 0)), v.attr("end")
        axes = range(rank)[slice(start, None if end is None else int(end))]
        return [("dim", name, axis) if cmap is not None and axis == cmap.axis else ("stable",)
                for axis in axes]
    source = v.shape_value(0)
    if source is None:
        return None
    if op in ("Cast", "Squeeze", "Unsqueeze", "Identity"):
        return source
    if op == "Gather":
        indices = v.constant(1) if v.has(1) else None
        if indices is None or int(v.attr("axis", 0)) != 0:
            return None
        return [source[int(i)] for i in indices.reshape(-1).tolist()]
    if op == "Slice":
        values = [v.constant(i) if v.has(i) else None for i in range(1, 5)]
        if values[0] is None or values[1] is None or \
                (values[2] is not None and values[2].reshape(-1).tolist() not in ([0], [-1])):
            return None
        step = int(values[3].reshape(-1)[0]) if values[3] is not None else 1
        picked = range(*slice(int(values[0].reshape(-1)[0]), int(values[1].reshape(-1)[0]),
                              step).indices(len(source)))
        return [source[i] for i in picked]
    if op == "Concat":
        parts = []
        for i in range(len(v.inputs)):
            part = v.shape_value(i)
            if part is None:
                return None
            parts.extend(part)
        return parts
    return None


def tensor_shape(proto: onnx.ValueInfoProto) -> list[Any]:
    """The dimensions of a graph input or output: ints, names of free sizes, or None."""
    dims: list[Any] = []
    for dim in proto.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return dims
