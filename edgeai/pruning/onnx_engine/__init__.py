"""The ONNX engine: structured L1-norm filter pruning of ONNX graphs, natively.

The channel dependencies are read from the graph itself (:mod:`.channels`), the
groups scored and planned by the shared pipeline (:mod:`.analysis`), and the model
rewritten in place of its own constants and sizes (:mod:`.rewrite`), so that the
user's node names, opset and structure come back as they went in. Everything runs
in ONNX Runtime with one thread (:mod:`.runtime`). Importing this package imports
neither onnx nor onnxruntime; the engine's steps do.
"""
from edgeai.pruning.onnx_engine.engine import SPEC, OnnxPruner

__all__ = ["SPEC", "OnnxPruner"]
