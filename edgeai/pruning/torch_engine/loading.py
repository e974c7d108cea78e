"""Loading the user's model: class, weights (never unpickling code) and dataset."""
from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from edgeai.pruning.base import PruningError, UnsafeInputError

WEIGHT_WRAPPERS = ("state_dict", "model_state_dict", "model")


def build_model(module, model_name: str) -> nn.Module:
    """Instantiate ``model_name`` from the user's module with no arguments.

    Raises :class:`PruningError` if the class is missing, is not an ``nn.Module``,
    or its constructor needs arguments or fails.
    """
    cls = getattr(module, model_name, None)
    if cls is None:
        found = [n for n, v in vars(module).items()
                 if inspect.isclass(v) and issubclass(v, nn.Module) and v.__module__ ==
                 module.__name__]
        raise PruningError(f"model_name={model_name!r} is not defined in class_def; classes "
                           f"found: {', '.join(found) or 'none'}.")
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise PruningError(f"model_name={model_name!r} is not a torch.nn.Module subclass.")
    try:
        required = [p.name for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
                    if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                           p.KEYWORD_ONLY)]
    except (TypeError, ValueError):
        required = []
    if required:
        raise PruningError(f"{model_name}() needs arguments ({', '.join(required)}); the "
                           "service builds the model with no arguments, as the guide says.")
    try:
        model = cls()
    except Exception as error:  # noqa: BLE001
        raise PruningError(f"{model_name}() failed: {type(error).__name__}: {error}") from None
    return model


def load_state_dict_file(path: str, client_name: str) -> dict[str, torch.Tensor]:
    """Read a state_dict without running pickled code (``weights_only=True``), or
    a ``.safetensors`` file. Raises :class:`UnsafeInputError` / :class:`PruningError`."""
    if Path(client_name).suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as error:  # noqa: BLE001
            raise PruningError(f"weights: not a readable safetensors file ({error}).") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle.UnpicklingError and kin
        text = str(error).split("\n")[0][:300]
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise UnsafeInputError(
                "weights: the file holds pickled objects other than tensors, which could run "
                "code when loaded, so it was not loaded. Send model.state_dict() saved with "
                f"torch.save, or a .safetensors file. ({text})") from None
        raise PruningError(f"weights: not a readable torch.save file ({text}).") from None
    for key in WEIGHT_WRAPPERS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise PruningError("weights must be a state_dict (a dict of tensors), as "
                           "torch.save(model.state_dict(), 'weights.pth') writes.")
    return data


def apply_weights(model: nn.Module, state: dict[str, torch.Tensor], model_name: str) -> None:
    """Load ``state`` strictly; the error lists missing, unexpected and mismatched keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", mismatched)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:8])}"
                             + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""))
        raise PruningError(f"weights do not fit {model_name}: " + "; ".join(parts) + ".")
    model.load_state_dict(state, strict=True)
