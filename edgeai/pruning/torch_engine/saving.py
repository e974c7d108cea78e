"""The PyTorch artifacts, and loading them back the way a user does."""
from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import nn

from edgeai.pruning.base import PruningError
from edgeai.pruning.report import JobReport
from edgeai.pruning.torch_engine.pruner import PRODUCERS


def save_artifacts(model: nn.Module, example: torch.Tensor, out_dir: str, stem: str,
                   report: JobReport) -> dict[str, str | None]:
    """Write ``<stem>.pt`` (``torch.save((model, info))``, as the guide loads it),
    ``<stem>.state_dict.pt`` (weights and layer sizes) and, where the model exports,
    ``<stem>.pt2``; return format -> file name."""
    main = stem + ".pt"
    torch.save((model, report.to_dict()), os.path.join(out_dir, main))
    state_name = save_state_dict(model, out_dir, stem)
    pt2_name, why = export_program(model, example, out_dir, stem)
    if why:
        report.warnings.append(why if pt2_name else
                               f"torch.export failed, no pt2 download: {why}")
    return {"model": main, "state_dict": state_name, "pt2": pt2_name}


def save_program_artifacts(model: nn.Module, example: torch.Tensor, out_dir: str, stem: str,
                           report: JobReport) -> dict[str, str | None]:
    """For a job that uploaded a .pt2: the pruned program ``<stem>.pt2`` is the main
    artifact (``model`` and ``pt2``), with ``<stem>.state_dict.pt``. Raises PruningError
    when the pruned module does not export (there is nothing else to ship)."""
    name, why = export_program(model, example, out_dir, stem)
    if name is None:
        raise PruningError(f"The pruned program could not be exported with torch.export "
                           f"({why}); nothing was returned.")
    if why:
        report.warnings.append(why)
    return {"model": name, "pt2": name, "state_dict": save_state_dict(model, out_dir, stem)}


def save_state_dict(model: nn.Module, out_dir: str, stem: str) -> str:
    """Write ``<stem>.state_dict.pt`` (the weights and each layer's new sizes); return
    its name."""
    state_name = stem + ".state_dict.pt"
    sizes: dict[str, dict[str, int | None]] = {
        name: {"in": getattr(m, "in_channels", getattr(m, "in_features", None)),
               "out": getattr(m, "out_channels", getattr(m, "out_features", None))}
        for name, m in model.named_modules() if isinstance(m, PRODUCERS)}
    sizes.update({name: {"input_size": m.input_size, "hidden_size": m.hidden_size}
                  for name, m in model.named_modules() if isinstance(m, nn.RNNBase)})
    torch.save({"state_dict": model.state_dict(), "layer_sizes": sizes},
               os.path.join(out_dir, state_name))
    return state_name


def export_program(model: nn.Module, example: torch.Tensor, out_dir: str,
                   stem: str) -> tuple[str | None, str | None]:
    """Write ``<stem>.pt2`` with torch.export, with a dynamic batch dimension where the
    model allows one. Returns (file name, None); (file name, why its batch is fixed);
    or (None, why nothing could be exported).

    The batch is traced at 2: torch.export fixes a dimension it sees at size 1, so an
    example of one sample would tie the program to batches of one.
    """
    name = stem + ".pt2"
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    note = None
    model.eval()
    try:
        program = torch.export.export(model, (torch.cat([example, example]),),
                                      dynamic_shapes=({0: batch},))
        program.example_inputs = ((example,), {})  # the file stores one sample, not two
    except Exception as error:  # noqa: BLE001 - a model tied to its batch size exports statically
        note = (f"the pt2 program runs only on batches of {example.shape[0]}: the model does "
                f"not export with a dynamic batch ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:200] if str(error) else ''})")
        try:
            program = torch.export.export(model, (example,))
        except Exception as error:  # noqa: BLE001 - export is best effort
            return None, f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
    torch.export.save(program, os.path.join(out_dir, name))
    return name, note


class _SampleBySample(nn.Module):
    """A program exported for one sample, run on a batch one sample at a time."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, batch: torch.Tensor):
        outputs = [self.module(sample[None]) for sample in batch]
        if isinstance(outputs[0], torch.Tensor):
            return torch.cat(outputs)
        return tuple(torch.cat(parts) for parts in zip(*outputs, strict=True))


def load_back(out_dir: str, artifacts: dict[str, str | None], pruned: nn.Module,
              ) -> dict[str, Any]:
    """The state_dict, loaded with ``weights_only=True`` into the pruned architecture,
    and the pt2 program, loaded with ``torch.export.load``. (The main file unpickles
    the user's class, as the guide's full-model load does on the user's side;
    it holds the same tensors as the state_dict.)"""
    models: dict[str, Any] = {}
    if artifacts.get("state_dict"):
        saved = torch.load(os.path.join(out_dir, artifacts["state_dict"]), weights_only=True)
        model = copy.deepcopy(pruned)
        model.load_state_dict(saved["state_dict"], strict=True)
        models["state_dict"] = model.eval()
    if artifacts.get("pt2"):
        # Our own file, read back as the user will read it (in the job's sandbox).
        path = os.path.join(out_dir, artifacts["pt2"])
        program = torch.export.load(path)  # sandboxed: .pt2 is code
        # A program with a symbolic batch size has range constraints on it.
        dynamic = bool(program.range_constraints)
        models["pt2"] = program.module() if dynamic else _SampleBySample(program.module())
    return models
