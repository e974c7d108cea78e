"""Choosing channels by L1 norm and rewriting the model without them.

Groups are found from the :class:`ChannelGraph`: producers whose elements share
a channel are one group. Each channel's score is the summed L1 norm of the
filters that produce it (kernel weights, not biases, as in Li et al.); the
lowest ``channels_to_remove(n, percent)`` channels of every unfrozen group go.
The model is then cloned with the reduced ``filters``/``units`` and every layer
gets its weights sliced from the original.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import keras
import numpy as np

from edgeai.pruning.base import channels_to_remove
from edgeai.pruning.keras_engine.graph import (
    CONV_T,
    DEPTHWISE,
    SEPARABLE,
    ChannelGraph,
    is_depthwise_grouped,
    is_producer,
    producer_width,
)

L = keras.layers


@dataclass
class Plan:
    """Which channel roots are removed, and what happened to each producer."""

    removed: set[int] = field(default_factory=set)
    layer_status: dict[str, tuple[str, str | None]] = field(default_factory=dict)

    def alive(self, graph: ChannelGraph, elements: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``elements`` survive."""
        if not self.removed:
            return np.ones(len(elements), dtype=bool)
        roots = graph.uf.roots(elements)
        return ~np.isin(roots, np.fromiter(self.removed, dtype=np.int64))


def filter_l1(layer) -> np.ndarray:  # noqa: ANN001
    """L1 norm of each output filter's kernel (one value per output channel)."""
    if isinstance(layer, SEPARABLE):
        kernel = np.abs(layer.pointwise_kernel.numpy())
    else:
        kernel = np.abs(layer.kernel.numpy())
    if isinstance(layer, CONV_T):  # kernel [..., out, in]
        return kernel.sum(axis=tuple(i for i in range(kernel.ndim) if i != kernel.ndim - 2))
    return kernel.reshape(-1, kernel.shape[-1]).sum(axis=0)


