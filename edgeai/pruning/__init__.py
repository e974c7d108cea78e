"""Framework pruning engines behind one pipeline (see :mod:`edgeai.pruning.pipeline`).

Importing this package imports neither TensorFlow nor torch, nor even NumPy (the
sandbox child imports it before it confines itself, and NumPy's BLAS starts
threads): an engine's module imports its framework only inside the steps that
need it, so the server reads the engines' declarations (:func:`specs`) cheaply.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgeai.pruning.base import (
    PruneJob,
    PruneResult,
    PruningError,
    UnsafeInputError,
    channels_to_remove,
)
from edgeai.pruning.spec import EngineSpec

if TYPE_CHECKING:
    from edgeai.pruning.pipeline import Engine

# The registry: framework name -> (module, engine class). Adding an engine is one line.
_ENGINES = {
    "tensorflow": ("edgeai.pruning.keras_engine", "KerasPruner"),
    "pytorch": ("edgeai.pruning.torch_engine", "TorchPruner"),
    "onnx": ("edgeai.pruning.onnx_engine", "OnnxPruner"),
}
FRAMEWORKS = tuple(_ENGINES)


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


def __getattr__(name: str) -> Any:
    if name == "Engine":  # imported on first use: the pipeline imports NumPy
        from edgeai.pruning.pipeline import Engine

        return Engine
    raise AttributeError(name)


def specs() -> tuple[EngineSpec, ...]:
    """Every engine's declaration of its submit call, parameters and files."""
    return tuple(get_engine(framework).spec for framework in FRAMEWORKS)


def spec_for(framework: str) -> EngineSpec:
    """The declaration of ``framework``'s engine; raises ``PruningError`` if unknown."""
    return get_engine(framework).spec


__all__ = [
    "FRAMEWORKS",
    "Engine",
    "EngineSpec",
    "PruneJob",
    "PruneResult",
    "PruningError",
    "UnsafeInputError",
    "channels_to_remove",
    "get_engine",
    "spec_for",
    "specs",
]
