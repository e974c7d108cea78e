"""The channel-dependency graph of a Keras model.

Every output channel of every tensor is mapped to a *channel element*. Producers
(convolutions, dense layers) create fresh elements; layers that keep channels
(BatchNormalization, activations, pooling, ...) pass their input's elements on;
``Add``-like layers unify their inputs' elements one to one (a union-find);
``Concatenate`` joins its inputs' element lists (so channel offsets map back to
each producer); ``Flatten`` and ``Reshape`` map the channel axis into the new last
axis when it lands there as a contiguous block (``(H, W, C) -> (H, W*C)`` tiles the
elements, ``(T, h*d) -> (T, h, d)`` ties position ``i`` of every block); a depthwise
convolution repeats each element ``depth_multiplier`` times. Recurrent layers
(LSTM, GRU, SimpleRNN, ConvLSTM, and Bidirectional around them) produce one element
per unit; MultiHeadAttention produces one per head (its output width stays), and
TimeDistributed is handled as the layer it wraps. A set of elements
that must go together is one *channel*; producers that share channels form a
*group*, scored and pruned as one. Elements that reach a model output or a layer
this module does not understand are *frozen*: their groups are left whole, and
the report says why.

Each kind of layer is handled by one small function in :data:`HANDLERS`, tried in
order: what channels its outputs carry given its inputs'. A layer no handler
takes freezes the channels through it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import keras
import numpy as np

from edgeai.pruning.channel_sets import OUTPUT_REASON, UnionFind

L = keras.layers

CONV = (L.Conv1D, L.Conv2D, L.Conv3D)
CONV_T = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
# Recurrent layers whose units are prunable: their cell's kernel [..., in, gates*units],
# recurrent kernel [..., units, gates*units] and bias [..., gates*units] hold the
# gates side by side, each block in unit order.
RECURRENT = (L.LSTM, L.GRU, L.SimpleRNN, L.ConvLSTM1D, L.ConvLSTM2D, L.ConvLSTM3D)
CONV_RECURRENT = (L.ConvLSTM1D, L.ConvLSTM2D, L.ConvLSTM3D)
MERGE = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
PASS_THROUGH = (
    L.BatchNormalization, L.Activation, L.ReLU, L.LeakyReLU, L.PReLU, L.ELU, L.Softmax,
    L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D, L.GaussianNoise,
    L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization, L.Identity,
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D,
    L.AveragePooling3D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D, L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D, L.Cropping1D, L.Cropping2D,
    L.Cropping3D, L.UpSampling1D, L.UpSampling2D, L.UpSampling3D, L.Rescaling,
)
# Keras-internal layers of keras.applications that act per channel.
PASS_THROUGH_NAMES = ("LayerScale", "StochasticDepth")
# Keras 3 records ``x + 3.0`` or ``inputs + x`` in a functional model as operations
# (keras.src.ops), not layers. These act element by element on the channels.
ELEMENTWISE_OPS = {
    "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Power",
    "Negative", "Abs", "Square", "Sqrt", "Exp", "Log", "Clip", "Relu", "Relu6", "Sigmoid",
    "HardSigmoid", "Silu", "Swish", "HardSilu", "HardSwish", "Gelu", "Tanh", "Elu", "Selu",
    "LeakyRelu", "Softplus", "Mish", "Cast",
}


def unwrap(layer):
    """The layer a TimeDistributed applies at every step (the layer itself otherwise)."""
    while isinstance(layer, L.TimeDistributed):
        layer = layer.layer
    return layer


def directions(layer) -> list:
    """The recurrent layers of ``layer``: itself, or a Bidirectional's forward and
    backward layers (empty when it is not a recurrent layer the pruner knows)."""
    if isinstance(layer, L.Bidirectional):
        inner = [layer.forward_layer, layer.backward_layer]
        return inner if all(isinstance(d, RECURRENT) for d in inner) else []
    return [layer] if isinstance(layer, RECURRENT) else []


def attention_projections(layer) -> list:
    """The query, key, value (and gate) projections of a MultiHeadAttention."""
    dense = [layer.query_dense, layer.key_dense, layer.value_dense]
    gate = getattr(layer, "_gate_dense", None)
    return dense + ([gate] if gate is not None else [])


def is_recurrent(layer) -> bool:
    """An LSTM/GRU/SimpleRNN/ConvLSTM, or a Bidirectional around one of them."""
    return bool(directions(unwrap(layer)))


def is_producer(layer) -> bool:
    """Does ``layer`` create output channels of its own (a prunable filter bank, the
    units of a recurrent layer, the heads of an attention layer)?"""
    layer = unwrap(layer)
    return isinstance(layer, CONV + CONV_T + SEPARABLE + (L.Dense, L.MultiHeadAttention)) \
        or is_recurrent(layer)


def is_depthwise_grouped(layer) -> bool:
    """A plain convolution whose groups equal its input and output channels."""
    groups = getattr(layer, "groups", 1)
    if groups <= 1 or not isinstance(layer, CONV) or not layer.built:
        return False
    return int(layer.kernel.shape[-2]) == 1 and groups == int(layer.filters)


def producer_width(layer) -> int:
    """Output channels (filters or units; heads of an attention layer; both directions'
    units of a Bidirectional) of a producer."""
    layer = unwrap(layer)
    if isinstance(layer, L.Bidirectional):
        return sum(producer_width(d) for d in directions(layer))
    if isinstance(layer, L.MultiHeadAttention):
        return int(layer.num_heads)
    if isinstance(layer, CONV_RECURRENT):
        return int(layer.filters)
    if isinstance(layer, L.Dense) or isinstance(layer, RECURRENT):
        return int(layer.units)
    return int(layer.filters)


@dataclass
class LayerRecord:
    """What the graph knows about one layer object (shared calls are merged).

    ``in_map``: the elements of its (first) input; ``space``: the fresh elements of
    a producer's output; ``out_map``: the elements its output carries (for every
    layer: which channels it carries, for omission and exactness).
    """

    layer: object
    path: str
    in_map: np.ndarray | None = None
    space: np.ndarray | None = None
    in_maps: list[np.ndarray] | None = None  # nested models: one map per input
    out_map: np.ndarray | None = None
    # MultiHeadAttention: the elements of its query, key and value inputs.
    inputs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class ChannelGraph:
    """Elements, the layers that hold them, and why some are frozen."""

    uf: UnionFind = field(default_factory=UnionFind)
    records: dict[int, LayerRecord] = field(default_factory=dict)
    frozen: list[tuple[np.ndarray, str, str]] = field(default_factory=list)
    order: list[int] = field(default_factory=list)
    # (elements in channel order, parts, layer): a grouped convolution or a
    # GroupNormalization stays valid only if each of its ``parts`` contiguous channel
    # blocks loses the same positions.
    constraints: list[tuple[np.ndarray, int, str]] = field(default_factory=list)

    def record(self, layer, path: str) -> LayerRecord:
        key = id(layer)
        if key not in self.records:
            self.records[key] = LayerRecord(layer, path)
            self.order.append(key)
        return self.records[key]

    def freeze(self, elements: np.ndarray, layer_name: str, reason: str) -> None:
        if elements is not None and len(elements):
            self.frozen.append((elements, layer_name, reason))

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            self.uf.union(x, y)


def _channel_dim(tensor) -> int | None:
    shape = tuple(tensor.shape)
    return int(shape[-1]) if shape and shape[-1] is not None else None


def _layers_graph(model):
    """(nodes by depth, inputs, outputs) of a functional or Sequential model."""
    graph = model
    if not hasattr(model, "_nodes_by_depth") or not model._nodes_by_depth:
        graph = getattr(model, "_functional", None) or model
    return graph._nodes_by_depth, list(graph.inputs), list(graph.outputs)


def build_graph(model) -> ChannelGraph:
    """Trace ``model`` into a :class:`ChannelGraph`. Raises ValueError for a model
    that is not a functional or Sequential graph (a subclassed model)."""
    graph = ChannelGraph()
    nodes, inputs, outputs = _layers_graph(model)
    if not nodes:
        raise ValueError("the model has no layer graph (a subclassed Model cannot be pruned; "
                         "save a Sequential or functional model)")
    maps: dict[int, np.ndarray] = {}
    for tensor in inputs:
        width = _channel_dim(tensor) or 1
        elements = graph.uf.make(width)
        graph.freeze(elements, "input", "model input")
        maps[id(tensor)] = elements
    _walk(graph, model, maps, prefix="")
    for tensor in outputs:
        graph.freeze(maps.get(id(tensor)), "output", OUTPUT_REASON)
    return graph


def _walk(graph: ChannelGraph, model, maps: dict[int, np.ndarray], prefix: str) -> None:
    nodes, inputs, _ = _layers_graph(model)
    for depth in sorted(nodes, reverse=True):
        for node in nodes[depth]:
            layer = node.operation
            if isinstance(layer, L.InputLayer):
                continue
            in_tensors = list(node.input_tensors)
            in_maps = [maps.get(id(t)) for t in in_tensors]
            if any(m is None for m in in_maps):
                # An input the walk has not reached (e.g. a constant): leave it whole.
                in_maps = [m if m is not None else graph.uf.make(_channel_dim(t) or 1)
                           for m, t in zip(in_maps, in_tensors, strict=True)]
            out_maps = _visit(graph, layer, node, in_maps, prefix + layer.name)
            for tensor, elements in zip(node.outputs, out_maps, strict=True):
                maps[id(tensor)] = elements


def _fresh_frozen(graph: ChannelGraph, node, name: str, reason: str) -> list[np.ndarray]:
    out = []
    for tensor in node.outputs:
        elements = graph.uf.make(_channel_dim(tensor) or 1)
        graph.freeze(elements, name, reason)
        out.append(elements)
    return out


@dataclass
class Visit:
    """One call of a layer: what a handler needs to decide its outputs' channels."""

    graph: ChannelGraph
    layer: object
    node: object
    in_maps: list[np.ndarray]
    name: str
    record: LayerRecord

    @property
    def first(self) -> np.ndarray | None:
        return self.in_maps[0] if self.in_maps else None

    @property
    def channels_last(self) -> bool:
        return getattr(self.layer, "data_format", "channels_last") != "channels_first"

    @property
    def rank(self) -> int:
        return len(self.node.outputs[0].shape)

    def remember_input(self) -> None:
        """Record the input's elements; a shared layer's calls must slice alike."""
        record, first = self.record, self.first
        if record.in_map is None:
            record.in_map = first
        elif first is not None and len(record.in_map) == len(first):
            self.graph.unify(record.in_map, first)

    def new_space(self, width: int) -> np.ndarray:
        """A producer's own output elements (made once per layer object)."""
        if self.record.space is None:
            self.record.space = self.graph.uf.make(width)
        return self.record.space

    def freeze_all(self, reason: str) -> list[np.ndarray]:
        """Channels through this layer are kept: inputs frozen, outputs fresh and frozen."""
        for elements in self.in_maps:
            self.graph.freeze(elements, self.name, reason)
        return _fresh_frozen(self.graph, self.node, self.name, reason)