def plan_pruning(graph: ChannelGraph, percent: float) -> Plan:
    """Pick the channels to remove in every group that is not frozen."""
    uf = graph.uf
    plan = Plan()
    producers = [r for r in (graph.records[k] for k in graph.order)
                 if r.space is not None and is_producer(r.layer)]
    # Group producers that share a channel (union-find over producers).
    owner: dict[int, int] = {}
    parent = list(range(len(producers)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    roots_of = []
    for index, record in enumerate(producers):
        roots = uf.roots(record.space)
        roots_of.append(roots)
        for root in set(roots.tolist()):
            if root in owner:
                a, b = find(owner[root]), find(index)
                parent[max(a, b)] = min(a, b)
            else:
                owner[root] = index
    frozen: dict[int, str] = {}
    for elements, name, reason in graph.frozen:
        for root in uf.roots(elements).tolist():
            frozen.setdefault(root, f"{reason} ({name})" if name not in ("input", "output")
                              else reason)
    groups: dict[int, list[int]] = {}
    for index in range(len(producers)):
        groups.setdefault(find(index), []).append(index)
    for members in groups.values():
        channel_roots = sorted({r for i in members for r in roots_of[i].tolist()})
        names = [producers[i].path for i in members]
        why = next((frozen[r] for r in channel_roots if r in frozen), None)
        if why is not None:
            status = ("output" if why == "produces a model output"
                      else "omitted" if why.startswith("listed in ommitted") else "unsupported")
            for name in names:
                plan.layer_status[name] = (status, why)
            continue
        scores = dict.fromkeys(channel_roots, 0.0)
        for i in members:
            l1 = filter_l1(producers[i].layer)
            for root, value in zip(roots_of[i].tolist(), l1.tolist(), strict=True):
                scores[root] += value
        layout = _channel_layout(graph, channel_roots)
        if isinstance(layout, str):
            for name in names:
                plan.layer_status[name] = ("unsupported", layout)
            continue
        if layout is None:
            remove = channels_to_remove(len(channel_roots), percent)
            ranked = sorted(channel_roots, key=lambda r: (scores[r], r))
            chosen = ranked[:remove]
        else:
            # Same positions out of every channel block of a grouped layer; the
            # rule applies per block. Scores of a position are summed over blocks.
            ordered, parts = layout
            per = len(ordered) // parts
            remove = channels_to_remove(per, percent)
            position_score = [sum(scores[ordered[b * per + p]] for b in range(parts))
                              for p in range(per)]
            positions = sorted(range(per), key=lambda p: (position_score[p], p))[:remove]
            chosen = [ordered[b * per + p] for b in range(parts) for p in positions]
        if not chosen:
            for name in names:
                plan.layer_status[name] = ("unchanged", None)
            continue
        plan.removed.update(chosen)
        for name in names:
            plan.layer_status[name] = ("pruned", None)
    return plan


def _channel_layout(graph: ChannelGraph, channel_roots: list[int]):  # noqa: ANN202
    """None if no grouped layer constrains these channels; else (channels in block order,
    parts); or a reason string when the constraints cannot be met together."""
    wanted = set(channel_roots)
    layout = None
    for elements, parts, name in graph.constraints:
        roots = graph.uf.roots(elements).tolist()
        if not wanted.intersection(roots):
            continue
        if set(roots) != wanted or len(roots) != len(wanted) or len(roots) % parts:
            return f"channels reach the grouped layer {name} mixed with others"
        if layout is None:
            layout = (roots, parts)
        elif layout[0] != roots:
            return f"grouped layers order these channels differently ({name})"
        else:
            layout = (roots, math.lcm(layout[1], parts))
            if len(roots) % layout[1]:
                return f"{len(roots)} channels do not split into {layout[1]} groups ({name})"
    return layout


def _slice(array: np.ndarray, axis: int, keep: np.ndarray) -> np.ndarray:
    return np.compress(keep, array, axis=axis)


def sliced_weights(layer, record, graph: ChannelGraph, plan: Plan) -> list[np.ndarray] | None:  # noqa: ANN001
    """The layer's weights with removed channels cut out, or None to keep them as they are."""
    weights = [w.numpy() for w in layer.weights]
    if not weights or record is None:
        return None
    in_keep = plan.alive(graph, record.in_map) if record.in_map is not None else None
    out_keep = plan.alive(graph, record.space) if record.space is not None else None
    if is_depthwise_grouped(layer):
        kernel, *rest = weights
        return [_slice(kernel, -1, in_keep)] + [_slice(b, 0, in_keep) for b in rest]
    if is_producer(layer) and getattr(layer, "groups", 1) > 1:
        # kernel [..., in / groups, out]: every block lost the same positions, so
        # the first block's mask slices the shared input axis.
        groups = int(layer.groups)
        kernel, *rest = weights
        block = in_keep.reshape(groups, -1)[0]
        kernel = _slice(_slice(kernel, -2, block), -1, out_keep)
        return [kernel] + [_slice(b, 0, out_keep) for b in rest]
    if isinstance(layer, SEPARABLE):
        mult = int(layer.depth_multiplier)
        depthwise, pointwise, *rest = weights
        depthwise = _slice(depthwise, -2, in_keep)
        pointwise = _slice(_slice(pointwise, -2, np.repeat(in_keep, mult)), -1, out_keep)
        return [depthwise, pointwise] + [_slice(b, 0, out_keep) for b in rest]
    if isinstance(layer, CONV_T):
        kernel, *rest = weights
        kernel = _slice(_slice(kernel, -1, in_keep), -2, out_keep)
        return [kernel] + [_slice(b, 0, out_keep) for b in rest]
    if is_producer(layer):
        kernel, *rest = weights
        kernel = _slice(_slice(kernel, -2, in_keep), -1, out_keep)
        return [kernel] + [_slice(b, 0, out_keep) for b in rest]
    if isinstance(layer, DEPTHWISE):
        mult = int(layer.depth_multiplier)
        kernel, *rest = weights
        return [_slice(kernel, -2, in_keep)] + [_slice(b, 0, np.repeat(in_keep, mult))
                                                for b in rest]
    if in_keep is not None and not in_keep.all():
        # Per-channel weights of a channel-tied layer (BatchNorm, LayerNorm, PReLU, ...).
        width = len(in_keep)
        return [_slice(w, -1, in_keep) if w.ndim and w.shape[-1] == width else w
                for w in weights]
    return None


def rewrite_model(model, graph: ChannelGraph, plan: Plan):  # noqa: ANN001, ANN201
    """Clone ``model`` with the reduced widths and sliced weights; returns the new model."""
    records = graph.records
    new_width: dict[int, int] = {}
    for key, record in records.items():
        if record.space is not None and is_producer(record.layer):
            new_width[key] = int(plan.alive(graph, record.space).sum())
    originals: dict[str, object] = {}

    def clone_layer(layer):  # noqa: ANN001, ANN202
        if isinstance(layer, keras.Model):
            return clone_nested(layer)
        config = layer.get_config()
        record = records.get(id(layer))
        if isinstance(layer, L.Reshape) and record is not None and record.in_map is not None:
            alive = int(plan.alive(graph, record.in_map).sum())
            config["target_shape"] = tuple(config["target_shape"][:-1]) + (alive,)
        if type(layer).__name__ == "LayerScale" and record is not None \
                and record.in_map is not None and "projection_dim" in config:
            config["projection_dim"] = int(plan.alive(graph, record.in_map).sum())
        if is_depthwise_grouped(layer) and record is not None and record.in_map is not None:
            alive = int(plan.alive(graph, record.in_map).sum())
            config["filters"] = config["groups"] = alive
        width = new_width.get(id(layer))
        if width is not None and width != producer_width(layer):
            config["units" if isinstance(layer, L.Dense) else "filters"] = width
        # Every weight is overwritten below, so build with cheap zero initializers
        # (random ones cost a third of the rewrite), then restore the originals so
        # the saved config still names the user's initializers.
        restore = {}
        for key in list(config):
            if key.endswith("_initializer") and config[key] is not None:
                restore[key] = getattr(layer, key, None)
                config[key] = "zeros"
        clone = layer.__class__.from_config(config)
        for key, initializer in restore.items():
            if initializer is not None:
                setattr(clone, key, initializer)
        originals[id(clone)] = layer
        return clone

    def clone_nested(inner):  # noqa: ANN001, ANN202
        # A nested model's Input has a fixed shape: give it the pruned width.
        record = records.get(id(inner))
        inputs = []
        for index, tensor in enumerate(inner.inputs):
            shape = tuple(tensor.shape)[1:]
            if record is not None and record.in_maps and index < len(record.in_maps):
                shape = shape[:-1] + (int(plan.alive(graph, record.in_maps[index]).sum()),)
            inputs.append(keras.Input(shape=shape, dtype=tensor.dtype))
        clone = keras.models.clone_model(inner, input_tensors=inputs if len(inputs) > 1
                                         else inputs[0], clone_function=clone_layer)
        originals[id(clone)] = inner
        return clone

    rebuilt = keras.models.clone_model(model, clone_function=clone_layer)
    for new_layer in iterate_layers(rebuilt):
        old = originals.get(id(new_layer))
        if old is None or not old.weights or isinstance(old, keras.Model):
            continue  # a nested model's weights are its layers', set one by one
        weights = sliced_weights(old, records.get(id(old)), graph, plan)
        new_layer.set_weights(weights if weights is not None else old.get_weights())
    return rebuilt


def iterate_layers(model):  # noqa: ANN001, ANN201
    """Every layer, nested models' layers included (each object once)."""
    seen = set()
    stack = list(reversed(model.layers))
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        if isinstance(layer, keras.Model):
            stack.extend(reversed(layer.layers))
