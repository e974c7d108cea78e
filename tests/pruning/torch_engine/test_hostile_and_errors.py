"""Untrusted inputs to the PyTorch engine: refused with a reason, and nothing runs."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from edgeai.pruning import PruningError, UnsafeInputError
from edgeai.pruning.torch_engine.classfile import check_class_file
from tests.pruning.torch_engine.models import GUIDE_NET_SOURCE

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
    ("x = torch._C", "attribute '_C'"),
    ("x = torch.serialization.os", "torch.serialization"),
    ("x = torch.ops.aten", "torch.ops"),
    ("x = torch.utils.cpp_extension", "torch.utils.cpp_extension"),
    ("x = torch.hub.load", "torch.hub"),
    ("import torch.utils.cpp_extension", "torch.utils.cpp_extension"),
    ("from torch import serialization", "torch.serialization"),
    ("x = ().__class__.__bases__[0].__subclasses__()", "__subclasses__"),
    ("x = getattr(torch, 'load')", "'getattr'"),
    ("x = globals()", "'globals'"),
    ("import torch as T\nx = T.load", "torch.load"),
    ("x = torch.nn.Module.__init__.__globals__", "'__globals__'"),
])
def test_class_file_refusals_name_the_line(snippet, needle):
    source = "import torch\n" + snippet + "\n"
    with pytest.raises(UnsafeInputError) as caught:
        check_class_file(source)
    message = str(caught.value)
    assert needle in message and message.startswith("class_def line ")


def test_the_guides_class_file_is_accepted():
    check_class_file(GUIDE_NET_SOURCE)


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
