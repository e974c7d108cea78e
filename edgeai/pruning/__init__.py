"""Framework pruning engines behind one interface (see :mod:`edgeai.pruning.base`).

Importing this package imports neither TensorFlow nor torch: :func:`get_engine`
imports an engine only when a job needs it.
"""
from __future__ import annotations

import importlib

from edgeai.pruning.base import (
    Engine,
    PruneJob,
    PruneResult,
    PruningError,
    UnsafeInputError,
    channels_to_remove,
    empty_report,
)

FRAMEWORKS = ("tensorflow", "pytorch")

_ENGINES = {
    "tensorflow": ("edgeai.pruning.keras_engine", "KerasPruner"),
    "pytorch": ("edgeai.pruning.torch_engine", "TorchPruner"),
}


def get_engine(framework: str) -> Engine:
    """Return a new engine for ``framework``; raises ``PruningError`` if unknown."""
    try:
        module_name, class_name = _ENGINES[framework]
    except KeyError:
        raise PruningError(
            f"unknown framework {framework!r}; supported: {', '.join(FRAMEWORKS)}"
        ) from None
    module = importlib.import_module(module_name)
    return getattr(module, class_name)()


__all__ = [
    "Engine",
    "FRAMEWORKS",
    "PruneJob",
    "PruneResult",
    "PruningError",
    "UnsafeInputError",
    "channels_to_remove",
    "empty_report",
    "get_engine",
]