def _visit(graph: ChannelGraph, layer, node, in_maps: list[np.ndarray],
           name: str) -> list[np.ndarray]:
    visit = Visit(graph, layer, node, in_maps, name, graph.record(layer, name))
    for matches, handle in HANDLERS:
        if matches(visit):
            out = handle(visit)
            break
    else:
        out = visit.freeze_all(f"{type(layer).__name__} is not understood by the pruner; "
                               "channels through it are kept")
    if out and visit.record.out_map is None:
        visit.record.out_map = np.concatenate(out) if len(out) > 1 else out[0]
    return out


# -- handlers: one per kind of layer ---------------------------------------------------
def _nested_model(visit: Visit) -> list[np.ndarray]:
    """A model used as a layer: walk it with its inputs' elements; a second call ties."""
    record, graph, layer = visit.record, visit.graph, visit.layer
    if record.in_maps is None:
        record.in_maps = list(visit.in_maps)
    else:  # a nested model called again shares its weights: tie its inputs
        for known, new in zip(record.in_maps, visit.in_maps, strict=False):
            if len(known) == len(new):
                graph.unify(known, new)
    inner_maps: dict[int, np.ndarray] = {}
    _, inner_inputs, inner_outputs = _layers_graph(layer)
    for tensor, elements in zip(inner_inputs, visit.in_maps, strict=False):
        inner_maps[id(tensor)] = elements
    _walk(graph, layer, inner_maps, prefix=visit.name + "/")
    return [inner_maps[id(t)] for t in inner_outputs]


