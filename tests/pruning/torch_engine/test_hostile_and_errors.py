"""Untrusted inputs to the PyTorch engine: refused with a reason, and nothing runs."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from edgeai.pruning import PruningError, UnsafeInputError
from edgeai.pruning.torch_engine.classfile import check_class_file
from tests.pruning.torch_engine.models import BREADTH, GUIDE_NET_SOURCE

TINY = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))
"""


@pytest.mark.parametrize("snippet, needle", [
    ("import os", "import of 'os'"),
    ("import subprocess as sp", "import of 'subprocess'"),
    ("from os import system", "import from 'os'"),
    ("from . import x", "import from '.'"),
    ("x = __import__('os')", "'__import__'"),
    ("eval('1')", "'eval'"),
    ("exec('x = 1')", "'exec'"),
    ("open('/tmp/x', 'w').write('x')", "'open'"),
    ("x = torch._C", "torch._C"),
    ("x = torch.serialization.os", "torch.serialization"),
    ("x = torch.ops.aten", "torch.ops"),
    ("x = torch.utils.cpp_extension", "torch.utils.cpp_extension"),
    ("x = torch.hub.load", "torch.hub"),
    ("import torch.utils.cpp_extension", "torch.utils.cpp_extension"),
    ("from torch import serialization", "torch.serialization"),
    ("x = ().__class__.__bases__[0].__subclasses__()", "__subclasses__"),
    ("x = getattr(torch, 'load')", "attribute 'load'"),
    ("x = globals()", "'globals'"),
    ("import torch as T\nx = T.load", "torch.load"),
    ("x = torch.nn.Module.__init__.__globals__", "'__globals__'"),
    # torch reached through another module, or through a plain variable
    ("import torch.nn.functional as F\nF.torch.load('w.pth')", "attribute 'torch'"),
    ("from torch.nn.functional import torch as t2", "attribute 'torch'"),
    ("x = torch.nn.modules.module.sys.modules", "attribute 'sys'"),
    ("t = torch\nt._C._get_tracing_state()", "private attribute '_C'"),
    ("t = torch\nt.hub.load('a', 'b')", "attribute 'hub'"),
    ("x = torch.utils.data.dataloader.multiprocessing", "attribute 'multiprocessing'"),
    ("import typing\ntyping.get_type_hints(torch)", "'get_type_hints'"),
    ("def f(self, name):\n    return getattr(self, name)", "'getattr' with a computed"),
    ("g = getattr", "'getattr' is not allowed"),
    ("x = torch.compile", "torch.compile"),
    ("x = torch.jit.load", "torch.jit"),
])
def test_class_file_refusals_name_the_line(snippet, needle):
    source = "import torch\n" + snippet + "\n"
    with pytest.raises(UnsafeInputError) as caught:
        check_class_file(source)
    message = str(caught.value)
    assert needle in message and message.startswith("class_def line ")


@pytest.mark.parametrize("source", [
    GUIDE_NET_SOURCE, *[source for source, _size in BREADTH.values()],
    "import torch\nfrom torch import nn\nimport math, typing, collections, functools\n"
    "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
    "        self.conv1 = nn.Conv2d(1, 2, 3)\n        self._scale = math.sqrt(2.0)\n"
    "    def forward(self, x):\n        return getattr(self, 'conv1')(x) * self._scale\n"
    "if __name__ == '__main__':\n    print(Net())\n",
])
def test_ordinary_class_files_are_accepted(source):
    check_class_file(source)


