"""``OnnxPruner``: the ONNX steps of the pipeline.

onnx and onnxruntime are imported inside the methods, so the server can read
:data:`SPEC` and call :meth:`OnnxPruner.untrusted_code` without importing them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edgeai.pruning.base import PruneJob, PruningError
from edgeai.pruning.metric import Data
from edgeai.pruning.pipeline import Analysis, Engine, Loaded, Plan
from edgeai.pruning.report import JobReport
from edgeai.pruning.spec import (
    BATCH_SIZE,
    MEASURE,
    OMMITTED,
    PERCENT,
    PLAN_FILE_HELP,
    RECOVER,
    ROUND_TO,
    TARGET,
    THREADS,
    EngineSpec,
    FileRole,
    Param,
    ParameterError,
    check_percent_or_target,
)

NO_TFLITE = ("TFLite cannot be made from ONNX here: its converter (onnx2tf) needs Python "
             "3.12, or pins TensorFlow 2.19, numpy 1.26 and onnx 1.19 on Python 3.11, older "
             "than this service's; convert the pruned .onnx with onnx2tf yourself, or send "
             "the Keras model to tf_prune with formats=tflite")


def parse_no_formats(raw: str | None) -> list[str]:
    """``formats`` on onnx_prune: the pruned model is ONNX already, and no TFLite
    converter for ONNX can be installed here; any format is refused, saying why."""
    chosen = [part.strip().lower() for part in (raw or "").split(",") if part.strip()]
    if not chosen:
        return []
    if chosen == ["onnx"]:
        raise ParameterError("formats=onnx: the pruned model of onnx_prune is ONNX already; "
                             "leave formats out.")
    raise ParameterError(f"formats={(raw or '')[:40]!r}: onnx_prune makes no other deploy formats. "
                         f"{NO_TFLITE}.")


def parse_no_finetune(raw: str | None) -> int:
    """``finetune_epochs`` on onnx_prune: 0 only (there is no ONNX training runtime here)."""
    if raw is None or raw.strip() in ("", "0"):
        return 0
    raise ParameterError(f"finetune_epochs={raw[:20]!r}: ONNX models are not fine-tuned here "
                         "(ONNX Runtime's training package is not part of this service); send "
                         "a dataset for recovery (least-squares refit, no training), or "
                         "fine-tune the pruned model in your framework.")


SPEC = EngineSpec(
    name="onnx", endpoint="onnx_prune",
    summary="Submit an ONNX model (one file, weights inside) for pruning.",
    params=(PERCENT, OMMITTED, ROUND_TO, TARGET, MEASURE, BATCH_SIZE, THREADS,
            Param(RECOVER.name, "With a dataset: refit the Conv, Gemm and MatMul layers that "
                  "lost inputs by least squares to reproduce the original's outputs, no "
                  "training (false turns it off)", RECOVER.parse, default=True,
                  schema=RECOVER.schema, example="true"),
            Param("finetune_epochs", "Not available for ONNX (no training runtime); only 0 is "
                  "accepted", parse_no_finetune, default=0,
                  schema={"type": "integer", "minimum": 0, "maximum": 0}, example="0"),
            Param("formats", "Not available for ONNX: the pruned model is ONNX already, and "
                  "TFLite cannot be made from ONNX here", parse_no_formats, example="")),
    files=(FileRole("model", (".onnx",),
                    "The ONNX model, one file (weights inside, no external data), opset "
                    "11-26, inputs of fixed size but for the batch"),
           FileRole("dataset", (".npz",),
                    "Optional data to measure the model on and recover with: an .npz with one "
                    "array per model input, named after it (x for a model with one input), "
                    "and labels y (class indices, one-hot, or float targets)", required=False),
           FileRole("plan", (".json",), PLAN_FILE_HELP, required=False)),
    check=check_percent_or_target,
    analyze_endpoint="onnx_analyze",
    downloads=("model",),
    download_help="model: the pruned .onnx (same opset, node names and inputs; runs in "
                  "ONNX Runtime)")

# Samples in the verify batch where the batch is free (a model with a fixed batch gets
# its own size).
VERIFY_BATCH = 2


class OnnxModel:
    """A ``ModelProto`` and the ONNX Runtime session made from it on first use."""

    def __init__(self, proto: Any):
        self.proto = proto
        self._session: Any = None
        self.macs: int | None = None

    def run(self, batch: Any) -> list[np.ndarray]:
        """The model's outputs on ``batch`` (an array, or a list in input order)."""
        from edgeai.pruning.onnx_engine import runtime
        from edgeai.pruning.speed import job_threads

        if self._session is None:
            self._session = runtime.make_session(self.proto.SerializeToString(), job_threads())
        session = self._session
        arrays = list(batch) if isinstance(batch, (list, tuple)) else [batch]
        fixed = session.get_inputs()[0].shape[0]
        if not isinstance(fixed, int) or fixed <= 0 or len(arrays[0]) == fixed:
            return [np.asarray(out) for out in session.run(None, runtime.feeds(session, arrays))]
        # A model with a fixed batch runs ``fixed`` samples at a time (the last chunk padded).
        count, parts = len(arrays[0]), []
        for start in range(0, count, fixed):
            chunk = [a[start:start + fixed] for a in arrays]
            short = fixed - len(chunk[0])
            chunk = [np.concatenate([c, np.repeat(c[-1:], short, axis=0)]) if short else c
                     for c in chunk]
            parts.append([np.asarray(o) for o in session.run(None, runtime.feeds(session,
                                                                                  chunk))])
        return [np.concatenate([p[k] for p in parts])[:count] for k in range(len(parts[0]))]