def _depthwise_grouped_conv(visit: Visit) -> list[np.ndarray]:
    """Conv(groups == in == out channels) is a depthwise convolution: channels pass
    through one to one, and filters/groups follow the input's width."""
    visit.remember_input()
    return [visit.first]


def _producer(visit: Visit) -> list[np.ndarray]:
    """A convolution or dense layer: fresh output channels. A grouped one constrains
    its input and output channels to lose the same positions in every block."""
    layer = visit.layer
    visit.remember_input()
    if not visit.channels_last:
        why = "channels_first data format"
        for elements in visit.in_maps:
            visit.graph.freeze(elements, visit.name, why)
        space = visit.new_space(producer_width(layer))
        visit.graph.freeze(space, visit.name, why)
        return [space]
    fresh = visit.record.space is None
    space = visit.new_space(producer_width(layer))
    groups = int(getattr(layer, "groups", 1))
    if groups > 1:
        if fresh:
            visit.graph.constraints.append((space, groups, visit.name))
        visit.graph.constraints.append((visit.first, groups, visit.name))
    return [space]


def _depthwise(visit: Visit) -> list[np.ndarray]:
    """A depthwise convolution repeats each input channel ``depth_multiplier`` times."""
    if not visit.channels_last:
        return visit.freeze_all("channels_first data format")
    visit.remember_input()
    return [np.repeat(visit.first, int(visit.layer.depth_multiplier))]


