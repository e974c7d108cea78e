"""PyTorch models as ONNX (``torch.onnx.export``, opset 18, dynamic batch), run in ONNX
Runtime, and timed in torch (eager) and ONNX Runtime.

The TorchScript-based exporter is used (``dynamo=False``): here it exports the
guide's Net in 0.1 s where the torch.export-based one takes 3 s and needs
``onnxscript``; it is deprecated upstream but still shipped.
"""
from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

ONNX_OPSET = 18


class _Traced(nn.Module):
    """A module the TorchScript exporter can trace: it takes any module with a ``graph``
    attribute (an FX ``GraphModule``, as a rebuilt .pt2 program is) for a TorchScript one."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, batch: torch.Tensor) -> Any:
        return self.module(batch)


def to_onnx(model: nn.Module, example: torch.Tensor, target: Any) -> None:
    """Write ``model`` as ONNX to ``target`` (a path or a binary stream)."""
    if hasattr(model, "graph"):
        model = _Traced(model)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notice
        torch.onnx.export(model.eval(), (example,), target, input_names=["input"],
                          dynamic_axes={"input": {0: "batch"}}, opset_version=ONNX_OPSET,
                          dynamo=False)


def export(model: nn.Module, example: torch.Tensor, out_dir: str, stem: str) -> str:
    """Write ``<stem>.onnx``; return its name."""
    name = stem + ".onnx"
    to_onnx(model, example, os.path.join(out_dir, name))
    return name


def onnx_runner(content: bytes | str, batch: torch.Tensor, threads: int,
                ) -> Callable[[], list[np.ndarray]]:
    """A function running the ONNX model on ``batch`` in ONNX Runtime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: batch.numpy()}
    return lambda: [np.asarray(out) for out in session.run(None, feeds)]


def timer(model: nn.Module, runtime: str, batch: torch.Tensor, threads: int,
          path: str | None = None) -> Callable[[], object]:
    """One forward pass of ``model`` on ``batch`` in ``runtime`` (set up here); ``path``:
    the model already exported as ONNX."""
    if runtime == "torch":
        torch.set_num_threads(threads)

        def forward() -> object:
            with torch.no_grad():
                return model(batch)

        model.eval()
        return forward
    if runtime == "onnxruntime":
        if path:
            return onnx_runner(path, batch, threads)
        buffer = io.BytesIO()
        to_onnx(model, batch[:1], buffer)
        return onnx_runner(buffer.getvalue(), batch, threads)
    raise ValueError(f"no runtime {runtime!r}")
