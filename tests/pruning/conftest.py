"""The same small network in each framework, saved as a user saves it, for the tests of
the pipeline's common steps (written once, run for every engine). The ONNX one is the
torch network exported with torch.onnx.export, its nodes renamed as a user might name
them (the first convolution keeps the exporter's folder-like name)."""
from __future__ import annotations

import os
import textwrap
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgeai.pruning import PruneJob

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TORCH_NET = """
import torch
import torch.nn as nn
import torch.nn.functional as F

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.norm = NORM
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.conv2(self.block(x)))
        x = self.norm(x.mean(dim=(2, 3)))
        return self.fc(x)
"""


@dataclass
class Framework:
    """How one framework builds the network, names its layers, and corrupts a rewrite."""

    name: str
    engine_class: type
    conv: str          # the first convolution's name in the report
    container: str     # a container holding that convolution
    tmp: Path

    options: dict = field(default_factory=lambda: {"measure": False})

    def job(self, percent: float, omitted=(), layer_norm: bool = False, fft: bool = False,
            **options) -> PruneJob:
        out = self.tmp / f"job-{uuid.uuid4().hex[:6]}" / "out"
        out.mkdir(parents=True)
        inputs, names, own = self.files(layer_norm, fft)
        return PruneJob(framework=self.name, percent=percent, omitted=tuple(omitted),
                        inputs=inputs, input_names=names, output_dir=str(out),
                        output_stem="tmppipe0001", options={**self.options, **own, **options})

    def files(self, layer_norm: bool, fft: bool = False):
        if self.name == "tensorflow":
            import keras

            keras.utils.set_random_seed(0)
            L = keras.layers
            block = keras.Sequential([keras.Input((10, 10, 3)), L.Conv2D(8, 3, name="conv1"),
                                      L.BatchNormalization(), L.ReLU()], name="block")
            inputs = keras.Input((10, 10, 3))
            x = L.Conv2D(16, 3, activation="relu", name="conv2")(block(inputs))
            x = L.GlobalAveragePooling2D()(x)
            x = L.LayerNormalization(name="norm")(x) if layer_norm else x
            model = keras.Model(inputs, L.Dense(4, name="fc")(x))
            path = self.tmp / f"net-{uuid.uuid4().hex[:6]}.keras"
            model.save(path)
            return {"model": str(path)}, {"model": "net.keras"}, {}
        if self.name == "onnx":
            return self.onnx_files(layer_norm)
        import torch

        folder = self.tmp / f"user-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        source = TORCH_NET.replace("NORM", "nn.LayerNorm(16)" if layer_norm else "nn.Identity()")
        if fft:  # an op with no ONNX mapping: the onnx export fails, nothing else does
            source = source.replace("return self.fc(x)",
                                    "return self.fc(x) + torch.fft.rfft(x).abs().mean(-1, True)")
        (folder / "model.py").write_text(textwrap.dedent(source))
        namespace: dict = {}
        exec(compile(source, "model.py", "exec"), namespace)
        torch.manual_seed(0)
        torch.save(namespace["Net"]().state_dict(), folder / "weights.pth")
        return ({"class_def": str(folder / "model.py"), "weights": str(folder / "weights.pth")},
                {"class_def": "model.py", "weights": "weights.pth"},
                {"input_size": [3, 10, 10], "model_name": "Net"})

    def onnx_files(self, layer_norm: bool):
        import onnx
        import torch

        from tests.pruning.onnx_engine.models import export_torch

        source = TORCH_NET.replace("NORM", "nn.LayerNorm(16)" if layer_norm else "nn.Identity()")
        namespace: dict = {}
        exec(compile(textwrap.dedent(source), "model.py", "exec"), namespace)
        torch.manual_seed(0)
        path = self.tmp / f"net-{uuid.uuid4().hex[:6]}.onnx"
        export_torch(namespace["Net"](), (3, 10, 10), path)
        model = onnx.load(path)
        for node in model.graph.node:
            node.name = {"/conv2/Conv": "conv2", "/fc/Gemm": "fc"}.get(node.name, node.name)
        onnx.save(model, path)
        return {"model": str(path)}, {"model": "net.onnx"}, {}

    def corrupting_engine(self):
        """The real engine, except that its rewrite swaps two kept filters of conv2."""
        base = self.engine_class

        class Corrupting(base):
            def rewrite(self, loaded, analysis, plan):
                pruned, failed = super().rewrite(loaded, analysis, plan)
                swap_two_filters(pruned, self.spec.name)
                return pruned, failed

            def rewrite_saved(self, loaded, analysis, plan, job):  # Keras: file, then model
                written, failure = super().rewrite_saved(loaded, analysis, plan, job)
                if written is not None:
                    swap_two_filters(written.model, self.spec.name)
                return written, failure

        return Corrupting()


def swap_two_filters(model, framework: str) -> None:
    if framework == "onnx":
        from onnx import numpy_helper

        node = next(n for n in model.proto.graph.node if n.name == "conv2")
        for init in model.proto.graph.initializer:
            if init.name in (node.input[1], node.input[2]):
                value = numpy_helper.to_array(init).copy()
                value[[0, 1]] = value[[1, 0]] + (1.0 if value.ndim == 1 else 0.0)
                init.CopyFrom(numpy_helper.from_array(value, init.name))
        return
    if framework == "tensorflow":
        layer = model.get_layer("conv2")
        kernel, bias = layer.get_weights()
        kernel[..., [0, 1]] = kernel[..., [1, 0]]
        bias[[0, 1]] = bias[[1, 0]] + 1.0
        layer.set_weights([kernel, bias])
        return
    import torch

    with torch.no_grad():
        model.conv2.weight[[0, 1]] = model.conv2.weight[[1, 0]].clone()
        model.conv2.bias[[0, 1]] = model.conv2.bias[[1, 0]].clone() + 1.0


@pytest.fixture(params=["tensorflow", "pytorch", "onnx"])
def framework(request, tmp_path):
    if request.param == "tensorflow":
        from edgeai.pruning.keras_engine import KerasPruner

        return Framework("tensorflow", KerasPruner, "block/conv1", "block", tmp_path)
    if request.param == "onnx":
        from edgeai.pruning.onnx_engine import OnnxPruner

        return Framework("onnx", OnnxPruner, "/block/block.0/Conv", "/block", tmp_path)
    from edgeai.pruning.torch_engine import TorchPruner

    return Framework("pytorch", TorchPruner, "block.0", "block", tmp_path)


