"""The PyTorch engine's analysis, rewrite and masking on torch-pruning's DepGraph.

torch-pruning (DepGraph, CVPR 2023) traces the model and groups every layer whose
channels are tied to a producer's output channels (BatchNorm, residual adds,
concatenations, flatten into a linear layer, depthwise convolutions). This module
turns its groups into the pipeline's :class:`ChannelGroup` (L1 scores from the
producers' filters only, model outputs and structures it cannot keep valid
marked), rewrites a *copy* of the model for a plan (one bad group never fails the
job), and masks the original for the exactness check.

Two things are added to torch-pruning's trace (:func:`trace`):

* recurrent layers (GRU, LSTM, RNN) are one node each, whatever they do inside,
  with :class:`RecurrentPruner` removing hidden units from every gate block, layer
  and direction alike;
* every shape operation (permute, transpose, view, reshape, flatten, squeeze,
  indexing) gets the exact channel mapping, computed by applying the operation to a
  tensor of channel numbers: ``[B, C, F, T] -> [B, T, C*F]`` maps channel ``c`` to
  features ``c*F .. c*F+F-1``. Where no output axis holds whole channels, where only
  some channels are picked, or where a layer reads an axis that does not hold them
  (a Linear over the time axis), the channels are kept and the report says why;
  a size written in the code (``x.reshape(b, 12, 80)``) is found when the pruned
  copy does not run, and the group it stops is left whole.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode

from edgeai.pruning.pipeline import Analysis, ChannelGroup, LayerInfo, Plan
from edgeai.pruning.report import LayerStatus

PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
             nn.ConvTranspose3d, nn.Linear)
UNSUPPORTED = (nn.MultiheadAttention, nn.RNNBase, nn.RNNCellBase, nn.Embedding,
               nn.EmbeddingBag, nn.Transformer, nn.TransformerEncoderLayer,
               nn.TransformerDecoderLayer)


def pruned_by_heads(module: nn.Module) -> bool:
    """A MultiheadAttention torch-pruning can narrow: one packed q/k/v projection
    (``kdim == vdim == embed_dim``). Its embed dimension is pruned with the
    residual stream, the same positions in every head, so heads stay equal."""
    return isinstance(module, nn.MultiheadAttention) and bool(module._qkv_same_embed_dim)


def keep_attention_scale(attention: nn.MultiheadAttention, old_head_dim: int) -> None:
    """Rescale the query projection after heads got narrower.

    Attention divides q.k by sqrt(head_dim); with fewer dimensions per head that
    divisor shrinks. Multiplying the query weights and bias by sqrt(new / old)
    restores the old scale, so removing dimensions whose q or k is zero changes
    nothing (the exactness test relies on it).
    """
    new_head_dim = attention.embed_dim // attention.num_heads
    attention.head_dim = new_head_dim
    if new_head_dim == old_head_dim:
        return
    factor = math.sqrt(new_head_dim / old_head_dim)
    embed = attention.embed_dim
    with torch.no_grad():
        attention.in_proj_weight[:embed] *= factor
        if attention.in_proj_bias is not None:
            attention.in_proj_bias[:embed] *= factor


RECURRENT = (nn.GRU, nn.LSTM, nn.RNN)


def prunable_recurrent(module: nn.Module) -> bool:
    """A GRU/LSTM/RNN whose hidden units :class:`RecurrentPruner` can remove (an LSTM
    with projections, ``proj_size``, keeps them)."""
    return type(module) in RECURRENT and not getattr(module, "proj_size", 0)


def left_whole(module: nn.Module) -> bool:
    """A structure whose units are never removed (recurrent cells, embedding, other
    attention)."""
    return isinstance(module, UNSUPPORTED) and not pruned_by_heads(module) \
        and not prunable_recurrent(module)


def _gates(layer: nn.RNNBase) -> int:
    return layer.weight_hh_l0.shape[0] // layer.hidden_size


def _directions(layer: nn.RNNBase) -> list[str]:
    return ["", "_reverse"] if layer.bidirectional else [""]


def _units(layer: nn.RNNBase, idxs) -> list[int]:
    """Hidden positions from output channels (``d * hidden + unit`` per direction)."""
    return sorted({int(i) % layer.hidden_size for i in idxs})


def _unit_rows(layer: nn.RNNBase, units: list[int]) -> list[int]:
    """The rows of ``units`` in every gate block (i, f, g, o / r, z, n / one)."""
    return [g * layer.hidden_size + u for g in range(_gates(layer)) for u in units]


def _layer_columns(layer: nn.RNNBase, units: list[int]) -> list[int]:
    """The input columns of a stacked layer that read ``units`` (every direction)."""
    return [d * layer.hidden_size + u for d in range(len(_directions(layer))) for u in units]


class RecurrentPruner(tp.pruner.function.BasePruningFunc):
    """Hidden units and input features of a GRU/LSTM/RNN (torch-pruning has none for
    GRU and RNN; its LSTM one mis-slices the gate blocks).

    Output channel ``d * hidden_size + u`` is unit ``u`` of direction ``d``; a unit
    goes from every gate block of ``weight_ih``/``weight_hh``/biases, from the
    recurrent columns, and from every stacked layer and direction alike (they share
    ``hidden_size``), the next layer losing the matching input columns. Input
    channels are the first layer's ``weight_ih`` columns."""

    TARGET_MODULES = RECURRENT

    def prune_out_channels(self, layer: nn.Module, idxs):
        units = _units(layer, idxs)
        keep = [u for u in range(layer.hidden_size) if u not in set(units)]
        rows = _unit_rows(layer, keep)
        for index in range(layer.num_layers):
            for suffix in _directions(layer):
                name = f"_l{index}{suffix}"
                ih = getattr(layer, "weight_ih" + name).data[rows]
                if index:
                    ih = ih[:, _layer_columns(layer, keep)]
                self._set(layer, "weight_ih" + name, ih)
                self._set(layer, "weight_hh" + name,
                          getattr(layer, "weight_hh" + name).data[rows][:, keep])
                for bias in ("bias_ih" + name, "bias_hh" + name):
                    if getattr(layer, bias, None) is not None:
                        self._set(layer, bias, getattr(layer, bias).data[rows])
        layer.hidden_size = len(keep)
        return self._refresh(layer)

    def prune_in_channels(self, layer: nn.Module, idxs):
        keep = [i for i in range(layer.input_size) if i not in set(idxs)]
        for suffix in _directions(layer):
            name = "weight_ih_l0" + suffix
            self._set(layer, name, getattr(layer, name).data[:, keep])
        layer.input_size = len(keep)
        return self._refresh(layer)

    @staticmethod
    def _set(layer: nn.Module, name: str, data: torch.Tensor) -> None:
        old = getattr(layer, name)
        setattr(layer, name, nn.Parameter(data.clone(), requires_grad=old.requires_grad))

    @staticmethod
    def _refresh(layer: nn.Module) -> nn.Module:
        layer._flat_weights = [getattr(layer, n) if hasattr(layer, n) else None
                               for n in layer._flat_weights_names]
        layer.flatten_parameters()
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.hidden_size * len(_directions(layer))

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.input_size


