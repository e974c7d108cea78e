"""The optional ``dataset`` upload, read without running code from a pickle.

The guide makes it with ``torch.save(train_loader, 'train_loader.pth')``: a
pickled ``DataLoader``. It is read with a restricted unpickler whose
``find_class`` allows only the DataLoader machinery, tensors and plain
containers, so a ``__reduce__`` that would run code is refused before anything
is called. Tensors, ``(x, y)`` tuples and dicts go through ``weights_only=True``;
``.npz`` through NumPy with pickles off.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from types import ModuleType

import torch

from edgeai.pruning.base import PruningError, UnsafeInputError

SEND_INSTEAD = ("Send a DataLoader over a TensorDataset, a tensor, an (x, y) tuple or a dict "
                "with 'x' and 'y' saved with torch.save, or an .npz with arrays x and y.")

ALLOWED_GLOBALS = {
    ("torch.utils.data.dataloader", "DataLoader"),
    ("torch.utils.data.dataloader", "_DatasetKind"),
    ("torch.utils.data.dataset", "TensorDataset"),
    ("torch.utils.data.dataset", "Subset"),
    ("torch.utils.data.dataset", "ConcatDataset"),
    ("torch.utils.data.sampler", "SequentialSampler"),
    ("torch.utils.data.sampler", "RandomSampler"),
    ("torch.utils.data.sampler", "BatchSampler"),
    ("torch.utils.data.sampler", "SubsetRandomSampler"),
    ("torch.utils.data._utils.collate", "default_collate"),
    ("torch.utils.data._utils.collate", "default_convert"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"), ("torch", "LongStorage"), ("torch", "IntStorage"),
    ("torch", "DoubleStorage"), ("torch", "ByteStorage"), ("torch", "BoolStorage"),
    ("torch", "HalfStorage"), ("torch.storage", "UntypedStorage"), ("torch", "UntypedStorage"),
    ("torch", "Generator"), ("torch", "device"), ("torch", "dtype"),
    ("torch", "float32"), ("torch", "int64"),
    ("collections", "OrderedDict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
    ("copyreg", "_reconstructor"), ("builtins", "object"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS or (module == "torch" and name.endswith("Storage")
                                                 and name[0].isupper()):
            return super().find_class(module, name)
        raise UnsafeInputError(f"dataset: the pickle refers to {module}.{name}, which is not "
                               f"allowed (it could run code when loaded). {SEND_INSTEAD}")


def _restricted_load(file, **kwargs):
    """``pickle.load`` through the allow-list.

    torch.load's legacy (non-zip) reader calls ``pickle_module.load`` for the
    file's header records before it builds its Unpickler: those must be
    restricted too, or a plain pickle's first record would run unchecked.
    """
    return _RestrictedUnpickler(file, **kwargs).load()


# The ``pickle_module`` handed to torch.load: every way it unpickles goes through
# the allow-list (torch subclasses ``Unpickler`` and calls ``load``).
restricted_pickle = ModuleType("edgeai_restricted_pickle")
restricted_pickle.Unpickler = _RestrictedUnpickler
restricted_pickle.load = _restricted_load
restricted_pickle.__name__ = "edgeai_restricted_pickle"


def _from_object(obj) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pull ``(x, y)`` out of what the upload held."""
    from torch.utils.data import DataLoader, Subset, TensorDataset

    if isinstance(obj, DataLoader):
        obj = obj.dataset
    if isinstance(obj, Subset) and isinstance(obj.dataset, TensorDataset):
        tensors = [t[torch.as_tensor(obj.indices)] for t in obj.dataset.tensors]
        obj = TensorDataset(*tensors)
    if isinstance(obj, TensorDataset):
        tensors = obj.tensors
        return tensors[0], (tensors[1] if len(tensors) > 1 else None)
    if isinstance(obj, torch.Tensor):
        return obj, None
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], torch.Tensor):
        return obj[0], (obj[1] if len(obj) > 1 and isinstance(obj[1], torch.Tensor) else None)
    if isinstance(obj, dict):
        x = obj.get("x", obj.get("data", obj.get("inputs")))
        y = obj.get("y", obj.get("targets", obj.get("labels")))
        if isinstance(x, torch.Tensor):
            return x, (y if isinstance(y, torch.Tensor) else None)
    raise PruningError(f"dataset: cannot use a {type(obj).__name__}. {SEND_INSTEAD}")


def load_dataset(path: str, client_name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return ``(x, y)`` from the dataset upload (``y`` may be None).

    Raises :class:`UnsafeInputError` for a pickle that names anything outside
    the allow-list and :class:`PruningError` for unusable content.
    """
    if Path(client_name).suffix.lower() == ".npz":
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as arrays:
                x = arrays["x"] if "x" in arrays else arrays[arrays.files[0]]
                y = arrays["y"] if "y" in arrays else None
                return torch.from_numpy(np.array(x)), (torch.from_numpy(np.array(y))
                                                       if y is not None else None)
        except (ValueError, KeyError, IndexError, OSError) as error:
            raise PruningError(f"dataset: unreadable .npz ({error}). {SEND_INSTEAD}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not plain tensors: try the DataLoader allow-list
        try:
            # Only here, in the sandboxed job child, and only through the restricted
            # unpickler: its find_class allows the DataLoader classes and nothing else.
            obj = torch.load(  # sandboxed restricted unpickler: find_class allow-list
                path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle)
        except UnsafeInputError:
            raise
        except Exception as error:  # noqa: BLE001
            raise PruningError(f"dataset: not a readable torch.save file "
                               f"({str(error)[:200]}). {SEND_INSTEAD}") from None
    return _from_object(obj)