class OnnxPruner(Engine):
    """L1-norm filter pruning of ONNX graphs, natively on onnx + NumPy."""

    spec = SPEC
    separator = "/"
    channel_axis = 1
    timing_runtimes = ("onnxruntime",)

    def warm_up(self) -> None:
        """Import onnx and ONNX Runtime, and make one session, before a job arrives."""
        import onnx
        from onnx import TensorProto, helper

        from edgeai.pruning.onnx_engine import runtime

        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "warm",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        tiny = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                                 ir_version=8)
        onnx.checker.check_model(tiny)
        runtime.runner(tiny.SerializeToString(), np.zeros(1, np.float32))()

    def preload(self) -> bool:
        """Import onnx and this engine's modules in a zygote; not ONNX Runtime, whose
        import starts a thread (a process with threads is not safe to fork): the forked
        child imports it in :meth:`warm_up` (the engine imports it on first use)."""
        import onnx  # noqa: F401

        from edgeai.pruning import accuracy, sensitivity, speed, verify  # noqa: F401
        from edgeai.pruning.onnx_engine import (  # noqa: F401
            analysis,
            channels,
            dataset,
            graph,
            loading,
            measure,
            recovery,
            rewrite,
            runtime,
        )
        return False

    def untrusted_code(self, job: PruneJob) -> str | None:
        """An ONNX file is data: operators of a fixed set, no code; external data (paths)
        is refused when it is read. The .npz dataset is read with pickles off."""
        return None

    # -- load, analyse, rewrite ---------------------------------------------
    def load(self, job: PruneJob, workdir: Path) -> Loaded:
        from edgeai.pruning.onnx_engine import loading

        shown = job.input_names.get("model", "model.onnx")
        proto, source = loading.load(job.inputs["model"], shown)
        return Loaded(OnnxModel(proto), source)

    def layer_names(self, loaded: Loaded) -> list[str]:
        """Node names, their folders (``/layer1`` of ``/layer1/conv/Conv``) and weight
        initializer names."""
        index = loaded.extra.index
        names = list(index.names)
        for name in index.names:
            parts = name.split("/")
            names += ["/".join(parts[:end]) for end in range(1, len(parts)) if any(parts[:end])]
        names += list(index.initializers)
        return list(dict.fromkeys(names))

    def channel_layers(self, loaded: Loaded) -> list[str]:
        from edgeai.pruning.onnx_engine.measure import layer_widths

        return list(layer_widths(loaded.model.proto))

    def analyse(self, loaded: Loaded) -> Analysis:
        from edgeai.pruning.onnx_engine import analysis, channels

        source = loaded.extra
        source.graph = channels.build_graph(source.index, source.shapes)
        return analysis.analyse(source.graph)

    def _removal(self, loaded: Loaded, analysis: Analysis, plan: Plan,
                 skip: frozenset[str] = frozenset()) -> Any:
        from edgeai.pruning.onnx_engine.rewrite import Removal

        roots = {group.handle[i] for group in analysis.groups if group.key not in skip
                 for i in plan.removal.get(group.key, ())}
        return Removal(loaded.extra.graph, roots)

    def rewrite(self, loaded: Loaded, analysis: Analysis, plan: Plan,
                ) -> tuple[Any, dict[str, str]]:
        """The pruned model; a group whose removal would empty a part of a Split is left
        whole (returned with the reason, as the pipeline expects)."""
        from edgeai.pruning.onnx_engine.rewrite import emptied_splits, rewrite

        graph = loaded.extra.graph
        failed: dict[str, str] = {}
        while True:
            removal = self._removal(loaded, analysis, plan, frozenset(failed))
            emptied = emptied_splits(graph, removal, analysis.groups)
            if not emptied:
                return OnnxModel(rewrite(graph, removal)), failed
            failed.update({key: why for key, why in emptied.items() if key not in failed})

    def mask(self, loaded: Loaded, analysis: Analysis, plan: Plan) -> Any:
        from edgeai.pruning.onnx_engine.rewrite import rewrite

        removal = self._removal(loaded, analysis, plan)
        return OnnxModel(rewrite(loaded.extra.graph, removal, mask=True))

    def widths(self, model: Any) -> dict[str, int]:
        from edgeai.pruning.onnx_engine.measure import layer_widths

        return layer_widths(model.proto)

    def measure(self, model: Any, loaded: Loaded) -> tuple[int, int]:
        from edgeai.pruning.onnx_engine.measure import count_macs, count_params

        if model.macs is None:
            known = loaded.extra.shapes.one if model is loaded.model else None
            model.macs = count_macs(model.proto, loaded.extra, known)
        return count_params(model.proto), model.macs

    # -- running ---------------------------------------------------------------
    def example_batch(self, loaded: Loaded, seed: int) -> Any:
        arrays = loaded.extra.example(VERIFY_BATCH, seed)
        return arrays[0] if len(arrays) == 1 else arrays

    def run_batch(self, model: Any, batch: Any) -> list[np.ndarray]:
        return model.run(batch)

    def layer_outputs(self, model: Any, batch: Any, names: list[str]) -> dict[str, np.ndarray]:
        """Outputs of the named layers whose channels lie on axis 1 (Conv, ConvTranspose,
        Gemm, 2-D MatMul)."""
        from edgeai.pruning.onnx_engine import runtime
        from edgeai.pruning.onnx_engine.graph import GraphIndex

        index = GraphIndex(model.proto)
        position = {name: i for i, name in enumerate(index.names)}
        tensors = {name: index.nodes[position[name]].output[0] for name in names
                   if name in position}
        try:
            values = runtime.probe(model.proto, batch, list(tensors.values()))
        except Exception:  # noqa: BLE001 - this only names where a failed check starts
            return {}
        return {name: values[tensor] for name, tensor in tensors.items()
                if values[tensor].ndim >= 2 and (values[tensor].ndim == 2 or
                                                 index.nodes[position[name]].op_type != "MatMul")}

    # -- data and recovery -------------------------------------------------------
    def load_data(self, job: PruneJob, loaded: Loaded, report: JobReport) -> Data | None:
        """The optional .npz dataset (one array per input, and y), checked."""
        if "dataset" not in job.inputs:
            return None
        from edgeai.pruning.onnx_engine.dataset import load_npz

        return load_npz(job.inputs["dataset"], loaded.extra.inputs)

    def copy(self, model: Any) -> Any:
        import onnx

        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        return OnnxModel(proto)

    def refit(self, pruned: Any, loaded: Loaded, analysis: Analysis, plan: Plan, fit: Data,
              check: Data) -> dict[str, list[str]]:
        from edgeai.pruning.onnx_engine import recovery

        removal = self._removal(loaded, analysis, plan)
        result = recovery.refit_layers(pruned, loaded, removal, fit, check)
        pruned._session = None  # its weights changed
        return result

    # -- save ------------------------------------------------------------------
    def save(self, pruned: Any, loaded: Loaded, job: PruneJob, report: JobReport,
             ) -> dict[str, str | None]:
        """The pruned model as one .onnx file (checked by the ONNX checker first)."""
        import onnx

        try:
            onnx.checker.check_model(pruned.proto)
        except onnx.checker.ValidationError as error:
            raise PruningError(f"The pruned model is not a valid ONNX model ({str(error)[:300]})"
                               "; this is a bug in the pruner, nothing was returned.") from None
        name = job.output_stem + ".onnx"
        with open(os.path.join(job.output_dir, name), "wb") as handle:
            handle.write(pruned.proto.SerializeToString())
        return {"model": name}

    def load_saved(self, job: PruneJob, artifacts: dict[str, str | None], pruned: Any,
                   ) -> dict[str, Any]:
        """The saved file read back as a user reads it (``onnx.load``), run in ONNX Runtime."""
        import onnx

        path = os.path.join(job.output_dir, artifacts["model"] or "")
        return {"onnx": OnnxModel(onnx.load(path, load_external_data=False))}

    # -- timing ------------------------------------------------------------------
    def timer(self, model: Any, runtime_name: str, batch: int, loaded: Loaded, threads: int,
              path: str | None = None) -> Any:
        from edgeai.pruning.onnx_engine import runtime

        if runtime_name != "onnxruntime":
            raise PruningError(f"no runtime {runtime_name}")
        fixed = {item.batch for item in loaded.extra.inputs} - {None}
        if fixed and fixed != {batch}:
            raise PruningError(f"the model's batch is fixed at {', '.join(map(str, fixed))}")
        arrays = loaded.extra.example(batch, seed=0)
        return runtime.runner(path or model.proto.SerializeToString(),
                              arrays[0] if len(arrays) == 1 else arrays, threads)

    def summary(self, pruned: Any, loaded: Loaded, job: PruneJob) -> str:
        from edgeai.pruning.onnx_engine.measure import summary_text

        return summary_text(pruned.proto, loaded.extra)


__all__ = ["SPEC", "OnnxModel", "OnnxPruner"]
