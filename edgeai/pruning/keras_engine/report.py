"""Measurements for the report: multiply-accumulates and the summary text."""
from __future__ import annotations

import math

import keras

from edgeai.pruning.keras_engine.graph import (
    CONV,
    CONV_RECURRENT,
    CONV_T,
    DEPTHWISE,
    RECURRENT,
    SEPARABLE,
    attention_projections,
    directions,
)

L = keras.layers


def _prod(shape) -> int:
    return int(math.prod(d for d in shape if d is not None))


def layer_macs(layer, in_shape, out_shape) -> int:
    """Multiply-accumulates of one call of ``layer`` for one sample (unknown sizes,
    such as a free time axis, count as 1)."""
    if isinstance(layer, L.TimeDistributed):
        steps = _prod(in_shape[1:2])
        return steps * layer_macs(layer.layer, in_shape[:1] + in_shape[2:],
                                  out_shape[:1] + out_shape[2:])
    if isinstance(layer, L.Bidirectional):
        return sum(layer_macs(d, in_shape, out_shape) for d in directions(layer))
    if isinstance(layer, RECURRENT):
        return _recurrent_macs(layer, in_shape, out_shape)
    if isinstance(layer, L.MultiHeadAttention):
        return _attention_macs(layer, in_shape)
    kernel_size = _prod(getattr(layer, "kernel_size", ()) or (1,))
    if isinstance(layer, L.Dense):
        return _prod(in_shape[1:]) * int(layer.units)
    if isinstance(layer, SEPARABLE):
        spatial = _prod(out_shape[1:-1])
        channels = int(in_shape[-1])
        mult = int(layer.depth_multiplier)
        return spatial * (kernel_size * channels * mult + channels * mult * int(layer.filters))
    if isinstance(layer, DEPTHWISE):
        return _prod(out_shape[1:]) * kernel_size
    if isinstance(layer, CONV_T):
        return _prod(in_shape[1:]) * kernel_size * int(layer.filters)
    if isinstance(layer, CONV):
        return (_prod(out_shape[1:]) * kernel_size * int(in_shape[-1])
                // max(1, getattr(layer, "groups", 1)))
    return 0


def _recurrent_macs(layer, in_shape, out_shape) -> int:
    """Every step: each gate's kernel over the input and recurrent kernel over the state
    (per output position and kernel tap, for a ConvLSTM)."""
    cell = layer.cell
    per_step = (int(cell.kernel.shape[-2]) + int(cell.recurrent_kernel.shape[-2])) \
        * int(cell.kernel.shape[-1])
    if isinstance(layer, CONV_RECURRENT):
        spatial = out_shape[2:-1] if layer.return_sequences else out_shape[1:-1]
        per_step *= _prod(spatial) * _prod(layer.kernel_size)
    return _prod(in_shape[1:2]) * per_step


def _attention_macs(layer, query_shape) -> int:
    """Projections, scores, weighted values and output, for self-attention lengths
    (the key/value length of a call is not known here; the query's stands for it)."""
    length = _prod(query_shape[1:-1])
    heads, key_dim = int(layer.num_heads), int(layer.key_dense.kernel.shape[-1])
    value_dim = int(layer.value_dense.kernel.shape[-1])
    projections = sum(_prod(dense.kernel.shape) for dense in attention_projections(layer))
    output = _prod(layer.output_dense.kernel.shape)
    return length * (projections + output) + length * length * heads * (key_dim + value_dim)


def count_macs(model) -> int:
    """Total multiply-accumulates per sample over every call in ``model``'s graph.

    The calls are the nodes of the model's own graph (nested models walked into):
    a layer's ``_inbound_nodes`` also hold calls from other graphs (a Sequential
    loaded from a file has several), which must not count.
    """
    from edgeai.pruning.keras_engine.graph import _layers_graph

    total = 0
    nodes_by_depth, _, _ = _layers_graph(model)
    for nodes in nodes_by_depth.values():
        for node in nodes:
            layer = node.operation
            if isinstance(layer, keras.Model):
                total += count_macs(layer)
            elif node.input_tensors and node.outputs:
                total += layer_macs(layer, tuple(node.input_tensors[0].shape),
                                    tuple(node.outputs[0].shape))
    return int(total)


def cost_terms(model, graph, analysis) -> list:
    """Every call in ``model``'s graph as a :class:`LayerCost`: its MACs and output
    elements per sample, and how many of its input and output channels each channel
    group holds (from the channel graph's elements), for the latency estimate."""
    from collections import Counter

    from edgeai.pruning.keras_engine.graph import _layers_graph
    from edgeai.pruning.structure import LayerCost

    owner = {root: group.key for group in analysis.groups for root in group.handle}

    def split(elements) -> tuple[dict[str, int], int]:
        if elements is None or not len(elements):
            return {}, 0
        counts = Counter(owner.get(root) for root in graph.uf.roots(elements).tolist())
        fixed = counts.pop(None, 0)
        return {key: int(count) for key, count in counts.items()}, int(fixed)

    terms = []

    def walk(inner) -> None:
        nodes_by_depth, _, _ = _layers_graph(inner)
        for depth in sorted(nodes_by_depth, reverse=True):
            for node in nodes_by_depth[depth]:
                layer = node.operation
                if isinstance(layer, keras.Model):
                    walk(layer)
                    continue
                if isinstance(layer, L.InputLayer) or not node.input_tensors or not node.outputs:
                    continue
                in_shape, out_shape = (tuple(node.input_tensors[0].shape),
                                       tuple(node.outputs[0].shape))
                record = graph.records.get(id(layer))
                inputs, fixed_in = split(record.in_map if record else None)
                outputs, fixed_out = split(record.out_map if record else None)
                terms.append(LayerCost(
                    name=layer.name, macs=int(layer_macs(layer, in_shape, out_shape)),
                    elements=_prod(out_shape[1:]), inputs=inputs, fixed_inputs=fixed_in,
                    outputs=outputs, fixed_outputs=fixed_out,
                    depthwise=isinstance(layer, DEPTHWISE)))

    walk(model)
    return terms


def summary_text(model) -> str:
    """``model.summary()`` as plain text."""
    lines: list[str] = []
    model.summary(print_fn=lambda text, line_break=False: lines.append(text))
    return "\n".join(lines)
