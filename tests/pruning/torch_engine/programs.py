"""torch.export programs (.pt2) made the way a user makes them, and hostile variants.

``build`` makes a model from one of :mod:`.models`' class sources; ``zero_lowest`` zeroes
the channels the pruner must remove, so that pruning changes no output; ``save_program``
exports and saves it (static batch, dynamic batch, or core ATen after
``run_decompositions``); ``craft`` rewrites a saved archive with a part that runs code
when torch loads it.
"""
from __future__ import annotations

import json
import os
import pickle
import types
import uuid
import zipfile
from pathlib import Path

import torch
from torch import nn

from edgeai.pruning.base import channels_to_remove


def build(source: str, seed: int = 0) -> nn.Module:
    """``Net()`` from a class source, in eval mode, with seeded weights and BatchNorm
    statistics that are not the identity (so a mistake in them shows)."""
    module = types.ModuleType(f"program_model_{uuid.uuid4().hex[:8]}")
    exec(compile(source, module.__name__, "exec"), module.__dict__)  # the tests' own source
    torch.manual_seed(seed)
    model = module.Net().eval()
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.running_mean.normal_(0, 0.1)
                layer.running_var.uniform_(0.5, 1.5)
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.normal_(0, 0.1)
    return model


def zero_lowest(model: nn.Module, percent: float, keep: tuple[str, ...] = ()) -> None:
    """Make channels ``0 .. round(n * percent) - 1`` of every layer with ``n`` output
    channels exactly zero, everywhere: their filters, biases and the BatchNorm after
    them. Every member of a channel group then has the lowest L1 scores at the same
    positions, the channels carry zeros through residual adds, depthwise convolutions
    and squeeze-excite, and removing them changes no output. The last Linear (the
    model's output) and layers named in ``keep`` are left alone."""
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear))]
    output = layers[-1][0]
    batch_norms = {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    names = list(dict(model.named_modules()))
    with torch.no_grad():
        for name, layer in layers:
            if name == output or (keep and name.startswith(keep)):
                continue
            count = channels_to_remove(layer.weight.shape[0], percent)
            layer.weight[:count] = 0
            if layer.bias is not None:
                layer.bias[:count] = 0
            after = names[names.index(name) + 1] if names.index(name) + 1 < len(names) else None
            if after in batch_norms:
                batch_norms[after].weight[:count] = 0
                batch_norms[after].bias[:count] = 0


def save_program(model: nn.Module, input_size: tuple[int, ...], path: Path,
                 form: str = "static") -> Path:
    """``torch.export.save`` of ``model``: ``static`` (traced at batch 1, as most users
    export), ``dynamic`` (a ``Dim`` on the batch) or ``core`` (static, then
    ``run_decompositions()``: convolution, addmm, native batch norm)."""
    if form == "dynamic":
        program = torch.export.export(model, (torch.randn(2, *input_size),),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    else:
        program = torch.export.export(model, (torch.randn(1, *input_size),))
    if form == "core":
        program = program.run_decompositions()
    torch.export.save(program, path)
    return path


class _Mkdir:
    """Pickles as ``os.mkdir(path)``: unpickling it makes the folder."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


CRAFTS = ("pickled_weight", "sample_inputs", "shape_expression", "guards_code")


def craft(source: Path, target: Path, kind: str, marker: Path) -> Path:
    """A copy of the archive ``source`` whose ``kind`` part makes the folder ``marker``
    when torch loads it: a weight marked ``use_pickle`` (torch.load weights_only=False),
    example inputs that are not tensors (the same, after a safe load fails), a shape
    expression (sympy's eval), or guard code (exec'd by ``ExportedProgram.module()``,
    run at its first call)."""
    evil = pickle.dumps(_Mkdir(str(marker)), protocol=2)
    with zipfile.ZipFile(source) as archive, \
            zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        names = archive.namelist()
        root = names[0].split("/")[0] + "/"
        for name in names:
            data = archive.read(name)
            inner = name[len(root):]
            if kind == "pickled_weight" and inner == "data/weights/model_weights_config.json":
                config = json.loads(data)
                config["config"][next(iter(config["config"]))]["use_pickle"] = True
                data = json.dumps(config).encode()
            elif kind == "pickled_weight" and inner == "data/weights/weight_0":
                data = evil
            elif kind == "sample_inputs" and inner == "data/sample_inputs/model.pt":
                data = evil
            elif kind in ("shape_expression", "guards_code") and inner == "models/model.json":
                program = json.loads(data)
                if kind == "guards_code":
                    program["guards_code"] = [f"__import__('os').mkdir({str(marker)!r}) is None"]
                else:
                    graph = program["graph_module"]["graph"]
                    graph["tensor_values"]["x"]["sizes"][0] = {"as_expr": {
                        "expr_str": f"__import__('os').mkdir({str(marker)!r})",
                        "hint": {"as_int": 1}}}
                data = json.dumps(program).encode()
            out.writestr(name, data)
    return target
