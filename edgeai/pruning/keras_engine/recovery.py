"""Getting accuracy back without training, and a little training, for Keras models.

The same two steps as the torch engine's (see :mod:`edgeai.pruning.accuracy`):
* least-squares refit of top-level Dense, Conv1D and Conv2D layers (ungrouped) that
  lost input channels, to reproduce the original layer's pre-activation outputs
  from the remaining inputs (ridge regularised, sampled rows; kept only where it
  lowers the error on calibration samples it did not fit);
* BatchNorm re-estimation: the model run in training mode over the calibration
  data with each BatchNorm's momentum set for a running average (dropout and noise
  layers switched off meanwhile), so the moving statistics become the data's.
And one epoch of fine-tuning with Adam and the loss that fits the metric.
"""
from __future__ import annotations

from typing import Any

import keras
import numpy as np

from edgeai.pruning.keras_engine.rewrite import Removal
from edgeai.pruning.metric import MSE, Data

L = keras.layers
MAX_ROWS = 8192
RIDGE = 1e-3
BATCH = 32
LEARNING_RATE = 1e-3


def refittable(layer: Any) -> bool:
    """Layers whose kernel is a plain matrix over their (patched) input, no activation
    fused after a non-linear step we could not undo (any activation is applied after
    the matrix product, so the target is the pre-activation output)."""
    if isinstance(layer, L.Dense):
        return True
    return isinstance(layer, (L.Conv1D, L.Conv2D)) and int(getattr(layer, "groups", 1)) == 1 \
        and layer.data_format == "channels_last" and layer.padding in ("valid", "same") \
        and not isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D))


def _patches(layer: Any, x: np.ndarray) -> np.ndarray:
    """The layer's input as the rows its kernel multiplies (im2col for a convolution)."""
    if isinstance(layer, L.Dense):
        return x.reshape(-1, x.shape[-1])
    import tensorflow as tf

    images = x if isinstance(layer, L.Conv2D) else x[:, None]
    kernel = layer.kernel_size if isinstance(layer, L.Conv2D) else (1, layer.kernel_size[0])
    strides = layer.strides if isinstance(layer, L.Conv2D) else (1, layer.strides[0])
    rates = layer.dilation_rate if isinstance(layer, L.Conv2D) else (1, layer.dilation_rate[0])
    patches = tf.image.extract_patches(images, sizes=[1, *kernel, 1], strides=[1, *strides, 1],
                                       rates=[1, *rates, 1], padding=layer.padding.upper())
    return np.asarray(patches).reshape(-1, patches.shape[-1])


def _pre_activation(rows: np.ndarray, kernel: np.ndarray,
                    bias: np.ndarray | None) -> np.ndarray:
    out = rows @ kernel.reshape(-1, kernel.shape[-1])
    return out + bias if bias is not None else out