def unit_l1(layer: nn.RNNBase) -> torch.Tensor:
    """L1 norm of each unit's weights (its rows in every gate block of every layer's
    ``weight_ih`` and ``weight_hh``), one value per output channel."""
    hidden, gates = layer.hidden_size, _gates(layer)
    scores = []
    for suffix in _directions(layer):
        total = torch.zeros(hidden, dtype=torch.float64)
        for index in range(layer.num_layers):
            for kind in ("weight_ih", "weight_hh"):
                weight = getattr(layer, f"{kind}_l{index}{suffix}").detach().abs()
                total += weight.sum(1).reshape(gates, hidden).sum(0).to(torch.float64)
        scores.append(total)
    return torch.cat(scores)


def out_channels(module: nn.Module) -> int:
    """Output channels (units) of a producer layer."""
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.out_channels


def why_whole(module: nn.Module) -> str:
    """Why a structure in :data:`UNSUPPORTED` keeps all its units."""
    if isinstance(module, nn.RNNBase):
        return ("its hidden units feed an output projection (proj_size); only its input "
                "width follows the layer before it")
    if isinstance(module, nn.RNNCellBase):
        return ("a cell is called step by step by your code, which torch-pruning cannot "
                "follow; only its input width follows the layer before it")
    if isinstance(module, (nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoderLayer,
                           nn.TransformerDecoderLayer)):
        return ("its query/key/value/output projections are split into heads, and removing "
                "units would have to keep every head the same size")
    return "its units are looked up by index, not produced by filters"


def structure_channels(module: nn.Module) -> int:
    """Output width of a structure left whole (attention, recurrent, embedding layers)."""
    if isinstance(module, nn.RNNBase):
        return module.hidden_size * (2 if module.bidirectional else 1)
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return module.embedding_dim
    return int(getattr(module, "d_model", 0) or getattr(module, "hidden_size", 0) or 0)


def filter_l1(module: nn.Module) -> torch.Tensor:
    """L1 norm of each output filter's kernel weights (Li et al.): one value per channel."""
    weight = module.weight.detach().abs()
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        # [in, out / groups, k...]: output channels live on dim 1, repeated per group.
        per = weight.transpose(0, 1).reshape(weight.shape[1], -1).sum(1)
        return per.repeat(module.groups)
    return weight.reshape(weight.shape[0], -1).sum(1)


