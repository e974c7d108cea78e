"""The Keras engine's analysis: channel groups from the :class:`ChannelGraph`.

Producers whose output elements share a channel form one group. A channel's
score is the summed L1 norm of the filters that produce it (kernel weights, not
biases, as in Li et al.). A group whose channels are frozen (a model output, a
layer the graph does not understand) is blocked with the reason; one constrained
by grouped layers lists its channels block by block.
"""
from __future__ import annotations

import keras
import numpy as np

from edgeai.pruning.channel_sets import blocked, channel_layout
from edgeai.pruning.keras_engine.graph import (
    CONV_T,
    SEPARABLE,
    ChannelGraph,
    LayerRecord,
    attention_projections,
    build_graph,
    directions,
    is_producer,
    iterate_paths,
    producer_width,
    unwrap,
)
from edgeai.pruning.pipeline import Analysis, ChannelGroup, LayerInfo

L = keras.layers
# Layers whose result for one channel depends on how many channels there are.
CHANNEL_STATISTICS = (L.LayerNormalization, L.GroupNormalization, L.Softmax)


def filter_l1(layer) -> np.ndarray:
    """L1 norm of each output filter's kernel (one value per output channel).

    A recurrent unit's filter is its columns in every gate block of the kernel and
    the recurrent kernel; an attention head's is its slice of the query, key, value
    (and gate) kernels and its rows of the output kernel.
    """
    layer = unwrap(layer)
    if isinstance(layer, L.MultiHeadAttention):
        return attention_head_l1(layer)
    inner = directions(layer)
    if inner:
        return np.concatenate([_unit_l1(d) for d in inner])
    if isinstance(layer, SEPARABLE):
        kernel = np.abs(layer.pointwise_kernel.numpy())
    else:
        kernel = np.abs(layer.kernel.numpy())
    if isinstance(layer, CONV_T):  # kernel [..., out, in]
        return kernel.sum(axis=tuple(i for i in range(kernel.ndim) if i != kernel.ndim - 2))
    return kernel.reshape(-1, kernel.shape[-1]).sum(axis=0)


def _unit_l1(layer) -> np.ndarray:
    """Per unit of a recurrent layer: its kernel and recurrent-kernel columns, all gates."""
    units = producer_width(layer)
    total = np.zeros(units)
    for weight in (layer.cell.kernel, layer.cell.recurrent_kernel):
        columns = np.abs(weight.numpy()).reshape(-1, weight.shape[-1]).sum(axis=0)
        total += columns.reshape(-1, units).sum(axis=0)
    return total


def attention_head_l1(layer) -> np.ndarray:
    """Per head of a MultiHeadAttention: the L1 norm of all its kernels' slices."""
    total = np.zeros(producer_width(layer))
    for dense in attention_projections(layer):  # kernels [in, heads, dim]
        total += np.abs(dense.kernel.numpy()).sum(axis=(0, 2))
    total += np.abs(layer.output_dense.kernel.numpy()).sum(axis=(1, 2))  # [heads, dim, out]
    return total


def analyse(model) -> tuple[Analysis, ChannelGraph]:
    """The model's producers (by path) and channel groups; the graph for the rewrite.

    Raises ValueError for a model without a layer graph.
    """
    graph = build_graph(model)
    layers = [LayerInfo(path, type(layer).__name__, producer_width(layer))
              for path, layer in iterate_paths(model) if is_producer(layer)]
    return Analysis(layers=layers, groups=_groups(graph)), graph


def _producer_sets(graph: ChannelGraph) -> list[list[LayerRecord]]:
    """Producers grouped by shared channels (a union-find over producers)."""
    producers = [graph.records[k] for k in graph.order
                 if graph.records[k].space is not None and is_producer(graph.records[k].layer)]
    parent = list(range(len(producers)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for index, record in enumerate(producers):
        for root in set(graph.uf.roots(record.space).tolist()):
            if root in owner:
                a, b = find(owner[root]), find(index)
                parent[max(a, b)] = min(a, b)
            else:
                owner[root] = index
    sets: dict[int, list[LayerRecord]] = {}
    for index, record in enumerate(producers):
        sets.setdefault(find(index), []).append(record)
    return list(sets.values())


def _groups(graph: ChannelGraph) -> list[ChannelGroup]:
    frozen: dict[int, str] = {}
    for elements, name, reason in graph.frozen:
        for root in graph.uf.roots(elements).tolist():
            frozen.setdefault(root, f"{reason} ({name})" if name not in ("input", "output")
                              else reason)
    carriers = [(record, set(graph.uf.roots(record.out_map).tolist()))
                for record in graph.records.values() if record.out_map is not None]
    groups = []
    for members in _producer_sets(graph):
        roots = sorted({r for record in members for r in graph.uf.roots(record.space).tolist()})
        layout = channel_layout(graph.uf, graph.constraints, roots, "layer")
        order = layout[0] if isinstance(layout, tuple) else roots
        scores = dict.fromkeys(roots, 0.0)
        for record in members:
            for root, value in zip(graph.uf.roots(record.space).tolist(),
                                   filter_l1(record.layer).tolist(), strict=True):
                scores[root] += value
        wanted = set(roots)
        carried_by = [record for record, carried in carriers if carried & wanted]
        groups.append(ChannelGroup(
            key=members[0].path, members=[record.path for record in members],
            # The producers too: an attention layer's heads are carried by no tensor.
            carriers=list(dict.fromkeys([record.path for record in carried_by]
                                        + [record.path for record in members])),
            scores=np.array([scores[root] for root in order]),
            blocks=layout[1] if isinstance(layout, tuple) else 1,
            blocked=blocked(roots, frozen, layout), inexact=_inexact(carried_by),
            handle=order))
    return groups


def _inexact(records: list[LayerRecord]) -> str | None:
    for record in records:
        if isinstance(record.layer, CHANNEL_STATISTICS):
            return (f"pass through {type(record.layer).__name__} ({record.path}), whose "
                    "statistics change when channels go")
    return None