def _inputs(model: Any, names: list[str], data: Data) -> dict[str, np.ndarray]:
    """The inputs of the named top-level layers over ``data``."""
    probe = keras.Model(model.inputs, [model.get_layer(name).input for name in names])
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for x, _ in data.chunks():
        outputs = probe(x, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for name, value in zip(names, outputs, strict=True):
            parts[name].append(np.asarray(value))
    return {name: np.concatenate(value) for name, value in parts.items()}


def _solve(rows: np.ndarray, targets: np.ndarray, bias: bool) -> np.ndarray:
    a = rows.astype(np.float64)
    if bias:
        a = np.concatenate([a, np.ones((len(a), 1))], axis=1)
    gram = a.T @ a
    gram += np.eye(len(gram)) * RIDGE * max(float(np.mean(np.diag(gram))), 1e-12)
    return np.linalg.solve(gram, a.T @ targets.astype(np.float64))


def refit_layers(pruned: Any, original: Any, removal: Removal, fit: Data,
                 check: Data) -> dict[str, list]:
    """Refit the layers that lost input channels (see the module docstring)."""
    records = removal.graph.records
    names = []
    for layer in pruned.layers:
        try:
            old = original.get_layer(layer.name)
        except ValueError:
            continue
        record = records.get(id(old))
        if record is None or record.in_map is None or not refittable(layer):
            continue
        if not removal.alive(record.in_map).all():
            names.append(layer.name)
    report: dict[str, list] = {"refit": [], "refit_rejected": []}
    if not names or len(fit) < 4 or len(check) < 1:
        return report
    originals = {"fit": _inputs(original, names, fit), "check": _inputs(original, names, check)}
    for name in names:  # in layer order: each refit sees the earlier ones
        layer, old = pruned.get_layer(name), original.get_layer(name)
        record = records[id(old)]
        keep_out = removal.alive(record.space) if record.space is not None else None
        old_kernel, *old_bias = old.get_weights()
        kernel, *bias = layer.get_weights()
        columns = keep_out if keep_out is not None else np.ones(old_kernel.shape[-1], bool)
        ours = {part: _patches(layer, _inputs(pruned, [name], part_data)[name])
                for part, part_data in (("fit", fit), ("check", check))}
        targets = {part: _pre_activation(_patches(old, originals[part][name]), old_kernel,
                                         old_bias[0] if old_bias else None)[:, columns]
                   for part in ("fit", "check")}
        rows, wanted = ours["fit"], targets["fit"]
        if len(rows) > MAX_ROWS:
            pick = np.random.default_rng(0).permutation(len(rows))[:MAX_ROWS]
            rows, wanted = rows[pick], wanted[pick]
        solution = _solve(rows, wanted, bool(bias))
        new_kernel = solution[:rows.shape[1]].reshape(kernel.shape).astype(kernel.dtype)
        new_bias = [solution[-1].astype(bias[0].dtype)] if bias else []

        if _error(ours["check"], targets["check"], new_kernel, new_bias) < \
                _error(ours["check"], targets["check"], kernel, bias):
            layer.set_weights([new_kernel, *new_bias])
            report["refit"].append(name)
        else:
            report["refit_rejected"].append(name)
    return report


def _error(rows: np.ndarray, targets: np.ndarray, kernel: np.ndarray,
           bias: list[np.ndarray]) -> float:
    got = rows @ kernel.reshape(-1, kernel.shape[-1]) + (bias[0] if bias else 0)
    return float(np.mean((got - targets) ** 2))


def reestimate_batchnorm(model: Any, data: Data) -> int:
    """Recompute every BatchNorm's moving statistics on ``data``; return how many."""
    from edgeai.pruning.keras_engine.graph import iterate_layers

    layers = list(iterate_layers(model))
    norms = [layer for layer in layers if isinstance(layer, L.BatchNormalization)]
    if not norms:
        return 0
    noisy = [layer for layer in layers if hasattr(layer, "rate")
             and not isinstance(layer, L.BatchNormalization)]
    saved = ([n.momentum for n in norms], [layer.rate for layer in noisy])
    try:
        for layer in noisy:
            layer.rate = 0.0
        for index, (x, _) in enumerate(data.chunks(BATCH)):
            for norm in norms:  # a running average over the batches
                norm.momentum = index / (index + 1)
            model(x, training=True)
    finally:
        for norm, momentum in zip(norms, saved[0], strict=True):
            norm.momentum = momentum
        for layer, rate in zip(noisy, saved[1], strict=True):
            layer.rate = rate
    return len(norms)


def _loss(model: Any, data: Data, kind: str) -> Any:
    if kind == MSE:
        return "mse"
    sample = np.asarray(model(next(data.chunks(8))[0], training=False))
    probabilities = bool(np.all(sample >= 0)) and bool(np.allclose(sample.sum(-1), 1, atol=1e-3))
    if data.y.ndim == sample.ndim:
        return keras.losses.CategoricalCrossentropy(from_logits=not probabilities)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)


def train_epoch(model: Any, data: Data, kind: str, epoch: int, compiled: set[int]) -> None:
    """One epoch of Adam over shuffled mini-batches of ``data``."""
    if id(model) not in compiled:
        model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                      loss=_loss(model, data, kind))
        compiled.add(id(model))
    keras.utils.set_random_seed(epoch)
    model.fit(data.x, data.y, batch_size=BATCH, epochs=1, shuffle=True, verbose=0)