def _is_out_fn(dep) -> bool:
    name = getattr(dep.handler, "__name__", str(dep.handler))
    return "out_channels" in name


def group_scores(group, root_channels: int) -> torch.Tensor:
    """Summed L1 norms of every producer whose output channels the group removes."""
    scores = torch.zeros(root_channels, dtype=torch.float64)
    for item in group:
        dep, idxs = item.dep, item.idxs
        module = dep.target.module
        if pruned_by_heads(module) and _is_out_fn(dep):
            module = module.out_proj  # the attention's output units are out_proj's rows
        elif not isinstance(module, PRODUCERS + RECURRENT) or not _is_out_fn(dep):
            continue
        local = (unit_l1(module) if isinstance(module, RECURRENT)
                 else filter_l1(module).to(torch.float64))
        root_idxs = item.root_idxs
        for local_i, root_i in zip(idxs, root_idxs, strict=False):
            if root_i is not None and local_i < local.numel() and root_i < root_channels:
                scores[root_i] += local[local_i]
    return scores


CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
         nn.ConvTranspose3d)


def channel_groups(group) -> int:
    """How many equal channel groups the group's channels fall into.

    A grouped convolution (not depthwise) or a GroupNorm splits channels into
    contiguous groups; they stay valid when every group loses the same positions.
    """
    count = 1
    for item in group:
        module = item.dep.target.module
        if isinstance(module, nn.GroupNorm):
            count = math.lcm(count, module.num_groups)
        elif pruned_by_heads(module):
            count = math.lcm(count, module.num_heads)
        elif isinstance(module, RECURRENT) and module.bidirectional and _is_out_fn(item.dep):
            count = math.lcm(count, 2)  # both directions share hidden_size
        elif isinstance(module, CONVS) and module.groups > 1 and not (
                module.groups == module.in_channels == module.out_channels):
            count = math.lcm(count, module.groups)
    return count


# -- tracing ------------------------------------------------------------------------
# Operations that only move elements: their channel mapping is found by replaying them.
MOVERS = frozenset({"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis",
                    "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "t",
                    "__getitem__", "narrow", "select",
                    # their ATen names, as a rebuilt torch.export program calls them
                    "_unsafe_view", "slice"})
CONCATS = frozenset({"cat", "concat", "concatenate"})
# Layers that read and write channels on axis 1, and those that use the last axis.
CHANNELS_FIRST = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                  nn.ConvTranspose3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
                  nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
CHANNELS_LAST = (nn.Linear, nn.LayerNorm, nn.RNNBase, nn.MultiheadAttention)
# Modules whose inside torch-pruning handles as a whole: their operations are not ours.
OPAQUE = (nn.RNNBase, nn.MultiheadAttention)


@dataclass
class _Op:
    """One traced operation: its output shape, its first input's, and for a shape
    operation a function that applies it again to another tensor."""

    name: str
    shape: tuple[int, ...]
    in_shape: tuple[int, ...] | None = None
    replay: Callable[[torch.Tensor], torch.Tensor] | None = None
    # A concatenation: the autograd nodes of its inputs, in order, and its axis.
    joined: tuple[Any, ...] = ()
    dim: int | None = None


class _Recorder(TorchFunctionMode):
    """Records every torch operation of a forward by the autograd node it creates
    (torch-pruning's nodes are those autograd nodes), except inside :data:`OPAQUE`."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[Any, _Op] = {}
        self.inside = 0
        self.kept: dict[nn.Module, str] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self.inside or not isinstance(result, torch.Tensor) or result.grad_fn is None:
            return result
        # An ATen operation (torch.ops.aten.view.default) goes by its operator's name.
        name = getattr(func, "_opname", None) or getattr(func, "__name__", "")
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        replay = None
        if name in MOVERS and first is not None:
            rest = args[1:]

            def replay(tensor, func=func, rest=rest, kwargs=kwargs):
                return func(tensor, *rest, **kwargs)
        joined, dim = (), None
        if name in CONCATS and args and isinstance(args[0], (list, tuple)):
            joined = tuple(t.grad_fn for t in args[0])
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        # The first operation to create a node names it (x.contiguous() may return x).
        self.ops.setdefault(result.grad_fn, _Op(name, tuple(result.shape),
                                                tuple(first.shape) if first is not None
                                                else None, replay, joined, dim))
        return result

    def enter(self, module: nn.Module, *_: Any) -> None:
        if isinstance(module, OPAQUE):
            self.inside += 1

    def leave(self, module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(module, OPAQUE):
            self.inside -= 1
        tensor = output[0] if isinstance(output, (tuple, list)) and output else output
        if isinstance(tensor, torch.Tensor) and tensor.grad_fn is not None:
            self.ops.setdefault(tensor.grad_fn, _Op(type(module).__name__, tuple(tensor.shape)))


class _RecurrentOutput(torch.autograd.Function):
    """A recurrent layer's outputs as one autograd node over its input and weights, so
    that torch-pruning sees the layer, not its time steps (never differentiated)."""

    @staticmethod
    def forward(ctx, count, *tensors):
        ctx.count = len(tensors)
        outputs = tuple(t.clone() for t in tensors[count:])
        return outputs if len(outputs) > 1 else outputs[0]

    @staticmethod
    def backward(ctx, *grads):
        return (None,) * (ctx.count + 1)


class _RecurrentState(_RecurrentOutput):
    """The final hidden (and cell) states, one node fed by the layer's output node:
    their last axis is one direction's units (torch-pruning would take it for all)."""


