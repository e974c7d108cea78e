"""The ONNX engine's analysis: channel groups from the :class:`ChannelGraph`.

Producers whose output elements share a channel form one group. A channel's score is
the summed L1 norm of the filters that produce it (weights, not biases, as in Li et
al.). A group whose channels are frozen (a model output, an operation the graph does
not follow) is blocked with the reason; one constrained by grouped convolutions lists
its channels block by block. A group's *carriers* are the nodes whose outputs carry
its channels and the constants those nodes read, so that ``ommitted`` may name a node,
a folder of nodes (``/layer1``), or a weight initializer (``fc1.weight``).
"""
from __future__ import annotations

import numpy as np

from edgeai.pruning.channel_sets import blocked, channel_layout
from edgeai.pruning.onnx_engine.channels import ChannelGraph, Producer
from edgeai.pruning.report import LayerStatus
from edgeai.pruning.structure import Analysis, ChannelGroup, LayerInfo


def analyse(graph: ChannelGraph) -> Analysis:
    """The model's layers with channels and its channel groups."""
    layers = [LayerInfo(layer.name, layer.op, layer.channels,
                        fixed=(LayerStatus.UNSUPPORTED, layer.fixed) if layer.fixed else None)
              for layer in graph.layers]
    return Analysis(layers=layers, groups=_groups(graph))


def _producer_sets(graph: ChannelGraph) -> list[list[Producer]]:
    """Producers grouped by shared channels (a union-find over producers)."""
    producers = graph.producers
    parent = list(range(len(producers)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for index, producer in enumerate(producers):
        for root in set(graph.uf.roots(producer.space).tolist()):
            if root in owner:
                a, b = find(owner[root]), find(index)
                parent[max(a, b)] = min(a, b)
            else:
                owner[root] = index
    sets: dict[int, list[Producer]] = {}
    for index, producer in enumerate(producers):
        sets.setdefault(find(index), []).append(producer)
    return list(sets.values())


def _carrier_names(graph: ChannelGraph) -> list[tuple[list[str], set[int]]]:
    """(names: a node and the constants it reads, the roots its outputs carry)."""
    index = graph.index
    position = {name: i for i, name in enumerate(index.names)}
    result = []
    for name, elements in graph.carriers().items():
        node = index.nodes[position[name]]
        constants = [tensor for tensor in node.input if tensor in index.initializers]
        result.append(([name, *constants], set(graph.uf.roots(elements).tolist())))
    return result


def _groups(graph: ChannelGraph) -> list[ChannelGroup]:
    frozen: dict[int, str] = {}
    # A model output is the reason that matters most to a user: it comes first.
    for elements, name, reason in sorted(graph.frozen, key=lambda item: item[1] != "output"):
        for root in graph.uf.roots(elements).tolist():
            frozen.setdefault(root, reason if name == "output" else f"{reason} ({name})")
    inexact: dict[int, str] = {}
    for elements, reason in graph.inexact:
        for root in graph.uf.roots(elements).tolist():
            inexact.setdefault(root, reason)
    carriers = _carrier_names(graph)
    groups = []
    for members in _producer_sets(graph):
        roots = sorted({r for producer in members
                        for r in graph.uf.roots(producer.space).tolist()})
        layout = channel_layout(graph.uf, graph.constraints, roots, "convolution")
        order = layout[0] if isinstance(layout, tuple) else roots
        scores = dict.fromkeys(roots, 0.0)
        for producer in members:
            for root, value in zip(graph.uf.roots(producer.space).tolist(),
                                   producer.l1.tolist(), strict=True):
                scores[root] += value
        wanted = set(roots)
        carried_by = [names for names, carried in carriers if carried & wanted]
        names = [name for group in carried_by for name in group]
        names += [name for producer in members for name in (producer.name,
                  *[t for t in graph.index.nodes[producer.node].input
                    if t in graph.index.initializers])]
        groups.append(ChannelGroup(
            key=members[0].name, members=[producer.name for producer in members],
            carriers=list(dict.fromkeys(names)),
            scores=np.array([scores[root] for root in order]),
            blocks=layout[1] if isinstance(layout, tuple) else 1,
            blocked=blocked(roots, frozen, layout),
            inexact=next((inexact[root] for root in roots if root in inexact), None),
            handle=order))
    return groups
