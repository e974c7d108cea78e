"""Reading an uploaded ONNX file, and refusing what the engine does not take.

The file is read as bytes and parsed as a protobuf with no path at hand, so that
nothing it names is ever opened. Refused, each with what is allowed instead:

* files over :data:`MAX_MODEL_BYTES`, and bytes that are not an ONNX model;
* weights in external data files (``data_location: EXTERNAL`` names paths on the
  machine that made the file, which this service must never open);
* default-domain opsets outside :data:`MIN_OPSET`..:data:`MAX_OPSET`, operations of
  other domains (custom or runtime-specific operators) and model-local functions;
* models the ONNX checker rejects (an operation ONNX does not know at that opset);
* inputs that are not tensors, of an element type the engine cannot feed, or with a
  free size on any axis but the first (the batch), or too large to probe.

Loading also probes the model in ONNX Runtime at batch 1 (and 2 where the batch is
free) to learn every tensor's shape: the analysis follows channels through them.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from edgeai.pruning.base import PruningError
from edgeai.pruning.onnx_engine import runtime
from edgeai.pruning.onnx_engine.channels import ChannelGraph, Shapes, tensor_shape
from edgeai.pruning.onnx_engine.graph import GraphIndex, subgraphs

# Protobuf cannot hold 2 GB; the job holds the original, a pruned and a masked copy and
# their sessions, so files are bounded well below that.
MAX_MODEL_BYTES = 1 << 30
# Opset 11 brought the input forms of Pad, Resize and Slice the engine reads; 26 is the
# newest ONNX Runtime 1.31 runs.
MIN_OPSET, MAX_OPSET = 11, 26
MAX_SAMPLE_ELEMENTS = 1 << 26
ELEMENT_TYPES = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.BOOL: np.bool_,
}
SAVE_AS_ONE_FILE = ("onnx.save(onnx.load('model.onnx'), 'one.onnx', "
                    "save_as_external_data=False)")


@dataclass
class ModelInput:
    """One input of the model: its name, NumPy type, sizes without the batch, and
    the batch size (None when free)."""

    name: str
    dtype: Any
    sample_shape: tuple[int, ...]
    batch: int | None


@dataclass
class OnnxSource:
    """What the engine keeps beside the loaded model (``Loaded.extra``)."""

    index: GraphIndex
    inputs: list[ModelInput]
    shapes: Shapes
    graph: ChannelGraph | None = None

    def example(self, batch: int, seed: int) -> list[np.ndarray]:
        """A seeded random batch (``batch`` samples where the batch is free; integer
        inputs are zeros)."""
        rng = np.random.default_rng(seed)
        arrays = []
        for item in self.inputs:
            shape = (item.batch or batch, *item.sample_shape)
            if np.issubdtype(item.dtype, np.floating):
                arrays.append(rng.normal(size=shape).astype(item.dtype))
            else:
                arrays.append(np.zeros(shape, dtype=item.dtype))
        return arrays


def read_model(path: str, shown_name: str) -> onnx.ModelProto:
    """Read and check the uploaded file (see the module docstring). Raises PruningError."""
    size = os.path.getsize(path)
    if size > MAX_MODEL_BYTES:
        raise PruningError(f"{shown_name} is {size / 2**20:.0f} MB; ONNX files up to "
                           f"{MAX_MODEL_BYTES >> 20} MB are pruned here (weights kept in "
                           "external data files are refused).")
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError):
        model = None
    if model is None or not model.HasField("graph") or not model.graph.node \
            or model.ir_version <= 0:
        raise PruningError(f"{shown_name} is not an ONNX model (no graph could be read from "
                           "it); send a file saved with onnx.save or torch.onnx.export.")
    _check_external_data(model, shown_name)
    _check_operators(model, shown_name)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise PruningError(f"{shown_name} is not a valid ONNX model: {first}") from None
    return model


def _tensors(model: onnx.ModelProto):
    """Every TensorProto in the model: initializers, sparse ones and constant attributes
    of every graph and function."""
    graphs = [model.graph]
    nodes: list[onnx.NodeProto] = []
    while graphs:
        graph = graphs.pop()
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        nodes.extend(graph.node)
        for node in graph.node:
            graphs.extend(subgraphs(node))
    for function in model.functions:
        nodes.extend(function.node)
    for node in nodes:
        for item in node.attribute:
            if item.HasField("t"):
                yield item.t
            yield from item.tensors
            if item.HasField("sparse_tensor"):
                yield item.sparse_tensor.values


def _check_external_data(model: onnx.ModelProto, shown_name: str) -> None:
    for tensor in _tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise PruningError(
                f"{shown_name} keeps its weights in external data files (tensor "
                f"{tensor.name[:80]!r}); files with external data are refused, since they "
                "name paths to read. Send the model as one file: "
                f"{SAVE_AS_ONE_FILE} (models under 1 GB).")


def _check_operators(model: onnx.ModelProto, shown_name: str) -> None:
    opset = next((entry.version for entry in model.opset_import
                  if entry.domain in ("", "ai.onnx")), None)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        raise PruningError(
            f"{shown_name} uses ONNX opset {opset}; opsets {MIN_OPSET} to {MAX_OPSET} are "
            "pruned here. Export again with one of them (torch.onnx.export(..., "
            "opset_version=18)), or convert: onnx.version_converter.convert_version(model, 18).")
    if model.functions:
        names = sorted({f"{f.domain}.{f.name}" for f in model.functions})
        raise PruningError(f"{shown_name} defines its own functions ({', '.join(names[:5])}); "
                           "only models built from standard ONNX operators are pruned here. "
                           "Export with functions inlined (onnx.inliner.inline_local_functions).")
    foreign = set()
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                foreign.add(f"{node.domain}.{node.op_type}")
            graphs.extend(subgraphs(node))
    if foreign:
        raise PruningError(f"{shown_name} uses operators outside the standard ONNX domain "
                           f"({', '.join(sorted(foreign)[:8])}); only standard ONNX operators "
                           "are pruned here. Export without custom or runtime-specific "
                           "operators (an ONNX Runtime-optimised file has them: send the file "
                           "as exported).")


def model_inputs(index: GraphIndex, shown_name: str) -> list[ModelInput]:
    """The model's inputs, checked (see the module docstring). Raises PruningError."""
    if not index.inputs:
        raise PruningError(f"{shown_name} has no inputs; a model to prune takes at least one "
                           "tensor.")
    if not index.outputs:
        raise PruningError(f"{shown_name} has no outputs.")
    inputs = []
    for value in index.inputs:
        kind = value.type.WhichOneof("value") or "value of unknown type"
        if kind != "tensor_type":
            raise PruningError(f"input {value.name!r} of {shown_name} is a {kind}; only "
                               "tensor inputs are supported.")
        element = value.type.tensor_type.elem_type
        if element not in ELEMENT_TYPES:
            allowed = "float32, float16, float64, int64, int32, int8, uint8, bool"
            raise PruningError(f"input {value.name!r} of {shown_name} has element type "
                               f"{onnx.TensorProto.DataType.Name(element)}; allowed: {allowed}.")
        if not value.type.tensor_type.HasField("shape"):
            raise PruningError(f"input {value.name!r} of {shown_name} has no shape; export "
                               "with a fixed input shape (only the batch may be free).")
        dims = tensor_shape(value)
        if not dims:
            raise PruningError(f"input {value.name!r} of {shown_name} is a scalar; inputs "
                               "must have a batch axis.")
        for axis, dim in enumerate(dims[1:], start=1):
            if not isinstance(dim, int) or dim <= 0:
                raise PruningError(
                    f"input {value.name!r} of {shown_name} has a free size at axis {axis} "
                    f"({dim if dim is not None else 'unknown'}); only the first axis (the "
                    "batch) may be free. Export with a fixed input shape, e.g. "
                    "torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}).")
        sample = tuple(int(d) for d in dims[1:])
        batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None
        if math.prod(sample) * (batch or 2) > MAX_SAMPLE_ELEMENTS:
            raise PruningError(f"input {value.name!r} of {shown_name} has {math.prod(sample)} "
                               f"elements per sample; at most {MAX_SAMPLE_ELEMENTS // 2} are "
                               "supported.")
        inputs.append(ModelInput(value.name, ELEMENT_TYPES[element], sample, batch))
    return inputs