def _opaque_recurrent(recorder: _Recorder, module: nn.Module, args: tuple, kwargs: dict,
                      output: Any) -> Any:
    """Forward hook: replace a GRU/LSTM/RNN's outputs by :class:`_RecurrentOutput`'s."""
    sequence = args[0] if args else kwargs.get("input")
    if not isinstance(sequence, torch.Tensor):
        recorder.kept[module] = "it is called with a packed sequence"
        return None
    initial = args[1] if len(args) > 1 else kwargs.get("hx")
    initial = [] if initial is None else (list(initial) if isinstance(initial, tuple)
                                          else [initial])
    if initial:
        recorder.kept[module] = ("it is called with an initial state, whose width its "
                                 "hidden units would have to follow")
    out, state = output
    states = list(state) if isinstance(state, tuple) else [state]
    inputs = [sequence, *initial, *module.parameters()]
    new_out = _RecurrentOutput.apply(len(inputs), *inputs, out.detach())
    new_states = _RecurrentState.apply(1, new_out, *(s.detach() for s in states))
    new_states = list(new_states) if isinstance(new_states, tuple) else [new_states]
    recorder.ops[new_out.grad_fn] = _Op("recurrent", tuple(out.shape), tuple(sequence.shape))
    recorder.ops[new_states[0].grad_fn] = _Op("recurrent_state", tuple(states[0].shape),
                                              tuple(out.shape))
    return new_out, (tuple(new_states) if isinstance(state, tuple) else new_states[0])