def _group_normalization(visit: Visit) -> list[np.ndarray]:
    """Channels pass; each of its groups must lose the same positions."""
    visit.remember_input()
    visit.graph.constraints.append((visit.first, int(visit.layer.groups), visit.name))
    return [visit.first]


def _per_channel(visit: Visit) -> list[np.ndarray]:
    """A layer that acts on each channel alone (normalisation, activation, pooling...)."""
    axis = getattr(visit.layer, "axis", -1)
    if isinstance(visit.layer, L.BatchNormalization) and axis not in (-1, visit.rank - 1):
        visit.graph.freeze(visit.first, visit.name,
                           f"normalises axis {axis}, not the channel axis")
        return _fresh_frozen(visit.graph, visit.node, visit.name, f"normalises axis {axis}")
    visit.remember_input()
    return [visit.first]


def _elementwise_op(visit: Visit) -> list[np.ndarray]:
    """A keras.ops node (``x + y``, ``relu(x)``) acts element by element."""
    if len(visit.in_maps) == 1:
        return [visit.first]
    return _merge(visit.graph, visit.node, visit.in_maps, visit.name)


def _reshape(visit: Visit) -> list[np.ndarray]:
    """Reshape keeps the row-major order of the elements, so with C channels last in
    and D features last out, element ``f`` is channel ``f % C`` and feature ``f % D``:

    * D a multiple of C (``(H, W, C) -> (H, W*C)``): feature ``d`` is channel
      ``d % C``, the elements tiled;
    * C a multiple of D > 1 (``(T, h*d) -> (T, h, d)``): feature ``d`` holds channels
      ``d, d + D, ...``, which are tied so that they go together;
    * otherwise no feature is one channel: the channels are kept.

    The other axes never change size, so only the last target dimension is rewritten.
    """
    before, after = _last_dim(visit.node.input_tensors[0]), _last_dim(visit.node.outputs[0])
    if before is None or after is None:
        return visit.freeze_all("Reshape of an input or to a shape whose last size is unknown")
    if after % before and (before % after or after == 1):
        shapes = (tuple(visit.node.input_tensors[0].shape)[1:],
                  tuple(visit.node.outputs[0].shape)[1:])
        return visit.freeze_all(f"Reshape {shapes[0]} -> {shapes[1]} does not keep the "
                                f"{before} channels as one contiguous last-axis block")
    visit.remember_input()
    first = visit.first
    if after % before == 0:
        return [np.tile(first, after // before)]
    for start in range(after, before, after):
        visit.graph.unify(first[:after], first[start:start + after])
    return [first[:after]]


def _last_dim(tensor) -> int | None:
    shape = tuple(tensor.shape)
    return int(shape[-1]) if len(shape) > 1 and shape[-1] is not None else None


def _permute(visit: Visit) -> list[np.ndarray]:
    """Permute: channels pass when the last axis stays last; else they are kept."""
    dims = tuple(visit.layer.dims)
    if dims and dims[-1] == len(dims):
        return [visit.first]
    return visit.freeze_all(f"Permute{dims} moves the channel axis away from the last axis")


def _keep_producer(visit: Visit, why: str) -> list[np.ndarray]:
    """A producer the pruner leaves whole: its inputs and its own channels are frozen."""
    visit.remember_input()
    for elements in visit.in_maps:
        visit.graph.freeze(elements, visit.name, why)
    visit.graph.freeze(visit.new_space(producer_width(visit.layer)), visit.name, why)
    return _fresh_frozen(visit.graph, visit.node, visit.name, why)


def _recurrent_refusal(layer) -> str | None:
    """Why the units of a recurrent layer (or Bidirectional) cannot be pruned, or None."""
    inner = directions(layer)
    if any(getattr(d, "stateful", False) for d in inner):
        return "a stateful recurrent layer keeps states of its width between calls"
    if any(getattr(d, "data_format", "channels_last") == "channels_first" for d in inner):
        return "channels_first data format"
    if len(inner) == 2 and (type(inner[0]) is not type(inner[1])
                            or producer_width(inner[0]) != producer_width(inner[1])):
        return "its forward and backward layers differ in kind or width"
    return None


def _recurrent(visit: Visit) -> list[np.ndarray]:
    """An LSTM/GRU/SimpleRNN/ConvLSTM produces one channel per unit; its input features
    follow the channels before it. A Bidirectional produces both directions' units
    side by side, which lose the same positions (Keras builds both alike); merged by
    sum/ave/mul, unit ``i`` of both directions is one channel. Every returned state
    carries its direction's units; initial states passed in are tied to them."""
    layer, node = visit.layer, visit.node
    why = _recurrent_refusal(layer)
    inner = directions(layer)
    states = 2 if isinstance(inner[0], (L.LSTM,) + CONV_RECURRENT) else 1
    initial = _initial_states(node)
    if why is None and len(visit.in_maps) > 1 and \
            len(initial) != len(visit.in_maps) - 1:
        why = "called with inputs other than the sequence and its initial states"
    if why is not None:
        return _keep_producer(visit, why)
    visit.remember_input()
    fresh = visit.record.space is None
    space = visit.new_space(producer_width(layer))
    units = len(space) // len(inner)
    parts = [space[i * units:(i + 1) * units] for i in range(len(inner))]
    for elements, part in zip(visit.in_maps[1:], [p for p in parts for _ in range(states)],
                              strict=False):
        if len(elements) == len(part):
            visit.graph.unify(elements, part)
    if len(inner) == 1:
        return [space] * len(node.outputs)
    merge = getattr(layer, "merge_mode", "concat")
    if merge in ("sum", "ave", "mul"):
        visit.graph.unify(parts[0], parts[1])
        merged = [parts[0]]
    else:
        if fresh:
            visit.graph.constraints.append((space, 2, visit.name))
        merged = [space] if merge == "concat" else parts
    state_maps = [p for p in parts for _ in range(states)]
    return (merged + state_maps)[:len(node.outputs)]


def _initial_states(node) -> list:
    """The initial-state tensors a recurrent layer was called with (flattened)."""
    arguments = getattr(node, "arguments", None)
    kwargs = dict(getattr(arguments, "kwargs", None) or {})
    args = list(getattr(arguments, "args", None) or ())
    initial = kwargs.get("initial_state", args[1] if len(args) > 1 else None)
    if initial is None:
        return []
    return list(initial) if isinstance(initial, (list, tuple)) else [initial]


def _attention(visit: Visit) -> list[np.ndarray]:
    """MultiHeadAttention: one channel per head (its query/key/value/output weights
    sliced per head); its query, key and value features follow their inputs. Its
    output width is kept, so channels tied to its output stay whole."""
    layer, node = visit.layer, visit.node
    try:
        call = inspect.signature(layer.call).bind(*node.arguments.args,
                                                   **node.arguments.kwargs).arguments
    except (TypeError, AttributeError):
        return _keep_producer(visit, "MultiHeadAttention called in a way the pruner "
                                     "cannot read")
    if call.get("return_attention_scores") or len(node.outputs) != 1:
        return _keep_producer(visit, "its attention scores are returned, one row per head")
    maps = {id(t): m for t, m in zip(node.input_tensors, visit.in_maps, strict=True)}
    roles = {"query": call.get("query"), "value": call.get("value")}
    roles["key"] = call.get("key") if call.get("key") is not None else roles["value"]
    record = visit.record
    for role, tensor in roles.items():
        elements = maps.get(id(tensor))
        if elements is None:
            return _keep_producer(visit, f"its {role} input is not a tensor the pruner "
                                         "follows")
        if role not in record.inputs:
            record.inputs[role] = elements
        elif len(record.inputs[role]) == len(elements):
            visit.graph.unify(record.inputs[role], elements)
    used = {id(t) for t in roles.values()}
    for tensor, elements in zip(node.input_tensors, visit.in_maps, strict=True):
        if id(tensor) not in used:  # masks: their last axis is not channels
            visit.graph.freeze(elements, visit.name, "attention mask input")
    visit.new_space(producer_width(layer))
    return _fresh_frozen(visit.graph, node, visit.name,
                         "MultiHeadAttention keeps its output width (its heads are pruned "
                         "instead)")


@dataclass
class _StepShapes:
    """The shape of one tensor at one time step (the time axis dropped)."""

    shape: tuple


class _StepNode:
    """A TimeDistributed call seen from the layer it wraps: every tensor without its
    time axis, so that the wrapped layer's handler decides as it would alone."""

    def __init__(self, node):
        self.input_tensors = [_StepShapes(_drop_time(t)) for t in node.input_tensors]
        self.outputs = [_StepShapes(_drop_time(t)) for t in node.outputs]
        self.arguments = getattr(node, "arguments", None)


def _drop_time(tensor) -> tuple:
    shape = tuple(tensor.shape)
    return shape[:1] + shape[2:]


def _time_distributed(visit: Visit) -> list[np.ndarray]:
    """TimeDistributed(layer): the wrapped layer's rule, applied to one time step."""
    inner = visit.layer.layer
    if isinstance(inner, keras.Model):
        return visit.freeze_all("TimeDistributed around a model")
    step = Visit(visit.graph, inner, _StepNode(visit.node), visit.in_maps, visit.name,
                 visit.record)
    for matches, handle in HANDLERS:
        if matches(step):
            return handle(step)
    return visit.freeze_all(f"TimeDistributed({type(inner).__name__}) is not understood by "
                            "the pruner; channels through it are kept")


def _merge_layer(visit: Visit) -> list[np.ndarray]:
    return _merge(visit.graph, visit.node, visit.in_maps, visit.name)


def _concatenate(visit: Visit) -> list[np.ndarray]:
    """On the channel axis: the inputs' channels side by side (offsets map back to
    each producer). On another axis: the inputs' channels are the same channels."""
    if visit.layer.axis in (-1, visit.rank - 1):
        return [np.concatenate(visit.in_maps)]
    for other in visit.in_maps[1:]:
        if len(other) == len(visit.first):
            visit.graph.unify(visit.first, other)
    return [visit.first]


def _flatten(visit: Visit) -> list[np.ndarray]:
    """(H, W, C) -> H*W*C: each channel's elements tiled over the positions."""
    shape = tuple(visit.node.input_tensors[0].shape)[1:-1]
    if not all(d is not None for d in shape):
        return visit.freeze_all("Flatten of an input with unknown spatial size")
    return [np.tile(visit.first, int(np.prod(shape)) if shape else 1)]


def _is_elementwise_op(visit: Visit) -> bool:
    layer = visit.layer
    return (not isinstance(layer, keras.layers.Layer) and type(layer).__name__ in ELEMENTWISE_OPS
            and type(layer).__module__.startswith("keras.src.ops"))


def _is_per_channel(visit: Visit) -> bool:
    layer = visit.layer
    return isinstance(layer, PASS_THROUGH) or type(layer).__name__ in PASS_THROUGH_NAMES or (
        isinstance(layer, L.LayerNormalization) and _last_axis_only(layer, visit.node))


# Tried in order; the first that matches a layer decides its outputs' channels.
HANDLERS = [
    (lambda v: isinstance(v.layer, keras.Model), _nested_model),
    (lambda v: isinstance(v.layer, L.TimeDistributed), _time_distributed),
    (lambda v: is_depthwise_grouped(v.layer), _depthwise_grouped_conv),
    (lambda v: is_recurrent(v.layer), _recurrent),
    (lambda v: isinstance(v.layer, L.MultiHeadAttention), _attention),
    (lambda v: is_producer(v.layer), _producer),
    (lambda v: isinstance(v.layer, DEPTHWISE), _depthwise),
    (lambda v: isinstance(v.layer, L.GroupNormalization) and v.layer.axis in (-1, v.rank - 1),
     _group_normalization),
    (_is_per_channel, _per_channel),
    (_is_elementwise_op, _elementwise_op),
    (lambda v: isinstance(v.layer, L.Reshape), _reshape),
    (lambda v: isinstance(v.layer, L.Permute), _permute),
    (lambda v: isinstance(v.layer, MERGE), _merge_layer),
    (lambda v: isinstance(v.layer, L.Concatenate), _concatenate),
    (lambda v: isinstance(v.layer, L.Flatten) and v.channels_last, _flatten),
]


def _last_axis_only(layer, node) -> bool:
    axis = layer.axis
    rank = len(node.outputs[0].shape)
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return [a % rank for a in axes] == [rank - 1]


def _merge(graph: ChannelGraph, node, in_maps: list[np.ndarray], name: str) -> list[np.ndarray]:
    """Element-wise combination: equal widths tie channel to channel; width 1 broadcasts."""
    widths = {len(m) for m in in_maps}
    if len(widths) == 1:
        for other in in_maps[1:]:
            graph.unify(in_maps[0], other)
        return [in_maps[0]]
    if len(widths - {1}) == 1:
        wide = [m for m in in_maps if len(m) != 1]
        for other in wide[1:]:
            graph.unify(wide[0], other)
        return [wide[0]]
    for elements in in_maps:
        graph.freeze(elements, name, "inputs of different widths")
    return _fresh_frozen(graph, node, name, "inputs of different widths")


def iterate_layers(model):
    """Every layer, nested models' layers included (each object once)."""
    for _, layer in iterate_paths(model):
        yield layer


def iterate_paths(model, prefix: str = ""):
    """(path, layer) for every layer, nested ones as ``outer/inner`` (each object once)."""
    seen: set[int] = set()
    stack = [(prefix + layer.name, layer) for layer in reversed(model.layers)]
    while stack:
        path, layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield path, layer
        if isinstance(layer, keras.Model):
            stack.extend((f"{path}/{inner.name}", inner) for inner in reversed(layer.layers))