def probe_shapes(model: onnx.ModelProto, index: GraphIndex, inputs: list[ModelInput],
                 shown_name: str) -> Shapes:
    """Every tensor's shape at batch 1 and, where the batch is free, at batch 2.

    Raises PruningError when ONNX Runtime cannot load or run the model.
    """
    names = [name for node in index.nodes for name in node.output if name]
    source = OnnxSource(index, inputs, Shapes({}, None))
    free = any(item.batch is None for item in inputs)
    shapes: list[dict[str, tuple[int, ...]]] = []
    prober = None
    for batch in ((1, 2) if free else (1,)):
        example = source.example(batch, seed=0)
        try:
            prober = prober or runtime.Prober(model, names)
            values = prober.run(example)
        except Exception as error:  # noqa: BLE001 - the runtime's reason is the user's
            text = str(error).strip().splitlines()
            reason = text[-1][:400] if text else type(error).__name__
            raise PruningError(f"ONNX Runtime cannot run {shown_name} on a batch of its input "
                               f"shape: {reason}") from None
        found = {name: tuple(int(d) for d in np.shape(array)) for name, array in values.items()}
        found.update({item.name: tuple(array.shape) for item, array in zip(inputs, example,
                                                                           strict=True)})
        shapes.append(found)
        del values
    return Shapes(shapes[0], shapes[1] if free else None)


def load(path: str, shown_name: str) -> tuple[onnx.ModelProto, OnnxSource]:
    """Read, check and probe the model. Raises PruningError."""
    model = read_model(path, shown_name)
    index = GraphIndex(model)
    inputs = model_inputs(index, shown_name)
    shapes = probe_shapes(model, index, inputs, shown_name)
    return model, OnnxSource(index, inputs, shapes)
