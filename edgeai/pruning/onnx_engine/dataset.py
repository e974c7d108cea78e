"""The optional ``dataset`` of an ONNX job: an ``.npz`` holding one array per model
input, named after the input (``x`` also works for a model with one input), and the
labels as ``y``.

Read with ``allow_pickle=False`` (an object array is refused, never unpickled), with
bounds on its size, and checked against the model's inputs before anything runs.
"""
from __future__ import annotations

import numpy as np

from edgeai.pruning.base import PruningError, UnsafeInputError
from edgeai.pruning.metric import Data, check_npz_size
from edgeai.pruning.onnx_engine.loading import ModelInput

MAX_SAMPLES = 2048
LABELS = "y"


def _send(inputs: list[ModelInput]) -> str:
    names = ", ".join(repr(item.name) for item in inputs)
    example = ("numpy.savez('data.npz', x=x, y=y)" if len(inputs) == 1
               else "numpy.savez('data.npz', **{name: array, ...}, y=y)")
    return (f"Send an .npz with one array per model input, named after it ({names}"
            f"{'; or x' if len(inputs) == 1 else ''}), samples first, and the labels as y "
            f"(class indices, one-hot rows, or float targets), e.g. {example}.")


def load_npz(path: str, inputs: list[ModelInput]) -> Data:
    """The samples (at most 2048) and labels; raises PruningError/UnsafeInputError."""
    send = _send(inputs)
    check_npz_size(path, send)
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = [item.name if item.name in archive.files or len(inputs) > 1 else "x"
                     for item in inputs]
            missing = [name for name in [*names, LABELS] if name not in archive.files]
            if missing:
                raise PruningError(f"dataset: the .npz has no array "
                                   f"{' or '.join(map(repr, missing))} (it holds "
                                   f"{', '.join(archive.files) or 'nothing'}). {send}")
            arrays = [archive[name][:MAX_SAMPLES] for name in names]
            labels = archive[LABELS][:MAX_SAMPLES]
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise UnsafeInputError("dataset: the .npz holds Python objects (a pickled array), "
                                   f"which are never loaded. {send}") from None
        raise PruningError(f"dataset: unreadable .npz ({error}). {send}") from None
    if labels.dtype == object or any(array.dtype == object for array in arrays):
        raise UnsafeInputError(f"dataset: object arrays are not allowed. {send}")
    checked = []
    for item, name, array in zip(inputs, names, arrays, strict=True):
        if len(array) != len(labels):
            raise PruningError(f"dataset: {name} has {len(array)} samples but y has "
                               f"{len(labels)}. {send}")
        if tuple(array.shape[1:]) != item.sample_shape:
            raise PruningError(f"dataset: samples of {name} have shape {list(array.shape[1:])}"
                               f"; the model's input {item.name!r} takes "
                               f"{list(item.sample_shape)}. {send}")
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise PruningError(f"dataset: {name} must be numbers, not {array.dtype}. {send}")
        checked.append(array.astype(item.dtype))
    return Data(checked[0] if len(checked) == 1 else checked, labels)
