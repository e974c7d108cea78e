"""Run the real ONNX engine on ONNX files built in the tests, and small graphs written
operator by operator with ``onnx.helper`` (seeded random weights)."""
from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeai.pruning import PruneJob


class Net:
    """A graph under construction: ``node`` adds an operator, ``weight`` a seeded random
    initializer, ``conv``/``gemm`` the layers most cases need."""

    def __init__(self, input_shape=("batch", 3, 8, 8), opset: int = 17, seed: int = 0,
                 name: str = "x", dtype=TensorProto.FLOAT):
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs = [helper.make_tensor_value_info(name, dtype, list(input_shape))]
        self.counter = 0
        self.x = name

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}_{self.counter}"

    def add_input(self, name: str, shape) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def const(self, array, name: str | None = None) -> str:
        name = name or self.fresh("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, *shape, name: str | None = None) -> str:
        return self.const(self.rng.normal(size=shape).astype(np.float32) * 0.3, name)

    def node(self, op: str, inputs, outputs: int = 1, name: str | None = None, **attrs):
        name = name or self.fresh(op)
        outs = [f"{name}_out{k}" for k in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int = 3, group: int = 1, name=None,
             bias: bool = True, relu: bool = True) -> str:
        inputs = [x, self.weight(cout, cin // group, k, k)] + \
            ([self.weight(cout)] if bias else [])
        out = self.node("Conv", inputs, name=name, pads=[k // 2] * 4, group=group)
        return self.node("Relu", [out]) if relu else out

    def gemm(self, x: str, cin: int, cout: int, name=None, trans_b: int = 0) -> str:
        shape = (cout, cin) if trans_b else (cin, cout)
        return self.node("Gemm", [x, self.weight(*shape), self.weight(cout)], name=name,
                         transB=trans_b)

    def head(self, x: str, channels: int, classes: int = 4, name: str = "fc") -> str:
        """Global average pool, flatten, and a Gemm to ``classes`` outputs."""
        pooled = self.node("GlobalAveragePool", [x])
        return self.gemm(self.node("Flatten", [pooled]), channels, classes, name=name)

    def model(self, *outputs: str) -> onnx.ModelProto:
        """The model; its outputs' shapes are what ONNX Runtime computes (a free batch
        stays free)."""
        bare = [onnx.ValueInfoProto(name=o) for o in outputs]
        graph = helper.make_graph(self.nodes, "net", self.inputs, bare, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  ir_version=8)
        free = {}
        for value in self.inputs:
            dims = value.type.tensor_type.shape.dim
            free[value.name] = dims[0].dim_param if dims[0].dim_param else None
        feeds = [np.zeros([2 if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim],
                          np.float32) for v in self.inputs]
        from edgeai.pruning.onnx_engine.runtime import probe

        shapes = {name: value.shape for name, value in probe(model, feeds, outputs).items()}
        batch = next(iter(free.values()))
        del model.graph.output[:]
        for name in outputs:
            dims = list(shapes[name])
            if batch:
                dims[0] = batch
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                                    dims))
        onnx.checker.check_model(model)
        return model

    def save(self, folder: Path, *outputs: str) -> Path:
        path = folder / f"net-{uuid.uuid4().hex[:6]}.onnx"
        onnx.save(self.model(*outputs), path)
        return path


@pytest.fixture
def prune_onnx(tmp_path):
    """``prune_onnx(path, percent, omitted=(), **options)`` -> (result, output folder); the
    job runs the real engine's whole pipeline in this process."""
    from edgeai.pruning.onnx_engine import OnnxPruner

    def run(path: Path, percent: float, omitted=(), inputs=None, **options):
        out = tmp_path / f"out-{uuid.uuid4().hex[:6]}"
        out.mkdir()
        files = {"model": Path(path), **(inputs or {})}
        job = PruneJob(framework="onnx", percent=percent, omitted=tuple(omitted),
                       inputs={role: str(p) for role, p in files.items()},
                       input_names={role: Path(p).name for role, p in files.items()},
                       output_dir=str(out), output_stem="tmponnx0001",
                       options={"measure": False, **options})
        return OnnxPruner().prune(job), out

    return run


def run_onnx(path, *arrays) -> list[np.ndarray]:
    """Outputs of an ONNX file in ONNX Runtime (one thread), as a user runs it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {item.name: array for item, array in zip(session.get_inputs(), arrays, strict=True)}
    return session.run(None, feeds)


def layers(result) -> dict[str, dict]:
    """The report's layer rows by name."""
    return {row["name"]: row for row in result.report["layers"]}
