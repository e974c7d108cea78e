"""The optional ``dataset`` of a Keras job: an ``.npz`` with arrays ``x`` and ``y``.

Read with ``allow_pickle=False`` (an object array is refused, never unpickled), with
bounds on its size, and checked against the model's input before anything runs.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from edgeai.pruning.base import PruningError, UnsafeInputError
from edgeai.pruning.metric import Data, check_npz_size

MAX_SAMPLES = 2048
SEND = ("Send an .npz with an array x of samples shaped like the model's input and an "
        "array y of labels (class indices, one-hot rows, or float targets), e.g. "
        "numpy.savez('data.npz', x=x, y=y).")


def load_npz(path: str, model: Any) -> Data:
    """``x`` (at most 2048 samples) and ``y``; raises PruningError/UnsafeInputError."""
    check_npz_size(path, SEND)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in ("x", "y") if name not in archive.files]
            if missing:
                raise PruningError(f"dataset: the .npz has no array {' or '.join(missing)} "
                                   f"(it holds {', '.join(archive.files) or 'nothing'}). {SEND}")
            x, y = archive["x"][:MAX_SAMPLES], archive["y"][:MAX_SAMPLES]
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise UnsafeInputError("dataset: the .npz holds Python objects (a pickled array), "
                                   f"which are never loaded. {SEND}") from None
        raise PruningError(f"dataset: unreadable .npz ({error}). {SEND}") from None
    if x.dtype == object or y.dtype == object:
        raise UnsafeInputError(f"dataset: object arrays are not allowed. {SEND}")
    if len(x) != len(y):
        raise PruningError(f"dataset: x has {len(x)} samples but y has {len(y)}. {SEND}")
    if len(model.inputs) != 1:
        raise PruningError("dataset: the model has several inputs; a dataset is supported "
                           "for models with one input.")
    expected = tuple(model.inputs[0].shape[1:])
    if x.ndim != len(expected) + 1 or any(e is not None and e != d
                                          for e, d in zip(expected, x.shape[1:], strict=False)):
        raise PruningError(f"dataset: samples of shape {list(x.shape[1:])} do not fit the "
                           f"model's input {[d if d is not None else 'any' for d in expected]}"
                           f". {SEND}")
    if not np.issubdtype(x.dtype, np.number):
        raise PruningError(f"dataset: x must be numbers, not {x.dtype}. {SEND}")
    return Data(x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x, y)
