"""Keras models in deploy formats, run in their own runtimes, and timed.

* ``tflite``: float32, TensorFlow's converter; run by the LiteRT interpreter
  (``ai-edge-litert``), the runtime of small devices;
* ``tflite-int8``: the same with dynamic-range quantization (int8 weights);
* ``onnx``: tf2onnx 1.17 from a ``tf.function`` of the model (its ``from_keras``
  fails on Keras 3 models: ``KeyError: 'keras_tensor_…'``); run by ONNX Runtime.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

FORMATS = ("tflite", "tflite-int8", "onnx")
SUFFIXES = {"tflite": ".tflite", "tflite-int8": ".int8.tflite", "onnx": ".onnx"}
RUNTIMES = {"tflite": "LiteRT (the TFLite interpreter)",
            "tflite-int8": "LiteRT (the TFLite interpreter)", "onnx": "ONNX Runtime"}
ONNX_OPSET = 17


def to_tflite(model: Any, quantized: bool = False) -> bytes:
    """The model as a TFLite flatbuffer (dynamic-range int8 weights if ``quantized``)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantized:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def _signature(model: Any) -> list[Any]:
    import tensorflow as tf

    return [tf.TensorSpec((None, *tensor.shape[1:]), tensor.dtype,
                          name=f"input_{index}") for index, tensor in enumerate(model.inputs)]


def to_onnx(model: Any) -> bytes:
    """The model as an ONNX file: the traced ``tf.function`` frozen (variables and
    captured constants, like a Normalization layer's mean, become constants; left as
    captures, tf2onnx would make them extra graph inputs), then tf2onnx."""
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    def forward(*inputs: Any) -> Any:
        return model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)

    concrete = tf.function(forward).get_concrete_function(*_signature(model))
    frozen = convert_variables_to_constants_v2(concrete)
    proto, _ = tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(), input_names=[t.name for t in frozen.inputs],
        output_names=[t.name for t in frozen.outputs], opset=ONNX_OPSET)
    return proto.SerializeToString()


def export(model: Any, fmt: str, out_dir: str, stem: str) -> str:
    """Write ``model`` as ``fmt`` into ``out_dir``; return the file name."""
    data = to_onnx(model) if fmt == "onnx" else to_tflite(model, quantized=fmt.endswith("int8"))
    name = stem + SUFFIXES[fmt]
    with open(os.path.join(out_dir, name), "wb") as handle:
        handle.write(data)
    return name


def _as_list(batch: Any) -> list[np.ndarray]:
    return [np.asarray(b) for b in batch] if isinstance(batch, list) else [np.asarray(batch)]


def tflite_runner(content: bytes | None, path: str | None, batch: Any,
                  threads: int) -> Callable[[], list[np.ndarray]]:
    """A function running the TFLite model on ``batch`` (inputs and outputs in the
    order of the model's signature: Keras input names, sorted)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, model_path=path, num_threads=threads)
    runner = interpreter.get_signature_runner()
    names = sorted(runner.get_input_details())
    feeds = dict(zip(names, _as_list(batch), strict=True))

    def run() -> list[np.ndarray]:
        result = runner(**feeds)
        return [np.asarray(result[key]) for key in sorted(result)]

    return run


def onnx_runner(content: bytes | str, batch: Any, threads: int) -> Callable[[], list[np.ndarray]]:
    """A function running the ONNX model on ``batch`` in ONNX Runtime."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
    feeds = {item.name: array for item, array in zip(session.get_inputs(), _as_list(batch),
                                                     strict=True)}
    return lambda: [np.asarray(out) for out in session.run(None, feeds)]


def run_exported(path: str, fmt: str, batch: Any, threads: int) -> list[np.ndarray]:
    """Run an exported file in its runtime on ``batch``."""
    if fmt == "onnx":
        return onnx_runner(path, batch, threads)()
    return tflite_runner(None, path, batch, threads)()


def sized_batch(batch: Any, size: int) -> Any:
    """``batch`` (of one sample) repeated to ``size`` samples."""
    arrays = [np.repeat(a, size, axis=0) for a in _as_list(batch)]
    return arrays if isinstance(batch, list) else arrays[0]


def timer(model: Any, runtime: str, batch: Any, threads: int,
          path: str | None = None) -> Callable[[], object]:
    """One forward pass of ``model`` on ``batch`` in ``runtime`` (set up here); ``path``:
    the model already in the runtime's format."""
    if runtime == "keras":
        import tensorflow as tf

        compiled = tf.function(lambda inputs: model(inputs, training=False))
        inputs = batch if not isinstance(batch, list) else list(batch)
        return lambda: compiled(inputs)
    if runtime == "tflite":
        return tflite_runner(None if path else to_tflite(model), path, batch, threads)
    if runtime == "onnxruntime":
        return onnx_runner(path or to_onnx(model), batch, threads)
    raise ValueError(f"no runtime {runtime!r}")
