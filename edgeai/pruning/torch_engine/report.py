"""Measurements for the report: parameters, MACs, accuracy, the torchsummary table,
and the optional ``torch.export`` program."""
from __future__ import annotations

import contextlib
import io
import os

import torch
from torch import nn


def count_params_macs(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """Parameters and multiply-accumulates for one sample (torch-pruning's counter)."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(params), int(macs)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> float | None:
    """Top-1 accuracy on ``(x, y)`` in eval mode; None without labels."""
    if y is None:
        return None
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(x[i:i + 64]).argmax(dim=1) for i in range(0, len(x), 64)])
    return round(float((predictions == y.view(-1).long()).float().mean()), 4)


def summary_text(model: nn.Module, input_size: list[int]) -> str:
    """torchsummary's table of ``model`` as plain text (what the guide's status shows)."""
    from torchsummary import summary

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        summary(model, tuple(input_size), device="cpu")
    return buffer.getvalue()


def export_program(model: nn.Module, example: torch.Tensor, out_dir: str,
                   stem: str) -> tuple[str | None, str | None]:
    """Write ``<stem>.pt2`` with torch.export; return (file name, None) or (None, reason)."""
    try:
        program = torch.export.export(model, (example,))
        name = stem + ".pt2"
        torch.export.save(program, os.path.join(out_dir, name))
        return name, None
    except Exception as error:  # noqa: BLE001 - export is best effort
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
