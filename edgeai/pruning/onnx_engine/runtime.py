"""ONNX Runtime for the engine: sessions with one thread, runs, probes and timers.

A job gets one core, so every session runs one intra-op and one inter-op thread and
does not spin waiting for work. A *probe* runs a model with chosen intermediate
tensors added as outputs (graph optimisations off, so that every tensor exists as
the file names it): the analysis reads every tensor's shape this way, and the MAC
count reads the shapes around each layer.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

if TYPE_CHECKING:
    import onnxruntime as ort


def _ort() -> Any:
    """ONNX Runtime, imported on first use: its import starts a thread, and a zygote
    (which imports this module) must stay single-threaded to fork safely."""
    import onnxruntime

    return onnxruntime


def session_options(threads: int = 1, optimize: bool = True) -> ort.SessionOptions:
    """Options for a session that uses ``threads`` compute threads and never spins."""
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def make_session(content: bytes | str, threads: int = 1,
                 optimize: bool = True) -> ort.InferenceSession:
    """An ONNX Runtime session (CPU) for a serialized model or a file path."""
    return _ort().InferenceSession(content, session_options(threads, optimize),
                                   providers=["CPUExecutionProvider"])


def feeds(session: ort.InferenceSession, batch: Any) -> dict[str, np.ndarray]:
    """The session's inputs from ``batch`` (one array, or a list in input order), cast
    to each input's element type."""
    arrays = list(batch) if isinstance(batch, (list, tuple)) else [batch]
    inputs = session.get_inputs()
    if len(arrays) != len(inputs):
        raise ValueError(f"the model has {len(inputs)} inputs; got {len(arrays)} arrays")
    return {item.name: np.asarray(array).astype(_numpy_type(item.type), copy=False)
            for item, array in zip(inputs, arrays, strict=True)}


def _numpy_type(ort_type: str) -> Any:
    names = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
             "tensor(double)": np.float64, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
             "tensor(bool)": np.bool_}
    return names.get(ort_type, np.float32)


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are ``names`` (types left to the runtime)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for name in names:
        value = onnx.ValueInfoProto()
        value.name = name
        probe.graph.output.append(value)
    return probe


class Prober:
    """Runs ``model`` with tensors ``names`` as its outputs (one session, many batches)."""

    def __init__(self, model: onnx.ModelProto, names: Sequence[str], threads: int = 1):
        self.names = list(dict.fromkeys(names))
        self.session = make_session(with_outputs(model, self.names).SerializeToString(),
                                    threads, optimize=False)

    def run(self, batch: Any) -> dict[str, np.ndarray]:
        """The values of the tensors on ``batch``."""
        values = self.session.run(self.names, feeds(self.session, batch))
        return dict(zip(self.names, values, strict=True))


def probe(model: onnx.ModelProto, batch: Any, names: Sequence[str], threads: int = 1,
          ) -> dict[str, np.ndarray]:
    """The values of tensors ``names`` when ``model`` runs on ``batch``."""
    return Prober(model, names, threads).run(batch)


def runner(content: bytes | str, batch: Any, threads: int = 1,
           ) -> Callable[[], list[np.ndarray]]:
    """A function that runs the model on ``batch`` (the session made here)."""
    session = make_session(content, threads)
    inputs = feeds(session, batch)
    return lambda: [np.asarray(out) for out in session.run(None, inputs)]
