"""``KerasPruner``: the Keras steps of the pipeline.

TensorFlow and Keras are imported inside the methods, so the server can read
:data:`SPEC` and call :meth:`KerasPruner.untrusted_code` without importing them.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeai.pruning.base import PruneJob, PruningError
from edgeai.pruning.engine import Written
from edgeai.pruning.metric import Data
from edgeai.pruning.pipeline import Analysis, Engine, Loaded, Plan
from edgeai.pruning.report import JobReport
from edgeai.pruning.spec import (
    COMMON_PARAMS,
    PLAN_FILE_HELP,
    EngineSpec,
    FileRole,
    check_percent_or_target,
    formats_param,
    runtime_param,
)
from edgeai.pruning.structure import LayerCost

EXPORT_FORMATS = ("tflite", "tflite-int8", "onnx")
TIMING_RUNTIMES = ("keras", "tflite", "onnxruntime")
RUNTIME_FORMATS = {"tflite": "tflite", "onnxruntime": "onnx"}

SPEC = EngineSpec(
    name="tensorflow", endpoint="tf_prune",
    summary="Submit a Keras model (h5, keras, or a zipped SavedModel) for pruning.",
    params=(*COMMON_PARAMS, formats_param(EXPORT_FORMATS),
            runtime_param(TIMING_RUNTIMES, RUNTIME_FORMATS)),
    files=(FileRole("model", (".h5", ".hdf5", ".keras", ".zip"),
                    "The Keras model: .h5, .keras, or .zip of a SavedModel directory or of a "
                    ".keras file"),
           FileRole("dataset", (".npz",),
                    "Optional data to measure the model on, recover and fine-tune with: an "
                    ".npz with arrays x (samples) and y (labels: class indices, one-hot, or "
                    "float targets), saved with numpy.savez", required=False),
           FileRole("plan", (".json",), PLAN_FILE_HELP, required=False)),
    check=check_percent_or_target,
    analyze_endpoint="tf_analyze",
    downloads=("model", *EXPORT_FORMATS),
    download_help="model (the format uploaded), or a deploy format the job was asked for "
                  "with formats=: tflite (float32), tflite-int8 (int8 weights), onnx")

# Unknown sizes in a model's input shape get this many elements in the check batch.
FREE_DIMENSION = 32


class KerasPruner(Engine):
    """L1-norm filter pruning of Keras 3 functional and Sequential models."""

    spec = SPEC
    separator = "/"
    channel_axis = -1
    export_formats = EXPORT_FORMATS
    timing_runtimes = TIMING_RUNTIMES
    compiles = True

    def __init__(self) -> None:
        self._compiled: set[int] = set()
        self._forwards: dict[int, tuple[Any, Any]] = {}

    def warm_up(self) -> None:
        """Import TensorFlow and Keras before a job arrives (the slow part of a job)."""
        import keras
        import tensorflow as tf

        threads = max(1, int(os.environ.get("TF_NUM_INTRAOP_THREADS", "1")))
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already initialised in this process
            pass
        # Run the save/load/clone code paths once on a tiny model: their first call
        # in a process costs about a second that a job would otherwise pay.
        import tempfile

        from edgeai.pruning.keras_engine.loading import cache_saving_skipsets

        cache_saving_skipsets()

        inputs = keras.Input((8, 8, 3))
        outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(
            keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs))))
        tiny = keras.Model(inputs, outputs)
        tiny.compile(optimizer="adam", loss="categorical_crossentropy")
        try:
            with tempfile.TemporaryDirectory() as folder:
                for suffix in (".keras", ".h5"):
                    path = os.path.join(folder, "warm" + suffix)
                    tiny.save(path)
                    keras.models.clone_model(keras.saving.load_model(path))
        except Exception:  # noqa: BLE001 - warming up is an optimisation only
            pass

    def preload(self) -> bool:
        """Import TensorFlow, Keras and what a job reads and writes with, running
        nothing: TensorFlow starts its thread pools on the first operation, so the
        model-level warm-up (:meth:`warm_up`, ~0.2 s) is left to the forked child."""
        import h5py  # noqa: F401
        import keras
        import keras.src.legacy.saving.legacy_h5_format
        import keras.src.saving.saving_lib
        import tensorflow  # noqa: F401

        from edgeai.pruning import accuracy, sensitivity, speed, verify  # noqa: F401
        from edgeai.pruning.keras_engine import (  # noqa: F401
            analysis,
            dataset,
            graph,
            inspection,
            loading,
            recovery,
            report,
            rewrite,
        )
        del keras
        return False

    def untrusted_code(self, job: PruneJob) -> str | None:
        """A .zip may hold a SavedModel, whose graph is a program; .h5/.keras hold none,
        nor does the .npz dataset (read with pickles off)."""
        if job.input_names.get("model", "").lower().endswith(".zip"):
            return "a zipped model (it may hold a SavedModel graph, which is code)"
        return None

    # -- load, analyse, rewrite ---------------------------------------------
    def load(self, job: PruneJob, workdir: Path) -> Loaded:
        from edgeai.pruning.keras_engine import loading

        file = loading.load(job.inputs["model"], job.input_names.get("model", "model.h5"),
                            workdir)
        return Loaded(file.model, file)

    def layer_names(self, loaded: Loaded) -> list[str]:
        from edgeai.pruning.keras_engine.graph import iterate_paths

        return [path for path, _ in iterate_paths(loaded.model)]

    def channel_layers(self, loaded: Loaded) -> list[str]:
        from edgeai.pruning.keras_engine.graph import is_producer, iterate_paths

        return [path for path, layer in iterate_paths(loaded.model) if is_producer(layer)]

    def load_data(self, job: PruneJob, loaded: Loaded, report: JobReport) -> Data | None:
        """The optional .npz dataset (x and y, pickles off), checked against the model."""
        if "dataset" not in job.inputs:
            return None
        from edgeai.pruning.keras_engine.dataset import load_npz

        return load_npz(job.inputs["dataset"], loaded.model)

    def copy(self, model: Any) -> Any:
        import keras

        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        return clone

    def refit(self, pruned: Any, loaded: Loaded, analysis: Analysis, plan: Plan, fit: Data,
              check: Data) -> dict[str, list[str]]:
        from edgeai.pruning.keras_engine import recovery

        return recovery.refit_layers(pruned, loaded.model,
                                     self._removal(loaded, analysis, plan), fit, check)

    def reestimate(self, model: Any, data: Data) -> int:
        from edgeai.pruning.keras_engine import recovery

        return recovery.reestimate_batchnorm(model, data)

    def train_epoch(self, model: Any, data: Data, kind: str | None, epoch: int) -> None:
        from edgeai.pruning.keras_engine import recovery

        recovery.train_epoch(model, data, kind or "", epoch, self._compiled)

    def analyse(self, loaded: Loaded) -> Analysis:
        from edgeai.pruning.keras_engine.analysis import analyse

        try:
            analysis, graph = analyse(loaded.model)
        except ValueError as error:
            raise PruningError(f"The model cannot be pruned: {error}.") from None
        loaded.extra.graph = graph
        return analysis

    def _removal(self, loaded: Loaded, analysis: Analysis, plan: Plan) -> Any:
        from edgeai.pruning.keras_engine.rewrite import Removal

        roots = {group.handle[i] for group in analysis.groups
                 for i in plan.removal.get(group.key, ())}
        return Removal(loaded.extra.graph, roots)

    def rewrite(self, loaded: Loaded, analysis: Analysis, plan: Plan,
                ) -> tuple[Any, dict[str, str]]:
        from edgeai.pruning.keras_engine.rewrite import rewrite_model

        return rewrite_model(loaded.model, self._removal(loaded, analysis, plan)), {}

    def rewrite_saved(self, loaded: Loaded, analysis: Analysis, plan: Plan, job: PruneJob,
                      ) -> tuple[Written | None, str | None]:
        """Keras 3 ``.keras`` models (those :func:`.direct.eligible` takes): the file
        written from the original's config and the sliced weights, then
        ``keras.saving.load_model`` of it. A failure leaves nothing behind and says why;
        the clone rewrite then runs."""
        from edgeai.pruning.keras_engine import direct, loading

        removal = self._removal(loaded, analysis, plan)
        if direct.eligible(loaded.model, loaded.extra.kind, removal) is not None:
            return None, None
        name = job.output_stem + ".keras"
        path = Path(job.output_dir) / name
        try:
            direct.write(loaded.model, removal, path, loaded.extra.compile_config)
            started = time.perf_counter()
            model = loading.load_back(path, Path(job.output_dir).parent)
        except Exception as error:  # noqa: BLE001 - the clone rewrite is the fallback
            path.unlink(missing_ok=True)
            return None, f"writing it directly failed ({type(error).__name__}: " \
                         f"{str(error).splitlines()[0][:200] if str(error) else ''})"
        return Written(model, {"model": name}, time.perf_counter() - started), None

    def mask(self, loaded: Loaded, analysis: Analysis, plan: Plan) -> Any:
        from edgeai.pruning.keras_engine.rewrite import mask_model

        return mask_model(loaded.model, self._removal(loaded, analysis, plan))

    def widths(self, model: Any) -> dict[str, int]:
        from edgeai.pruning.keras_engine.graph import is_producer, iterate_paths, producer_width

        return {path: producer_width(layer) for path, layer in iterate_paths(model)
                if is_producer(layer)}

    def measure(self, model: Any, loaded: Loaded) -> tuple[int, int]:
        from edgeai.pruning.keras_engine.report import count_macs

        return int(model.count_params()), count_macs(model)

    def cost_terms(self, loaded: Loaded, analysis: Analysis) -> list[LayerCost]:
        from edgeai.pruning.keras_engine.report import cost_terms

        return cost_terms(loaded.model, loaded.extra.graph, analysis)

    # -- running ---------------------------------------------------------------
    def example_batch(self, loaded: Loaded, seed: int) -> Any:
        rng = np.random.default_rng(seed)
        batch = []
        for tensor in loaded.model.inputs:
            shape = [1] + [d if d is not None else FREE_DIMENSION for d in tensor.shape[1:]]
            dtype = str(getattr(tensor, "dtype", "float32"))
            if "int" in dtype:
                batch.append(np.zeros(shape, dtype=dtype))
            else:
                batch.append(rng.normal(size=shape).astype("float32"))
        return batch[0] if len(batch) == 1 else batch

    def run_batch(self, model: Any, batch: Any) -> list[np.ndarray]:
        return _arrays(model(batch, training=False))

    def forward(self, model: Any) -> Any:
        """``model`` as one ``tf.function`` (batch dimension free), traced on first use and
        kept until :meth:`release`: tracing a ResNet50 costs about a second, which the
        verify step and the timing then pay once."""
        if id(model) not in self._forwards:
            import tensorflow as tf

            signature = [tf.TensorSpec((None, *tensor.shape[1:]), tensor.dtype)
                         for tensor in model.inputs]

            def call(*inputs: Any) -> Any:
                return model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)

            compiled = tf.function(call, input_signature=signature)

            def run(batch: Any) -> list[np.ndarray]:
                return _arrays(compiled(*(batch if isinstance(batch, list) else [batch])))

            self._forwards[id(model)] = (model, run)
        return self._forwards[id(model)][1]

    def release(self, model: Any) -> None:
        """Drop the compiled function of ``model`` (a search candidate left behind)."""
        self._forwards.pop(id(model), None)

    def layer_outputs(self, model: Any, batch: Any, names: list[str]) -> dict[str, np.ndarray]:
        """Outputs of the named top-level layers (nested models' layers are skipped)."""
        import keras

        try:
            wanted = [name for name in names if "/" not in name]
            probe = keras.Model(model.inputs, [model.get_layer(name).output for name in wanted])
            return dict(zip(wanted, _arrays(probe(batch, training=False)), strict=True))
        except Exception:  # noqa: BLE001 - a layer called twice has no single output
            return {}

    # -- save ------------------------------------------------------------------
    def save(self, pruned: Any, loaded: Loaded, job: PruneJob, report: JobReport,
             ) -> dict[str, str | None]:
        from edgeai.pruning.keras_engine import loading

        workdir = Path(job.output_dir).parent
        return {"model": loading.save(pruned, loaded.extra, job.output_dir, job.output_stem,
                                      workdir)}

    def load_saved(self, job: PruneJob, artifacts: dict[str, str | None], pruned: Any,
                   ) -> dict[str, Any]:
        from edgeai.pruning.keras_engine import loading

        name = artifacts["model"]
        path = Path(job.output_dir) / name
        return {Path(name).suffix.lstrip("."): loading.load_back(path,
                                                                 Path(job.output_dir).parent)}

    # -- deploy formats and timing ---------------------------------------------
    def export(self, pruned: Any, loaded: Loaded, job: PruneJob, fmt: str) -> str:
        from edgeai.pruning.keras_engine import deploy

        return deploy.export(pruned, fmt, job.output_dir, job.output_stem)

    def run_exported(self, path: str, fmt: str, batch: Any) -> list[np.ndarray]:
        from edgeai.pruning.keras_engine import deploy
        from edgeai.pruning.speed import job_threads

        return deploy.run_exported(path, fmt, batch, job_threads())

    def runtime_of(self, fmt: str) -> str:
        from edgeai.pruning.keras_engine.deploy import RUNTIMES

        return RUNTIMES[fmt]

    def timer(self, model: Any, runtime: str, batch: int, loaded: Loaded, threads: int,
              path: str | None = None) -> Any:
        """One forward pass of ``model`` in ``runtime``; the keras runtime runs the kept
        compiled function (:meth:`forward`) with TensorFlow's own thread pool, which is
        fixed when TensorFlow starts: other ``threads`` are refused for it."""
        from edgeai.pruning.keras_engine import deploy

        example = deploy.sized_batch(self.example_batch(loaded, seed=0), batch)
        if runtime == "keras":
            import tensorflow as tf

            pool = tf.config.threading.get_intra_op_parallelism_threads()
            if pool and threads != pool:
                raise PruningError(
                    f"the keras runtime runs with the job's {pool} thread(s) (TensorFlow fixes "
                    f"its thread pool when it starts), not {threads}; time in tflite or "
                    "onnxruntime for another thread count")
            run = self.forward(model)
            return lambda: run(example)
        return deploy.timer(model, runtime, example, threads, path)

    def runtime_formats(self) -> dict[str, str]:
        return dict(RUNTIME_FORMATS)

    def summary(self, pruned: Any, loaded: Loaded, job: PruneJob) -> str:
        from edgeai.pruning.keras_engine.report import summary_text

        return summary_text(pruned)


def _arrays(output: Any) -> list[np.ndarray]:
    """A model's outputs (a tensor, a list or a dict of them) as NumPy arrays."""
    if isinstance(output, dict):
        return [a for key in sorted(output) for a in _arrays(output[key])]
    if isinstance(output, (list, tuple)):
        return [a for item in output for a in _arrays(item)]
    return [np.asarray(output)]