def trace(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model``, with recurrent layers as single
    prunable nodes and exact channel mappings through shape operations.

    ``graph.refused`` maps the nodes whose channels must be kept to why.
    """
    recurrent = RecurrentPruner()
    recorder = _Recorder()
    hooks = [nn.modules.module.register_module_forward_pre_hook(recorder.enter),
             nn.modules.module.register_module_forward_hook(recorder.leave)]
    hooks += [module.register_forward_hook(
        lambda m, a, k, o: _opaque_recurrent(recorder, m, a, k, o), with_kwargs=True)
        for module in model.modules() if isinstance(module, RECURRENT)]
    try:
        with recorder:
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example,
                customized_pruners={kind: recurrent for kind in RECURRENT})
    finally:
        for hook in hooks:
            hook.remove()
    graph.refused = follow_layouts(graph, recorder)
    return graph


# -- channel layouts ------------------------------------------------------------------
class _ChannelMapping:
    """torch-pruning index mapping through a shape operation: ``channel_of[j]`` is the
    input channel at output position ``j``. Forward: a channel to all its positions;
    reverse: a position to its channel."""

    def __init__(self, channel_of: list[int], reverse: bool):
        self.channel_of = channel_of
        self.reverse = reverse
        self.positions: dict[int, list[int]] = {}
        for position, channel in enumerate(channel_of):
            self.positions.setdefault(channel, []).append(position)

    def __call__(self, idxs):
        hybrid = tp._helpers._HybridIndex
        if self.reverse:
            seen, mapped = set(), []
            for i in idxs:
                if i.idx < len(self.channel_of):
                    item = hybrid(idx=self.channel_of[i.idx], root_idx=i.root_idx)
                    if item not in seen:
                        seen.add(item)
                        mapped.append(item)
            return mapped
        return [hybrid(idx=j, root_idx=i.root_idx) for i in idxs
                for j in self.positions.get(i.idx, ())]


def _topological(graph: tp.DependencyGraph) -> list:
    nodes = list(graph.module2node.values())
    waiting = {node: len(set(node.inputs)) for node in nodes}
    ready = [node for node in nodes if not waiting[node]]
    order = []
    while ready:
        node = ready.pop()
        order.append(node)
        for out in set(node.outputs):
            waiting[out] -= 1
            if not waiting[out]:
                ready.append(out)
    return order


def _is_op(module: Any) -> bool:
    """A node torch-pruning made for an operation (or a parameter), not a layer."""
    return not isinstance(module, nn.Module) or type(module).__module__.startswith(
        "torch_pruning")


def _carried_axis(axis: int, before: tuple, after: tuple | None) -> int | None:
    """Where the channel axis is after an element-wise, broadcasting, pooling or
    reducing operation (same rank: where it was; fewer axes: the last stays last)."""
    if after is None or len(after) == len(before):
        return axis
    if len(after) > len(before):
        candidates = [axis + len(after) - len(before), axis]
    else:
        drop = len(before) - len(after)
        candidates = [axis - drop, axis] if axis == len(before) - 1 else [axis, axis - drop]
    return next((c for c in candidates if 0 <= c < len(after) and after[c] == before[axis]),
                None)


def _replayed_mapping(op: _Op, axis: int, shape: tuple) -> tuple[int, list[int]] | str:
    """(output axis, input channel at each of its positions) of a shape operation, or
    why the channels cannot follow it: no output axis holds whole channels, or it keeps
    only some of them (by positions written in the code)."""
    mapped = _channel_numbers(op, axis, shape)
    where = f"{op.name} {list(shape)} -> {list(op.shape)}"
    if mapped is None:
        return f"{where} spreads the channels of axis {axis} over several axes"
    if set(mapped[1]) != set(range(shape[axis])):
        return f"{where} keeps only some of the channels of axis {axis}, by fixed positions"
    return mapped


def _channel_numbers(op: _Op, axis: int, shape: tuple) -> tuple[int, list[int]] | None:
    """Replay ``op`` on a tensor holding each position's channel number."""
    view = [1] * len(shape)
    view[axis] = shape[axis]
    numbers = torch.arange(shape[axis]).view(view).expand(*shape).clone()
    try:
        out = op.replay(numbers)
    except Exception:  # noqa: BLE001 - an operation we cannot replay keeps its channels
        return None
    if tuple(out.shape) != op.shape:
        return None
    for candidate in sorted(range(out.dim()), key=lambda d: (-out.shape[d], -d)):
        if out.shape[candidate] < 2:
            break
        rows = out.movedim(candidate, -1).reshape(-1, out.shape[candidate])
        if bool((rows == rows[:1]).all()):
            return candidate, rows[0].tolist()
    return None


def _set_mapping(source, target, channel_of: list[int]) -> None:
    """Channel ``channel_of[j]`` of ``source`` is position ``j`` of ``target``."""
    for dep in source.dependencies:
        if dep.target is target:
            dep.index_mapping[0] = _ChannelMapping(channel_of, reverse=False)
    for dep in target.dependencies:
        if dep.target is source:
            dep.index_mapping[0] = _ChannelMapping(channel_of, reverse=True)
    # torch-pruning recomputes reshape mappings on every group; this one is exact.
    target.type = tp.ops.OPTYPE.ELEMENTWISE


def _reads(module: nn.Module, rank: int) -> int | None:
    if isinstance(module, CHANNELS_FIRST):
        return 1 if rank > 1 else None
    if isinstance(module, CHANNELS_LAST):
        return rank - 1
    return None


INPUT_SIDE, BOTH_SIDES = "input", "both"


def follow_layouts(graph: tp.DependencyGraph, recorder: _Recorder,
                   ) -> dict[Any, tuple[str, str]]:
    """Walk the graph in order, knowing on which axis of each tensor the channels are;
    give every shape operation its exact channel mapping. Returns the nodes whose
    channels must be kept, with why and on which side (:data:`INPUT_SIDE`: the layer
    reads another axis than the channels', so only what feeds it is kept;
    :data:`BOTH_SIDES`: a shape operation the channels cannot follow, a recurrent
    layer :func:`_opaque_recurrent` keeps)."""
    refused = {graph.module2node[m]: (why, BOTH_SIDES) for m, why in recorder.kept.items()
               if m in graph.module2node}
    layout: dict[Any, tuple[int, tuple] | None] = {}
    names = {module: name for name, module in graph.model.named_modules()}
    for node in _topological(graph):
        op = recorder.ops.get(node.grad_fn)
        known = [(n, layout[n]) for n in node.inputs if layout.get(n) is not None]
        module = node.module
        if not _is_op(module):
            for _, (axis, shape) in known:
                reads = _reads(module, len(shape))
                if reads is not None and reads != axis:
                    refused.setdefault(node, (
                        f"{names.get(module, type(module).__name__)} reads axis {reads} of "
                        f"its input {list(shape)}, whose channels are on axis {axis}",
                        INPUT_SIDE))
            rank = len(op.shape) if op is not None else None
            writes = _reads(module, rank) if rank else None
            layout[node] = (writes, op.shape) if writes is not None else None
            continue
        if not known:
            layout[node] = None
            continue
        source, (axis, shape) = known[0]
        if op is not None and op.joined:
            layout[node] = _follow_concat(graph, node, op, layout)
        elif op is not None and op.name == "recurrent_state":
            _fold_states(source, node)
            layout[node] = (len(op.shape) - 1, op.shape)
        elif op is not None and op.replay is not None and len(set(node.inputs)) == 1 \
                and shape[axis] > 1:
            mapped = _replayed_mapping(op, axis, shape)
            if isinstance(mapped, str):
                layout[node] = None
                refused.setdefault(node, (mapped, BOTH_SIDES))
                continue
            out_axis, channel_of = mapped
            _set_mapping(source, node, channel_of)
            layout[node] = (out_axis, op.shape)
        else:
            after = op.shape if op is not None else shape
            carried = _carried_axis(axis, shape, after)
            layout[node] = (carried, after) if carried is not None else None
    return refused


class _FoldMapping:
    """A bidirectional layer's output channel ``d * hidden + u`` is feature ``u`` of its
    final states (each holds one direction's units; both lose the same positions)."""

    def __init__(self, hidden: int, reverse: bool):
        self.hidden = hidden
        self.reverse = reverse

    def __call__(self, idxs):
        hybrid = tp._helpers._HybridIndex
        if self.reverse:
            return [hybrid(idx=i.idx + d * self.hidden, root_idx=i.root_idx)
                    for i in idxs for d in range(2)]
        seen: dict[Any, None] = {}
        for i in idxs:
            seen.setdefault(hybrid(idx=i.idx % self.hidden, root_idx=i.root_idx))
        return list(seen)


def _follow_concat(graph: tp.DependencyGraph, node, op: _Op,
                   layout: dict) -> tuple[int, tuple] | None:
    """A concatenation on the channel axis places each input's channels at its offset
    (torch-pruning infers the sizes from the layers around, which fails for the final
    states of a bidirectional layer, and only looks at axis 1); on another axis its
    inputs carry the same channels."""
    nodes = {n.grad_fn: n for n in graph.module2node.values()}
    inputs = [nodes.get(fn) for fn in op.joined]
    known = [layout.get(n) for n in inputs]
    if any(n is None for n in inputs) or any(k is None for k in known) \
            or len(set(inputs)) != len(inputs) or len({k[0] for k in known}) != 1:
        first = next((k for k in known if k is not None), None)
        return (first[0], op.shape) if first is not None else None
    axis = known[0][0]
    if op.dim % len(op.shape) != axis:
        node.enable_index_mapping = False  # the inputs' channels are the same channels
        return axis, op.shape
    sizes = [shape[axis] for _, shape in known]
    offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    node.module.concat_sizes, node.module.offsets = sizes, offsets
    mapping = tp.dependency.index_mapping._ConcatIndexMapping
    for index, source in enumerate(inputs):
        for dep in source.dependencies:
            if dep.target is node:
                dep.index_mapping[1] = mapping(offsets[index:index + 2], reverse=False)
        for dep in node.dependencies:
            if dep.target is source:
                dep.index_mapping[1] = mapping(offsets[index:index + 2], reverse=True)
    return axis, op.shape


def _fold_states(output, states) -> None:
    """Map a recurrent layer's output channels to its final states' features (the
    same for a unidirectional layer)."""
    module = output.module
    if not isinstance(module, RECURRENT) or not module.bidirectional:
        return
    for dep in output.dependencies:
        if dep.target is states:
            dep.index_mapping[0] = _FoldMapping(module.hidden_size, reverse=False)
    for dep in states.dependencies:
        if dep.target is output:
            dep.index_mapping[0] = _FoldMapping(module.hidden_size, reverse=True)


def _layers(model: nn.Module) -> tuple[list[LayerInfo], set[str], set[str]]:
    """Every layer with output channels in module order; producers inside structures
    left whole; and the out_proj of attention layers pruned by heads."""
    layers: dict[str, LayerInfo] = {}
    inside: dict[str, str] = {}
    projections: set[str] = set()
    for name, module in model.named_modules():
        kind = type(module).__name__
        if pruned_by_heads(module):
            layers[name] = LayerInfo(name, kind, module.embed_dim)
            projections.update(f"{name}.{child}" for child, sub in module.named_modules()
                               if child and isinstance(sub, PRODUCERS))
        elif prunable_recurrent(module):
            layers[name] = LayerInfo(name, kind, structure_channels(module))
        elif left_whole(module):
            why = f"{kind} is left whole: {why_whole(module)}"
            layers[name] = LayerInfo(name, kind, structure_channels(module),
                                     (LayerStatus.UNSUPPORTED, why))
            for child_name, child in module.named_modules():
                if child_name and isinstance(child, PRODUCERS):
                    inside[f"{name}.{child_name}"] = f"part of {name}; {why}"
        elif isinstance(module, PRODUCERS):
            layers[name] = LayerInfo(name, kind, out_channels(module))
    for name, why in inside.items():
        layers[name].fixed = (LayerStatus.UNSUPPORTED, why)
    for name in projections:
        layers.pop(name, None)  # part of its attention layer's row
    return list(layers.values()), set(inside), projections


def _blocked(group, names: dict, refused: dict) -> tuple[LayerStatus, str] | None:
    """Why torch-pruning's ``group`` must stay whole, or None."""
    for item in group:
        why, side = refused.get(item.dep.target, (None, None))
        if why and (side == BOTH_SIDES or not _is_out_fn(item.dep)):
            return LayerStatus.UNSUPPORTED, why
    for item in group:
        target = item.dep.target
        # torch-pruning marks outputs with an _OutputOp node, except when a layer's
        # result is returned as it is: then its node simply has no consumers.
        if type(target.module).__name__ == "_OutputOp" or (
                _is_out_fn(item.dep) and not target.outputs):
            return LayerStatus.OUTPUT, "produces a model output"
    for item in group:
        module = item.dep.target.module
        if isinstance(module, nn.RNNBase) and not _is_out_fn(item.dep):
            continue  # RecurrentPruner trims its input weights
        if left_whole(module):
            return (LayerStatus.UNSUPPORTED, f"channels feed {names.get(module)} "
                                             f"({type(module).__name__}), which is left whole")
    return None


def _inexact(group) -> str | None:
    for item in group:
        if isinstance(item.dep.target.module, (nn.LayerNorm, nn.GroupNorm)):
            return f"pass through {type(item.dep.target.module).__name__}, whose statistics " \
                   "change when channels go"
    return None


def analyse(model: nn.Module, example: torch.Tensor) -> Analysis:
    """The model's layers with channels and its channel groups (one per producer not
    already in a group, as torch-pruning's get_all_groups; a group it cannot build is
    reported on its own layer instead of ending the walk)."""
    names = {module: name for name, module in model.named_modules()}
    layers, inside, projections = _layers(model)
    by_name = {layer.name: layer for layer in layers}
    graph = trace(model, example)
    groups, covered = [], set()
    for name, module in model.named_modules():
        if (not (isinstance(module, PRODUCERS) or prunable_recurrent(module))
                or id(module) in covered or name in inside or name in projections):
            continue
        try:
            pruner = graph.get_pruner_of_module(module)
            group = graph.get_pruning_group(module, pruner.prune_out_channels,
                                            list(range(pruner.get_out_channels(module))))
        except Exception as error:  # noqa: BLE001
            by_name[name].fixed = (LayerStatus.UNSUPPORTED, (
                "torch-pruning could not follow where this layer's channels go "
                f"({type(error).__name__}: {str(error)[:120]}), so it is left whole"))
            covered.add(id(module))
            continue
        carriers = []
        for item in group:
            if _is_out_fn(item.dep):
                covered.add(id(item.dep.target.module))
                carriers.append(names.get(item.dep.target.module))
        members = [names[item.dep.target.module] for item in group
                   if _is_out_fn(item.dep) and names.get(item.dep.target.module) in by_name]
        n = len(group[0].idxs)
        groups.append(ChannelGroup(
            key=name, members=members, carriers=[c for c in carriers if c],
            scores=group_scores(group, n).numpy(), blocks=channel_groups(group),
            blocked=_blocked(group, names, graph.refused), inexact=_inexact(group)))
    return Analysis(layers=layers, groups=groups)


def _pruning_group(graph: tp.DependencyGraph, model: nn.Module, key: str, idxs: list[int]):
    root = model.get_submodule(key)
    return graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels,
                                   idxs=idxs)


