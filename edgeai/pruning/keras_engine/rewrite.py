"""Rewriting a Keras model without the removed channels, and masking the original.

The model is cloned with the reduced ``filters``/``units`` and every layer gets
its weights sliced from the original. Masking (for the exactness check) runs the
same per-layer code with zeroing in place of slicing, so the two cannot disagree
on which weights belong to a channel.
"""
from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

from edgeai.pruning.keras_engine.graph import (
    CONV_RECURRENT,
    CONV_T,
    DEPTHWISE,
    SEPARABLE,
    ChannelGraph,
    attention_projections,
    directions,
    is_depthwise_grouped,
    is_producer,
    is_recurrent,
    iterate_layers,
    producer_width,
    unwrap,
)

L = keras.layers


class Removal:
    """The channel roots a plan removes; which elements survive."""

    def __init__(self, graph: ChannelGraph, roots: set[int]):
        self.graph = graph
        # Every id's fate at once: one pass, where asking per layer walked the sets again.
        self._keep = ~np.isin(graph.uf.all_roots(), np.fromiter(roots, dtype=np.int64)) \
            if roots else None

    def alive(self, elements: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``elements`` survive."""
        if self._keep is None:
            return np.ones(len(elements), dtype=bool)
        return self._keep[elements]


Cut = Callable[[np.ndarray, int, np.ndarray], np.ndarray]
# Layers whose initializers live in sub-layers or private attributes: cloned as they are.
NO_CHEAP_CLONE = (L.RNN, L.Bidirectional, L.TimeDistributed, L.MultiHeadAttention)


def slice_out(array: np.ndarray, axis: int, keep: np.ndarray) -> np.ndarray:
    """Keep only the ``keep`` entries along ``axis`` (the rewrite)."""
    return np.compress(keep, array, axis=axis)


def zero_out(array: np.ndarray, axis: int, keep: np.ndarray) -> np.ndarray:
    """Zero the entries along ``axis`` that ``keep`` drops (the mask)."""
    shape = [1] * array.ndim
    shape[axis] = len(keep)
    return np.where(keep.reshape(shape), array, array.dtype.type(0))


def sliced_weights(layer, record, removal: Removal, _slice: Cut = slice_out,
                   ) -> list[np.ndarray] | None:
    """The layer's weights with removed channels cut out (or zeroed, with ``zero_out``),
    or None to keep them as they are."""
    weights = [w.numpy() for w in layer.weights]
    if not weights or record is None:
        return None
    if isinstance(layer, L.TimeDistributed):  # its weights are the wrapped layer's
        return sliced_weights(unwrap(layer), record, removal, _slice)
    in_keep = removal.alive(record.in_map) if record.in_map is not None else None
    out_keep = removal.alive(record.space) if record.space is not None else None
    if isinstance(layer, L.MultiHeadAttention):
        return _attention_weights(layer, record, removal, _slice)
    if is_recurrent(layer):
        return _recurrent_weights(layer, in_keep, out_keep, _slice)
    if is_depthwise_grouped(layer):
        kernel, *rest = weights
        return [_slice(kernel, -1, in_keep)] + [_slice(b, 0, in_keep) for b in rest]
    if is_producer(layer) and getattr(layer, "groups", 1) > 1:
        # kernel [..., in / groups, out]: every block lost the same positions, so
        # the first block's mask slices the shared input axis.
        groups = int(layer.groups)
        kernel, *rest = weights
        block = in_keep.reshape(groups, -1)[0]
        if _slice is zero_out:  # zero an input only in the block that reads it
            per_out = kernel.shape[-1] // groups
            kernel = kernel.copy()
            for g, keep in enumerate(in_keep.reshape(groups, -1)):
                kernel[..., ~keep, g * per_out:(g + 1) * per_out] = 0
            kernel = _slice(kernel, -1, out_keep)
        else:
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


def _recurrent_weights(layer, in_keep: np.ndarray | None, out_keep: np.ndarray | None,
                       _slice: Cut) -> list[np.ndarray]:
    """A recurrent layer (or both directions of a Bidirectional): the kernel loses the
    removed inputs' rows, the recurrent kernel the removed units' rows, and all three
    the removed units' columns in every gate block."""
    new: dict[int, np.ndarray] = {}
    inner = directions(layer)
    units = producer_width(inner[0])
    for index, rnn in enumerate(inner):
        cell = rnn.cell
        keep = (out_keep[index * units:(index + 1) * units] if out_keep is not None
                else np.ones(units, dtype=bool))
        gates = np.tile(keep, int(cell.kernel.shape[-1]) // units)
        inputs = in_keep if in_keep is not None else np.ones(cell.kernel.shape[-2], dtype=bool)
        new[id(cell.kernel)] = _slice(_slice(cell.kernel.numpy(), -2, inputs), -1, gates)
        new[id(cell.recurrent_kernel)] = _slice(_slice(cell.recurrent_kernel.numpy(), -2, keep),
                                                -1, gates)
        if getattr(cell, "bias", None) is not None:  # GRU(reset_after): [2, gates*units]
            new[id(cell.bias)] = _slice(cell.bias.numpy(), -1, gates)
    return [new[id(w)] if id(w) in new else w.numpy() for w in layer.weights]


def _attention_weights(layer, record, removal: Removal, _slice: Cut) -> list[np.ndarray]:
    """MultiHeadAttention: every projection loses the removed heads (kernels
    [in, heads, dim], biases [heads, dim]) and the rows of its removed inputs; the
    output kernel [heads, dim, out] loses the removed heads."""
    heads = removal.alive(record.space)
    new: dict[int, np.ndarray] = {}
    roles = ["query", "key", "value", "query"]  # the gate reads the query
    for dense, role in zip(attention_projections(layer), roles, strict=False):
        kernel = _slice(dense.kernel.numpy(), 1, heads)
        if role in record.inputs:
            kernel = _slice(kernel, 0, removal.alive(record.inputs[role]))
        new[id(dense.kernel)] = kernel
        if getattr(dense, "bias", None) is not None:
            new[id(dense.bias)] = _slice(dense.bias.numpy(), 0, heads)
    output = layer.output_dense
    new[id(output.kernel)] = _slice(output.kernel.numpy(), 0, heads)
    return [new[id(w)] if id(w) in new else w.numpy() for w in layer.weights]


def mask_model(model, removal: Removal):
    """Zero, in ``model`` itself, every weight that reads or writes a removed channel."""
    for layer in iterate_layers(model):
        record = removal.graph.records.get(id(layer))
        if isinstance(layer, keras.Model) or not layer.weights or record is None:
            continue
        touched = [m for m in (record.in_map, record.space, *record.inputs.values())
                   if m is not None]
        if not any((~removal.alive(m)).any() for m in touched):
            continue
        weights = sliced_weights(layer, record, removal, zero_out)
        if weights is not None:
            layer.set_weights(weights)
    return model


def pruned_config(layer, removal: Removal) -> dict:
    """``layer``'s config with the widths the removal leaves it."""
    config = layer.get_config()
    record = removal.graph.records.get(id(layer))
    if record is not None:
        _narrow(layer, config, record, removal)
    return config


def _narrow(layer, config: dict, record, removal: Removal) -> None:
    """Set, in ``config``, the widths ``layer`` has once the removal is applied."""
    alive_in = (int(removal.alive(record.in_map).sum()) if record.in_map is not None else None)
    if isinstance(layer, L.TimeDistributed):
        inner = config["layer"]
        inner.pop("build_config", None)  # built again, at the new width, on first call
        _narrow(layer.layer, inner["config"], record, removal)
        return
    if isinstance(layer, L.Reshape) and record.out_map is not None \
            and config["target_shape"][-1] != -1:
        config["target_shape"] = tuple(config["target_shape"][:-1]) + (
            int(removal.alive(record.out_map).sum()),)
    if alive_in is not None and type(layer).__name__ == "LayerScale" \
            and "projection_dim" in config:
        config["projection_dim"] = alive_in
    if alive_in is not None and is_depthwise_grouped(layer):
        config["filters"] = config["groups"] = alive_in
    if record.space is None or not is_producer(layer):
        return
    width = int(removal.alive(record.space).sum())
    if isinstance(layer, L.MultiHeadAttention):
        config["num_heads"] = width
        query = record.inputs.get("query")
        if not config.get("output_shape") and query is not None \
                and not removal.alive(query).all():
            # The output width follows the query's unless given: it is kept.
            config["output_shape"] = (int(layer.output_dense.kernel.shape[-1]),)
    elif isinstance(layer, L.Bidirectional):
        for key in ("layer", "backward_layer"):
            if config.get(key):
                config[key].pop("build_config", None)
                config[key]["config"]["units"] = width // 2
    elif width != producer_width(layer):
        config["units" if isinstance(layer, L.Dense) or (
            is_recurrent(layer) and not isinstance(layer, CONV_RECURRENT)) else "filters"] = width


def _cheap_clone(layer, config: dict):
    """``layer``'s class from ``config``, built with zero initializers (every weight is
    overwritten; random ones cost a third of the rewrite), the user's initializers put
    back so that the saved config still names them."""
    if isinstance(layer, NO_CHEAP_CLONE):
        return layer.__class__.from_config(config)
    restore = {}
    for key in list(config):
        if key.endswith("_initializer") and config[key] is not None:
            restore[key] = getattr(layer, key, None)
            config[key] = "zeros"
    clone = layer.__class__.from_config(config)
    for key, initializer in restore.items():
        if initializer is not None:
            setattr(clone, key, initializer)
    return clone


def rewrite_model(model, removal: Removal):
    """Clone ``model`` with the reduced widths and sliced weights; returns the new model."""
    records = removal.graph.records
    originals: dict[int, object] = {}

    def clone_layer(layer):
        if isinstance(layer, keras.Model):
            clone = clone_nested(layer)
        else:
            clone = _cheap_clone(layer, pruned_config(layer, removal))
        originals[id(clone)] = layer
        return clone

    def clone_nested(inner):
        # A nested model's Input has a fixed shape: give it the pruned width.
        record = records.get(id(inner))
        inputs = []
        for index, tensor in enumerate(inner.inputs):
            shape = tuple(tensor.shape)[1:]
            if record is not None and record.in_maps and index < len(record.in_maps):
                shape = shape[:-1] + (int(removal.alive(record.in_maps[index]).sum()),)
            inputs.append(keras.Input(shape=shape, dtype=tensor.dtype))
        return keras.models.clone_model(inner, input_tensors=inputs if len(inputs) > 1
                                        else inputs[0], clone_function=clone_layer)

    rebuilt = keras.models.clone_model(model, clone_function=clone_layer)
    for new_layer in iterate_layers(rebuilt):
        old = originals.get(id(new_layer))
        if old is None or not old.weights or isinstance(old, keras.Model):
            continue  # a nested model's weights are its layers', set one by one
        weights = sliced_weights(old, records.get(id(old)), removal)
        new_layer.set_weights(weights if weights is not None else old.get_weights())
    return rebuilt
