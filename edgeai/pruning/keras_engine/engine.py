"""``KerasPruner``: inspect, load, trace, score, rewrite, save, report."""
from __future__ import annotations

import os
import time
from pathlib import Path

from edgeai.pruning.base import Engine, PruneJob, PruneResult, PruningError, empty_report


class KerasPruner(Engine):
    """L1-norm filter pruning for Keras 3 Sequential and functional models."""

    framework = "tensorflow"

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

    def untrusted_code(self, job: PruneJob) -> str | None:
        """A .zip may hold a SavedModel, whose graph is a program; .h5/.keras hold none."""
        if job.input_names.get("model", "").lower().endswith(".zip"):
            return "a zipped model (it may hold a SavedModel graph, which is code)"
        if "dataset" in job.inputs:
            return "a dataset"
        return None

    def prune(self, job: PruneJob) -> PruneResult:
        """Prune the uploaded Keras model; raises PruningError with the reason."""
        from edgeai.pruning.keras_engine import loading
        from edgeai.pruning.keras_engine.graph import build_graph, is_producer, producer_width
        from edgeai.pruning.keras_engine.report import count_macs, summary_text
        from edgeai.pruning.keras_engine.rewrite import iterate_layers, plan_pruning, rewrite_model

        report = empty_report("tensorflow", job.percent)
        timings = report["timings"]
        workdir = Path(job.output_dir).parent
        client_name = job.input_names.get("model", "model.h5")

        started = time.perf_counter()
        loaded = loading.load(job.inputs["model"], client_name, workdir)
        model = loaded.model
        timings["load"] = round(time.perf_counter() - started, 4)

        layers = list(iterate_layers(model))
        names = {layer.name for layer in layers}
        unknown = [name for name in job.omitted if name not in names]
        if unknown:
            prunable = [layer.name for layer in layers if is_producer(layer)]
            raise PruningError(f"ommitted names layers the model does not have: "
                               f"{', '.join(unknown)}. Layers with channels: "
                               f"{', '.join(prunable[:60])}" + (" ..." if len(prunable) > 60
                                                                 else "") + ".")
        started = time.perf_counter()
        try:
            graph = build_graph(model, set(job.omitted))
        except ValueError as error:
            raise PruningError(f"The model cannot be pruned: {error}.") from None
        plan = plan_pruning(graph, job.percent)
        timings["analyse"] = round(time.perf_counter() - started, 4)

        paths = {id(record.layer): record.path for record in graph.records.values()}
        producers = [layer for layer in layers if is_producer(layer)]
        if job.percent > 0 and not plan.removed:
            reasons = sorted({f"{name}: {why}" for name, (status, why) in
                              plan.layer_status.items() if why})
            raise PruningError("Nothing prunable in this model at this percent: "
                               + ("; ".join(reasons[:12]) or "no convolution or dense layer"))
        started = time.perf_counter()
        pruned = rewrite_model(model, graph, plan)
        timings["rewrite"] = round(time.perf_counter() - started, 4)

        new_layers = {layer.name: layer for layer in iterate_layers(pruned)}
        for layer in producers:
            path = paths.get(id(layer), layer.name)
            status, why = plan.layer_status.get(path, ("unchanged", None))
            after = new_layers.get(layer.name)
            if status == "unchanged" and after is not None and \
                    producer_width(after) != producer_width(layer):
                status, why = "pruned", "follows its input channels (depthwise)"
            report["layers"].append({
                "name": path, "type": type(layer).__name__,
                "channels_before": producer_width(layer),
                "channels_after": producer_width(after) if after is not None else None,
                "status": status, "reason": why,
            })
        report["params_before"] = int(model.count_params())
        report["params_after"] = int(pruned.count_params())
        report["macs_before"] = count_macs(model)
        report["macs_after"] = count_macs(pruned)
        for old, new in zip(model.outputs, pruned.outputs, strict=True):
            if tuple(old.shape) != tuple(new.shape):
                raise PruningError("Pruning changed an output shape; nothing was returned.")

        started = time.perf_counter()
        artifact = loading.save(pruned, loaded, job.output_dir, job.output_stem, workdir)
        timings["save"] = round(time.perf_counter() - started, 4)
        report["file_size_before"] = os.path.getsize(job.inputs["model"])
        report["file_size_after"] = os.path.getsize(os.path.join(job.output_dir, artifact))
        report["artifacts"] = {"model": artifact}
        return PruneResult(artifact=artifact, message=summary_text(pruned), report=report)
