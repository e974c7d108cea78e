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
    CONV_T,
    DEPTHWISE,
    SEPARABLE,
    ChannelGraph,
    is_depthwise_grouped,
    is_producer,
    iterate_layers,
    producer_width,
)

L = keras.layers


class Removal:
    """The channel roots a plan removes; which elements survive."""

    def __init__(self, graph: ChannelGraph, roots: set[int]):
        self.graph = graph
        self.roots = np.fromiter(roots, dtype=np.int64) if roots else None

    def alive(self, elements: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``elements`` survive."""
        if self.roots is None:
            return np.ones(len(elements), dtype=bool)
        return ~np.isin(self.graph.uf.roots(elements), self.roots)


Cut = Callable[[np.ndarray, int, np.ndarray], np.ndarray]


def slice_out(array: np.ndarray, axis: int, keep: np.ndarray) -> np.ndarray:
    """Keep only the ``keep`` entries along ``axis`` (the rewrite)."""
    return np.compress(keep, array, axis=axis)


def zero_out(array: np.ndarray, axis: int, keep: np.ndarray) -> np.ndarray:
    """Zero the entries along ``axis`` that ``keep`` drops (the mask)."""
    shape = [1] * array.ndim
    shape[axis] = len(keep)
    return np.where(keep.reshape(shape), array, 0).astype(array.dtype)


def sliced_weights(layer, record, removal: Removal, _slice: Cut = slice_out,
                   ) -> list[np.ndarray] | None:
    """The layer's weights with removed channels cut out (or zeroed, with ``zero_out``),
    or None to keep them as they are."""
    weights = [w.numpy() for w in layer.weights]
    if not weights or record is None:
        return None
    in_keep = removal.alive(record.in_map) if record.in_map is not None else None
    out_keep = removal.alive(record.space) if record.space is not None else None
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


def mask_model(model, removal: Removal):
    """Zero, in ``model`` itself, every weight that reads or writes a removed channel."""
    for layer in iterate_layers(model):
        record = removal.graph.records.get(id(layer))
        if isinstance(layer, keras.Model) or not layer.weights or record is None:
            continue
        touched = [m for m in (record.in_map, record.space) if m is not None]
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
    alive_in = (int(removal.alive(record.in_map).sum())
                if record is not None and record.in_map is not None else None)
    if alive_in is not None and isinstance(layer, L.Reshape):
        config["target_shape"] = tuple(config["target_shape"][:-1]) + (alive_in,)
    if alive_in is not None and type(layer).__name__ == "LayerScale" \
            and "projection_dim" in config:
        config["projection_dim"] = alive_in
    if alive_in is not None and is_depthwise_grouped(layer):
        config["filters"] = config["groups"] = alive_in
    if record is not None and record.space is not None and is_producer(layer):
        width = int(removal.alive(record.space).sum())
        if width != producer_width(layer):
            config["units" if isinstance(layer, L.Dense) else "filters"] = width
    return config


def _cheap_clone(layer, config: dict):
    """``layer``'s class from ``config``, built with zero initializers (every weight is
    overwritten; random ones cost a third of the rewrite), the user's initializers put
    back so that the saved config still names them."""
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