def rewrite(model: nn.Module, example: torch.Tensor, plan: Plan,
            ) -> tuple[nn.Module, dict[str, str]]:
    """A pruned copy of ``model`` and the groups that could not be rewired, with why.

    A size written in the model's code (``x.reshape(b, 12, 80)``) cannot follow the
    channels: when the pruned copy does not run, the groups are added again one at a
    time and those after which it no longer runs are left whole.
    """
    pruned, failed = _rewrite(model, example, plan.removal)
    if _does_not_run(pruned, example) is None:
        return pruned, failed
    pruned, failed = copy.deepcopy(model), {}
    for key, idxs in plan.removal.items():
        candidate, problem = _rewrite(pruned, example, {key: idxs})
        why = problem.get(key) or _does_not_run(candidate, example)
        if why is None:
            pruned = candidate
        else:
            failed[key] = why
    return pruned, failed


def _rewrite(model: nn.Module, example: torch.Tensor, removal: dict[str, list[int]],
             ) -> tuple[nn.Module, dict[str, str]]:
    pruned = copy.deepcopy(model)
    graph = trace(pruned, example)
    failed = {}
    for key, idxs in removal.items():
        try:
            group = _pruning_group(graph, pruned, key, idxs)
            if not graph.check_pruning_group(group):
                raise ValueError("torch-pruning refused the group")
            head_dims = {id(item.dep.target.module): (item.dep.target.module,
                                                       item.dep.target.module.head_dim)
                         for item in group if pruned_by_heads(item.dep.target.module)}
            group.prune()
            for attention, old_head_dim in head_dims.values():
                keep_attention_scale(attention, old_head_dim)
        except Exception as error:  # noqa: BLE001 - one bad group must not fail the job
            failed[key] = f"{type(error).__name__}: {error}"
    return pruned, failed


