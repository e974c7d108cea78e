"""The metric a job reports on the user's data, chosen by what the model outputs.

* class scores (``(N, C)`` outputs, one class per sample): top-1 accuracy;
* dense class maps (``(N, ..., C)`` or ``(N, C, ...)`` outputs, one class per
  element): per-element accuracy;
* float targets of the output's own shape: mean squared error (lower is better).

Anything else is "not measured", with the reason; the job goes on. Labels may be
class indices or one-hot. Written once, on NumPy arrays: the engines only run the
model on batches.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ACCURACY, ELEMENT_ACCURACY, MSE = "top1_accuracy", "element_accuracy", "mse"
HIGHER_IS_BETTER = {ACCURACY: True, ELEMENT_ACCURACY: True, MSE: False}
CHUNK = 64


class NotMeasured(Exception):
    """The metric cannot be computed for this model and data; ``str()`` says why."""


@dataclass
class Data:
    """The user's samples and labels, as NumPy arrays."""

    x: np.ndarray | list[np.ndarray]
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: np.ndarray) -> Data:
        """The samples at ``index``."""
        x = [part[index] for part in self.x] if isinstance(self.x, list) else self.x[index]
        return Data(x, self.y[index])

    def chunks(self, size: int = CHUNK):
        for start in range(0, len(self), size):
            stop = start + size
            x = [p[start:stop] for p in self.x] if isinstance(self.x, list) \
                else self.x[start:stop]
            yield x, self.y[start:stop]

    def split(self, held_out: float, seed: int = 0) -> tuple[Data, Data]:
        """(calibration, held-out) parts, shuffled with ``seed``."""
        order = np.random.default_rng(seed).permutation(len(self))
        cut = len(self) - max(1, int(round(len(self) * held_out)))
        return self.take(order[:cut]), self.take(order[cut:])


NPZ_MAX_BYTES = 1 << 30


def check_npz_size(path: str, send: str) -> None:
    """Refuse a dataset that is not a zip (.npz) or unpacks to more than NPZ_MAX_BYTES,
    before numpy reads any of it; ``send`` says what to send instead."""
    import zipfile

    from edgeai.pruning.base import PruningError

    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile:
        raise PruningError(f"dataset: not an .npz archive. {send}") from None
    if unpacked > NPZ_MAX_BYTES:
        raise PruningError(f"dataset: {unpacked >> 20} MB unpacked; at most "
                           f"{NPZ_MAX_BYTES >> 20} MB. {send}")


def metric_kind(output: np.ndarray, labels: np.ndarray, channel_axis: int) -> str:
    """Which metric fits ``output`` (one batch) and ``labels``; raises NotMeasured."""
    out_shape, label_shape = tuple(output.shape), tuple(labels.shape)
    if np.issubdtype(labels.dtype, np.floating) and label_shape != out_shape \
            and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)  # class indices saved as floats
    if np.issubdtype(labels.dtype, np.floating) and label_shape == out_shape \
            and not _one_hot(labels):
        return MSE
    integral = np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.bool_)
    if integral or _one_hot(labels):
        if len(out_shape) == 2 and (label_shape in ((out_shape[0],), out_shape)):
            return ACCURACY
        axis = channel_axis % len(out_shape)
        dense = out_shape[:axis] + out_shape[axis + 1:]
        if len(out_shape) > 2 and (label_shape == dense or label_shape == out_shape):
            return ELEMENT_ACCURACY
    raise NotMeasured(f"labels of shape {list(label_shape)} ({labels.dtype}) do not fit the "
                      f"model's output of shape {list(out_shape)}: send one class per sample "
                      "for class scores, one class per element for dense maps, or float "
                      "targets of the output's shape")


def _one_hot(labels: np.ndarray) -> bool:
    return labels.ndim >= 2 and bool(np.all((labels == 0) | (labels == 1))) \
        and bool(np.all(labels.sum(axis=-1) == 1))


def _classes(labels: np.ndarray, output_ndim: int, axis: int) -> np.ndarray:
    """Class indices from index labels or one-hot labels (on the output's channel axis)."""
    if labels.ndim == output_ndim:
        return labels.argmax(axis=axis)
    return labels.astype(np.int64)


def evaluate(run: Callable[[object], list[np.ndarray]], data: Data,
             channel_axis: int) -> tuple[str, float]:
    """(metric name, value) of the model behind ``run`` on ``data``; raises NotMeasured."""
    kind = None
    hits = total = 0
    squared = 0.0
    for x, y in data.chunks():
        outputs = run(x)
        if len(outputs) != 1:
            raise NotMeasured(f"the model has {len(outputs)} outputs; a metric is measured "
                              "for models with one output")
        output = outputs[0]
        kind = kind or metric_kind(output, y, channel_axis)
        if kind == MSE:
            squared += float(np.sum((output.astype(np.float64) - y) ** 2))
            total += y.size
            continue
        axis = channel_axis % output.ndim if kind == ELEMENT_ACCURACY else 1
        predicted = output.argmax(axis=axis)
        truth = _classes(y if not np.issubdtype(y.dtype, np.floating) or y.ndim == output.ndim
                         else y.astype(np.int64), output.ndim, axis)
        hits += int(np.sum(predicted == truth))
        total += truth.size
    if not total:
        raise NotMeasured("the dataset is empty")
    value = squared / total if kind == MSE else hits / total
    return kind, round(float(value), 6)


def _probabilities(output: np.ndarray, axis: int) -> np.ndarray:
    """Class scores as probabilities along ``axis`` (a softmax unless they already are)."""
    output = output.astype(np.float64)
    if np.all(output >= 0) and np.allclose(output.sum(axis=axis), 1.0, atol=1e-3):
        return output
    shifted = np.exp(output - output.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def evaluate_smooth(run: Callable[[object], list[np.ndarray]], data: Data,
                    channel_axis: int) -> tuple[str, float, float]:
    """(metric name, value, smooth loss) of the model behind ``run`` on ``data``: the
    loss is the mean negative log-probability of the true class for the accuracies (it
    moves with every sample's confidence, where an accuracy on a few samples moves in
    steps), the value itself for mse. Raises NotMeasured as :func:`evaluate` does."""
    outputs = [run(x) for x, _ in data.chunks()]
    replay = iter(outputs)
    kind, value = evaluate(lambda _x: next(replay), data, channel_axis)
    if kind == MSE:
        return kind, value, value
    total = count = 0.0
    for (_, y), output in zip(data.chunks(), outputs, strict=True):
        scores = output[0]
        axis = channel_axis % scores.ndim if kind == ELEMENT_ACCURACY else 1
        probabilities = _probabilities(scores, axis)
        truth = _classes(y if not np.issubdtype(y.dtype, np.floating) or y.ndim == scores.ndim
                         else y.astype(np.int64), scores.ndim, axis)
        picked = np.take_along_axis(probabilities, np.expand_dims(truth, axis), axis=axis)
        total += float(-np.log(np.clip(picked, 1e-12, 1.0)).sum())
        count += picked.size
    return kind, value, round(total / max(count, 1.0), 6)