class Canary:
    """A pickle payload that would create ``path`` if it were ever unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_weights_pickle_that_runs_code_never_runs(user_files, prune_torch, tmp_path):
    paths, _ = user_files(TINY)
    canary = tmp_path / "canary-weights"
    with open(paths["weights"], "wb") as handle:
        pickle.dump({"conv.weight": Canary(canary)}, handle)
    with pytest.raises(UnsafeInputError, match="could run code"):
        prune_torch(paths, 0.5, (1, 8, 8))
    assert not canary.exists()


def test_torch_saved_weights_with_code_never_run(user_files, prune_torch, tmp_path):
    paths, _ = user_files(TINY)
    canary = tmp_path / "canary-torch"
    torch.save({"conv.weight": Canary(canary)}, paths["weights"])
    with pytest.raises(UnsafeInputError):
        prune_torch(paths, 0.5, (1, 8, 8))
    assert not canary.exists()


def test_dataset_pickle_that_runs_code_never_runs(user_files, prune_torch, tmp_path):
    paths, _ = user_files(TINY)
    canary = tmp_path / "canary-dataset"
    paths["dataset"] = tmp_path / "train_loader.pth"
    torch.save(Canary(canary), paths["dataset"])
    with pytest.raises(UnsafeInputError, match="not allowed"):
        prune_torch(paths, 0.5, (1, 8, 8))
    assert not canary.exists()


@pytest.mark.parametrize("writer", ["pickle", "torch_legacy"])
def test_dataset_plain_pickle_never_runs(user_files, prune_torch, tmp_path, writer):
    # Not a zip: torch.load's legacy reader unpickles header records with
    # pickle_module.load before its own Unpickler; the payload sits in the first one.
    paths, _ = user_files(TINY)
    canary = tmp_path / f"canary-{writer}"
    paths["dataset"] = tmp_path / "train_loader.pth"
    with open(paths["dataset"], "wb") as handle:
        if writer == "pickle":
            pickle.dump(Canary(canary), handle)
        else:
            torch.save(Canary(canary), handle, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeInputError, match="not allowed"):
        prune_torch(paths, 0.5, (1, 8, 8))
    assert not canary.exists()


def test_legacy_format_dataloader_is_read(user_files, prune_torch, tmp_path):
    data = torch.utils.data.TensorDataset(torch.randn(12, 1, 8, 8), torch.randint(0, 3, (12,)))
    paths, _ = user_files(TINY)
    paths["dataset"] = tmp_path / "train_loader.pth"
    torch.save(torch.utils.data.DataLoader(data, batch_size=4, shuffle=True), paths["dataset"],
               _use_new_zipfile_serialization=False)
    result, _ = prune_torch(paths, 0.5, (1, 8, 8))
    assert result.report["accuracy_after"] is not None


def test_guide_dataloader_gives_accuracy_before_and_after(user_files, prune_torch):
    data = torch.utils.data.TensorDataset(torch.randn(40, 1, 8, 8), torch.randint(0, 3, (40,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)
    paths, _ = user_files(TINY, dataset=loader)
    result, _ = prune_torch(paths, 0.5, (1, 8, 8))
    assert 0 <= result.report["accuracy_before"] <= 1
    assert 0 <= result.report["accuracy_after"] <= 1


def test_npz_and_safetensors(user_files, prune_torch, tmp_path):
    from safetensors.torch import save_file

    paths, model = user_files(TINY)
    paths["weights"] = tmp_path / "weights.safetensors"
    save_file(model.state_dict(), paths["weights"])
    paths["dataset"] = tmp_path / "data.npz"
    np.savez(paths["dataset"], x=np.random.rand(10, 1, 8, 8).astype("float32"),
             y=np.arange(10) % 3)
    result, out = prune_torch(paths, 0.5, (1, 8, 8))
    assert result.report["params_after"] < result.report["params_before"]
    assert result.report["accuracy_after"] is not None
    assert sorted(os.listdir(out))[0].startswith("tmptest0001")


@pytest.mark.parametrize("source, kwargs, needle", [
    (TINY, {"model_name": "Missing"}, "not defined in class_def; classes found: Net"),
    (TINY.replace("def __init__(self):", "def __init__(self, width):"), {},
     "needs arguments (width)"),
    (TINY, {"input_size": (3, 8, 8)}, "input_size=3,8,8 does not fit Net"),
    (TINY, {"omitted": ("conv", "nope")}, "does not have: nope. Layers with channels: conv, fc"),
])
def test_user_errors_say_which(user_files, prune_torch, source, kwargs, needle):
    fixed = source.replace("def __init__(self, width):", "def __init__(self, width=1):")
    paths, _ = user_files(fixed)
    if "width" in source:
        paths["class_def"].write_text(source)
    args = {"input_size": (1, 8, 8)}
    args.update(kwargs)
    with pytest.raises(PruningError) as caught:
        prune_torch(paths, 0.5, **args)
    assert needle in str(caught.value)


def test_weights_that_do_not_fit_list_the_keys(user_files, prune_torch):
    paths, model = user_files(TINY)
    state = model.state_dict()
    state["fc.weight"] = torch.zeros(3, 5)
    del state["conv.bias"]
    torch.save(state, paths["weights"])
    with pytest.raises(PruningError, match=r"missing: conv.bias; wrong shape: fc.weight"):
        prune_torch(paths, 0.5, (1, 8, 8))


RECURRENT_ONLY = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        # GRU and LSTM units prune now; an LSTM with a projection is still kept whole.
        self.lstm = nn.LSTM(6, 8, proj_size=4, batch_first=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])
"""


@pytest.mark.parametrize("source, percent, input_size, needle", [
    (TINY, 0.01, (1, 8, 8), "conv: percent=0.01 removes none of its 8 channels"),
    (RECURRENT_ONLY, 0.5, (5, 6), "lstm: LSTM is left whole"),
])
def test_nothing_prunable_says_why(user_files, prune_torch, source, percent, input_size, needle):
    paths, _ = user_files(source)
    with pytest.raises(PruningError, match="Nothing prunable") as caught:
        prune_torch(paths, percent, input_size)
    assert needle in str(caught.value)


SEQUENTIAL = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
        self.mid = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.mid(self.features(x)), 1))
"""


def test_omitting_a_container_omits_the_layers_inside(user_files, prune_torch):
    paths, _ = user_files(SEQUENTIAL)
    result, _ = prune_torch(paths, 0.5, (1, 8, 8), omitted=("features",))
    status = {layer["name"]: (layer["status"], layer["channels_after"])
              for layer in result.report["layers"]}
    assert status == {"features.0": ("omitted", 8), "features.2": ("omitted", 8),
                      "mid": ("pruned", 4), "fc": ("output", 3)}


def test_input_size_given_as_text(user_files, prune_torch):
    paths, _ = user_files(TINY)
    result, _ = prune_torch(paths, 0.5, "1, 8, 8")
    assert "Conv2d-1" in result.message
    with pytest.raises(PruningError, match="input_size must be positive integers"):
        prune_torch(paths, 0.5, "1,x,8")
