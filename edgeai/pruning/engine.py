"""The engine interface: a framework's own steps, which :mod:`.pipeline` runs."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeai.pruning.base import PruneJob, PruneResult, PruningError
from edgeai.pruning.report import JobReport
from edgeai.pruning.spec import EngineSpec
from edgeai.pruning.structure import Analysis, LayerCost, Loaded, Plan


@dataclass
class Written:
    """A pruned model loaded from the file it was written to (:meth:`Engine.rewrite_saved`)."""

    model: Any
    artifacts: dict[str, str | None]
    load_seconds: float


class Engine(ABC):
    """A framework's own steps; :func:`run` does the rest.

    ``spec`` declares the engine's inputs and parameters (read by the API and the
    queue without importing the framework). ``separator`` joins a container's name
    to its layers' names (``block/conv`` in Keras, ``layer1.0`` in PyTorch).
    """

    spec: ClassVar[EngineSpec]
    separator: ClassVar[str] = "."

    def warm_up(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Finish warming the engine up in a job's child, before the job is sent (what
        :meth:`preload` could not do in the zygote without starting a thread)."""

    def preload(self) -> bool:
        """Import the framework in a zygote (:mod:`edgeai.sandbox.zygote`) without
        starting a thread: forking a process with threads is unsafe. Returns whether
        that warmed the engine fully (then a forked child skips :meth:`warm_up`'s work)."""
        return False

    def untrusted_code(self, job: PruneJob) -> str | None:
        """What in ``job``'s inputs would run as code once loaded (a class file, a
        SavedModel graph, a pickle), in words for the user; None if nothing would.

        Called in the server (it must not import the framework): such a job runs
        only in a child with every sandbox wall in force.
        """
        return None

    def prune(self, job: PruneJob) -> PruneResult:
        """Run the whole pipeline on ``job``. Raises :class:`PruningError`."""
        from edgeai.pruning.pipeline import run

        return run(self, job)

    # -- the framework's steps --------------------------------------------
    @abstractmethod
    def load(self, job: PruneJob, workdir: Path) -> Loaded:
        """Inspect and load the uploaded model. Raises PruningError/UnsafeInputError."""

    @abstractmethod
    def layer_names(self, loaded: Loaded) -> list[str]:
        """Every layer name a user may put in ``ommitted``."""

    @abstractmethod
    def channel_layers(self, loaded: Loaded) -> list[str]:
        """The names of the layers with output channels (what error messages list)."""

    @abstractmethod
    def analyse(self, loaded: Loaded) -> Analysis:
        """The model's layers with channels and its channel groups."""

    @abstractmethod
    def rewrite(self, loaded: Loaded, analysis: Analysis, plan: Plan,
                ) -> tuple[Any, dict[str, str]]:
        """A new model without the planned channels (``loaded`` stays as it was), and
        the groups that could not be rewired, with why."""

    @abstractmethod
    def widths(self, model: Any) -> dict[str, int]:
        """Output channels of each layer of ``model``, by name."""

    @abstractmethod
    def measure(self, model: Any, loaded: Loaded) -> tuple[int, int]:
        """(parameters, multiply-accumulates per sample) of ``model`` (the original or
        a pruned one)."""

    @abstractmethod
    def example_batch(self, loaded: Loaded, seed: int) -> Any:
        """A seeded random batch of the model's input shape."""

    @abstractmethod
    def run_batch(self, model: Any, batch: Any) -> list[np.ndarray]:
        """The model's outputs on ``batch``, flattened to a list of arrays."""

    @abstractmethod
    def mask(self, loaded: Loaded, analysis: Analysis, plan: Plan) -> Any:
        """The original model with the planned channels masked: their producers'
        filters and their consumers' input weights zeroed. May change ``loaded``."""

    def layer_outputs(self, model: Any, batch: Any, names: list[str],
                      ) -> dict[str, np.ndarray]:
        """Outputs of the named layers on ``batch`` (channels last axis for Keras,
        axis 1 for PyTorch, see :attr:`channel_axis`); used to name the layer where
        a failed exactness check starts. Engines that cannot: ``{}``."""
        return {}

    channel_axis: ClassVar[int] = -1

    @abstractmethod
    def save(self, pruned: Any, loaded: Loaded, job: PruneJob, report: JobReport,
             ) -> dict[str, str | None]:
        """Write the artifacts into ``job.output_dir``; return format -> file name
        (``model`` is the main one; None where a format could not be made)."""

    @abstractmethod
    def load_saved(self, job: PruneJob, artifacts: dict[str, str | None], pruned: Any,
                   ) -> dict[str, Any]:
        """Each saved artifact loaded back as a user loads it: format -> model."""

    @abstractmethod
    def summary(self, pruned: Any, loaded: Loaded, job: PruneJob) -> str:
        """The plain-text summary the status message shows."""

    def load_data(self, job: PruneJob, loaded: Loaded, report: JobReport) -> Any:
        """The job's evaluation data as :class:`edgeai.pruning.metric.Data` (NumPy
        samples and labels), if it brought any (None otherwise). Raises PruningError
        for a dataset that cannot be used at all (unreadable, wrong sample shape)."""
        return None

    def rewrite_saved(self, loaded: Loaded, analysis: Analysis, plan: Plan, job: PruneJob,
                      ) -> tuple[Written | None, str | None]:
        """The pruned model written straight to its file in ``job.output_dir`` and loaded
        from it as a user loads it — so that the model every later step checks is the
        shipped file's — or None where the engine does not (then :meth:`rewrite` and
        :meth:`save` do); and, where it tried and failed, why."""
        return None, None

    def copy(self, model: Any) -> Any:
        """An independent copy of ``model`` (same architecture and weights)."""
        raise PruningError("this engine cannot copy a model")

    def refit(self, pruned: Any, loaded: Loaded, analysis: Analysis, plan: Plan, fit: Any,
              check: Any) -> dict[str, list[str]]:
        """Least-squares refit, in place, of the layers of ``pruned`` that lost input
        channels, from ``fit`` data; a layer keeps its refit only where it lowers its
        error against the original's on ``check``. ``loaded`` is the unmasked original.
        Returns ``{"refit": [...], "refit_rejected": [...]}``."""
        return {"refit": [], "refit_rejected": []}

    def refit_measured(self, pruned: Any, loaded: Loaded, analysis: Analysis, plan: Plan,
                       fit: Any, check: Any) -> dict[str, list[str]] | None:
        """:meth:`refit` in the other order: BatchNorm statistics measured on ``fit``
        first (of ``pruned``, and of a copy of the original for the targets), and again
        after each layer's refit; None from an engine that does not offer it."""
        return None

    def reestimate(self, model: Any, data: Any) -> int:
        """Recompute, in place, the BatchNorm statistics of ``model`` on ``data``;
        return how many layers."""
        return 0

    def train_epoch(self, model: Any, data: Any, kind: str | None, epoch: int) -> None:
        """One epoch of fine-tuning ``model`` on ``data`` for the metric ``kind``."""
        raise PruningError("this engine cannot fine-tune")

    # -- deploy formats and timing (optional) ---------------------------------
    export_formats: ClassVar[tuple[str, ...]] = ()

    def export(self, pruned: Any, loaded: Loaded, job: PruneJob, fmt: str) -> str:
        """Write ``pruned`` in deploy format ``fmt`` into ``job.output_dir``; return the
        file name. Raises anything on failure (the pipeline reports it for the format)."""
        raise PruningError(f"{fmt} is not a format of this engine")

    def run_exported(self, path: str, fmt: str, batch: Any) -> list[np.ndarray]:
        """Run an exported file in its own runtime on ``batch``."""
        raise PruningError(f"{fmt} is not a format of this engine")

    def runtime_of(self, fmt: str) -> str:
        """The runtime an export format runs in (for the report)."""
        return fmt

    # The runtimes this engine can time a model in, its framework's own first.
    timing_runtimes: ClassVar[tuple[str, ...]] = ()

    def runtimes(self, job: PruneJob) -> list[str]:
        """The runtimes to time the models in: the one asked for (``runtime=``), else
        those of the deploy formats asked for (where the model will run), else the
        framework's own."""
        if job.options.get("runtime"):
            return [job.options["runtime"]]
        formats = job.options.get("formats") or ()
        deploy = [runtime for runtime, fmt in self.runtime_formats().items()
                  if any(name.split("-")[0] == fmt for name in formats)]
        return deploy or list(self.timing_runtimes[:1])

    def timer(self, model: Any, runtime: str, batch: int, loaded: Loaded, threads: int,
              path: str | None = None) -> Any:
        """A function that runs one forward pass of ``model`` in ``runtime`` at ``batch``
        samples (conversion and set-up happen here, not in the timed function). ``path``
        is the model already exported in the runtime's format, used instead of converting."""
        raise PruningError(f"no runtime {runtime}")

    def runtime_formats(self) -> dict[str, str]:
        """For each timing runtime with a file format, that format (``{"tflite": "tflite"}``)."""
        return {}

    # Whether :meth:`forward` compiles (the framework's runtime is not eager).
    compiles: ClassVar[bool] = False

    def forward(self, model: Any) -> Any:
        """A compiled function of ``model``: batch -> outputs as :meth:`run_batch` gives
        them, set up once per model and kept (for the few models a job keeps: the
        verify step and the timing then share one compilation); None where the
        framework runs eagerly anyway."""
        return None

    def release(self, model: Any) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Forget what :meth:`forward` kept for ``model``."""

    def cost_terms(self, loaded: Loaded, analysis: Analysis) -> list[LayerCost] | None:
        """Every layer's share of a forward pass (MACs, output elements) and which
        channel groups its input and output channels come from, for the latency
        estimate (:mod:`.latency`); None: the estimate then counts the MACs of real
        rewrites (slower, the same for every engine)."""
        return None

    def primary_input(self, job: PruneJob) -> str:
        """The uploaded file whose size the report gives as the size before."""
        return job.inputs[self.spec.files[0].name]