def _does_not_run(model: nn.Module, example: torch.Tensor) -> str | None:
    """Why ``model`` fails on a batch shaped like ``example``, or None if it runs."""
    try:
        with torch.no_grad():
            model.eval()(torch.cat([example, example]))
    except Exception as error:  # noqa: BLE001 - any failure is the reason to report
        return (f"with these channels removed the model does not run ({type(error).__name__}: "
                f"{str(error)[:160]}); a size written in its code does not follow them")
    return None


def mask(model: nn.Module, example: torch.Tensor, plan: Plan) -> nn.Module:
    """Zero, in ``model`` itself, every weight that reads or writes a planned channel."""
    graph = trace(model, example)
    with torch.no_grad():
        for key, idxs in plan.removal.items():
            for item in _pruning_group(graph, model, key, idxs):
                _zero(item.dep.target.module, list(item.idxs), _is_out_fn(item.dep))
    return model


def _zero(module: nn.Module, idxs: list[int], out: bool) -> None:
    """Zero ``module``'s weights for channels ``idxs`` of its output (``out``) or input."""
    if not idxs:
        return
    if isinstance(module, nn.MultiheadAttention):
        # torch-pruning narrows the embedding as one: the same positions of q, k, v
        # (rows), of the input (columns), and of out_proj on both sides.
        embed = module.embed_dim
        rows = [i + k * embed for k in range(3) for i in idxs]
        module.in_proj_weight[rows] = 0
        module.in_proj_weight[:, idxs] = 0
        if module.in_proj_bias is not None:
            module.in_proj_bias[rows] = 0
        _zero(module.out_proj, idxs, out=True)
        _zero(module.out_proj, idxs, out=False)
        return
    if isinstance(module, nn.RNNBase):
        if not out:
            for name in ("weight_ih_l0", "weight_ih_l0_reverse"):
                if hasattr(module, name):
                    getattr(module, name)[:, idxs] = 0
        elif isinstance(module, RECURRENT):
            _zero_units(module, _units(module, idxs))
        return
    if not isinstance(module, PRODUCERS):
        return  # per-channel layers (BatchNorm, ...) need nothing: their consumers are zeroed
    weight = module.weight
    transposed = isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    groups = getattr(module, "groups", 1)
    if out:
        if transposed:
            per = weight.shape[1]
            for i in idxs:
                weight[(i // per) * (weight.shape[0] // groups):
                       (i // per + 1) * (weight.shape[0] // groups), i % per] = 0
        else:
            weight[idxs] = 0
        if module.bias is not None:
            module.bias[idxs] = 0
        return
    if transposed:
        weight[idxs] = 0
    elif groups == 1:
        weight[:, idxs] = 0
    else:
        per_in, per_out = weight.shape[1], weight.shape[0] // groups
        for i in idxs:
            block = i // per_in
            weight[block * per_out:(block + 1) * per_out, i % per_in] = 0


def _zero_units(layer: nn.RNNBase, units: list[int]) -> None:
    """Zero what writes the units (their gate rows: a unit with zero weights and biases
    stays 0) and what reads them (recurrent and next-layer columns), as the pruner
    removes them."""
    rows = _unit_rows(layer, units)
    for index in range(layer.num_layers):
        for suffix in _directions(layer):
            name = f"_l{index}{suffix}"
            for weight in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                if getattr(layer, weight + name, None) is not None:
                    getattr(layer, weight + name)[rows] = 0
            getattr(layer, "weight_hh" + name)[:, units] = 0
            if index:
                getattr(layer, "weight_ih" + name)[:, _layer_columns(layer, units)] = 0


def layer_outputs(model: nn.Module, batch: torch.Tensor, names: list[str],
                  ) -> dict[str, np.ndarray]:
    """Outputs of the named modules on ``batch``, as arrays (first tensor of a tuple)."""
    captured: dict[str, np.ndarray] = {}
    handles = []
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue

        def hook(_module, _inputs, output, name=name):
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(tensor, torch.Tensor):
                captured[name] = tensor.detach().numpy()

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(batch)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every producer and structure, by module name."""
    return {name: (structure_channels(module) if isinstance(module, UNSUPPORTED)
                   else out_channels(module))
            for name, module in model.named_modules()
            if isinstance(module, PRODUCERS + UNSUPPORTED)}
