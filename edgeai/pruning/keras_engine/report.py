"""Measurements for the report: multiply-accumulates and the summary text."""
from __future__ import annotations

import math

import keras

from edgeai.pruning.keras_engine.graph import CONV, CONV_T, DEPTHWISE, SEPARABLE, iterate_layers

L = keras.layers


def _prod(shape) -> int:
    return int(math.prod(d for d in shape if d is not None))


def layer_macs(layer, in_shape, out_shape) -> int:
    """Multiply-accumulates of one call of ``layer`` for one sample."""
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


def count_macs(model) -> int:
    """Total multiply-accumulates per sample over every call of every layer."""
    total = 0
    for layer in iterate_layers(model):
        for node in getattr(layer, "_inbound_nodes", []):
            if not node.input_tensors or not node.outputs:
                continue
            total += layer_macs(layer, tuple(node.input_tensors[0].shape),
                                tuple(node.outputs[0].shape))
    return int(total)


def summary_text(model) -> str:
    """``model.summary()`` as plain text."""
    lines: list[str] = []
    model.summary(print_fn=lambda text, line_break=False: lines.append(text))
    return "\n".join(lines)
