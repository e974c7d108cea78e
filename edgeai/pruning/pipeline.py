"""One pruning pipeline for every job, whatever the framework.

    load -> check the omitted names -> measure -> analyse (channel groups) -> plan
    -> rewrite -> verify (exactness) -> save -> verify (round trip) -> report

Each step is one function here. An engine (:class:`Engine`) supplies only its
framework's own steps — load, analyse, rewrite, mask, run a batch, save, load
back — and everything that is the same for every framework is written once:
which names may be omitted, which channels go (the L1 rule within groups, equal
positions per block, outputs and omitted layers protected), when nothing is
prunable, and the proof that the pruned model is right:

* *exactness*: the original with the removed channels masked (their consumers'
  input weights zeroed) must give the pruned model's outputs on a seeded random
  batch; otherwise the job fails and names the first layer that differs;
* *round trip*: every saved file, loaded back the way a user loads it, must give
  the pruned model's outputs.
"""
from __future__ import annotations

import difflib
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgeai.pruning.base import PruneJob, PruneResult, PruningError, channels_to_remove
from edgeai.pruning.report import Check, JobReport, LayerChange, LayerStatus
from edgeai.pruning.spec import EngineSpec

# Outputs may differ by float rounding (another summation order), never by more.
TOLERANCE = 1e-4
SEED = 20171


@dataclass
class Loaded:
    """A model as an engine loaded it: the framework's model and the engine's own data."""

    model: Any
    extra: Any = None


@dataclass
class LayerInfo:
    """A layer with output channels, as the engine found it."""

    name: str
    type: str
    channels: int
    # A status the engine decided on its own (a structure it leaves whole).
    fixed: tuple[LayerStatus, str] | None = None


@dataclass
class ChannelGroup:
    """Channels that must go together, and everything the plan needs to know of them.

    ``scores`` has one value per channel: the summed L1 norm of the filters that
    produce it (Li et al.). ``blocks`` > 1 means a grouped layer splits the channels
    into that many equal contiguous blocks, each of which must lose the same
    positions. ``blocked`` is the engine's reason to keep the group whole (it reaches
    a model output, or a layer the engine cannot rewrite). ``inexact`` says why
    masking cannot reproduce the pruned model for this group (its channels pass
    through a layer whose statistics depend on how many there are).
    """

    key: str
    members: list[str]
    carriers: list[str]
    scores: np.ndarray
    blocks: int = 1
    blocked: tuple[LayerStatus, str] | None = None
    inexact: str | None = None
    handle: Any = None


@dataclass
class Analysis:
    """The engine's view of the model: its layers with channels, and the groups."""

    layers: list[LayerInfo]
    groups: list[ChannelGroup]


@dataclass
class Plan:
    """Which channels of which group go, and each layer's status and reason."""

    removal: dict[str, list[int]] = field(default_factory=dict)
    status: dict[str, tuple[LayerStatus, str | None]] = field(default_factory=dict)

    def only(self, keys: set[str]) -> Plan:
        """The same plan restricted to the groups in ``keys``."""
        return Plan({k: v for k, v in self.removal.items() if k in keys}, dict(self.status))


class Engine(ABC):
    """A framework's own steps; :func:`run` does the rest.

    ``spec`` declares the engine's inputs and parameters (read by the API and the
    queue without importing the framework). ``separator`` joins a container's name
    to its layers' names (``block/conv`` in Keras, ``layer1.0`` in PyTorch).
    """

    spec: ClassVar[EngineSpec]
    separator: ClassVar[str] = "."

    def warm_up(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Import the framework ahead of a job (called in a spare child process)."""

    def untrusted_code(self, job: PruneJob) -> str | None:
        """What in ``job``'s inputs would run as code once loaded (a class file, a
        SavedModel graph, a pickle), in words for the user; None if nothing would.

        Called in the server (it must not import the framework): such a job runs
        only in a child with every sandbox wall in force.
        """
        return None

    def prune(self, job: PruneJob) -> PruneResult:
        """Run the whole pipeline on ``job``. Raises :class:`PruningError`."""
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
        """The job's evaluation data, if it brought any (None otherwise)."""
        return None

    def evaluate(self, model: Any, data: Any) -> float | None:
        """The metric on ``data`` (None where it cannot be measured)."""
        return None

    def primary_input(self, job: PruneJob) -> str:
        """The uploaded file whose size the report gives as the size before."""
        return job.inputs[self.spec.files[0].name]


# -- the template ---------------------------------------------------------------
@contextmanager
def step(report: JobReport, name: str) -> Iterator[None]:
    """Time one step into ``report.timings``."""
    started = time.perf_counter()
    yield
    report.timings[name] = round(report.timings.get(name, 0.0) + time.perf_counter() - started, 4)


def run(engine: Engine, job: PruneJob) -> PruneResult:
    """Prune ``job`` with ``engine``; see the module docstring. Raises PruningError."""
    report = JobReport(framework=engine.spec.name, percent=job.percent)
    workdir = Path(job.output_dir).parent
    with step(report, "load"):
        loaded = engine.load(job, workdir)
        check_omitted(job.omitted, engine.layer_names(loaded), engine.channel_layers(loaded),
                      engine.separator)
        data = engine.load_data(job, loaded, report)
        if data is not None:
            report.accuracy_before = engine.evaluate(loaded.model, data)
        report.params_before, report.macs_before = engine.measure(loaded.model, loaded)
    report.file_size_before = os.path.getsize(engine.primary_input(job))
    with step(report, "analyse"):
        analysis = engine.analyse(loaded)
        plan = make_plan(analysis, job.percent, job.omitted, engine.separator)
        ensure_prunable(analysis, plan, job.percent)
    with step(report, "rewrite"):
        pruned, failed = engine.rewrite(loaded, analysis, plan)
        drop_failed(plan, analysis, failed, report)
        ensure_prunable(analysis, plan, job.percent)
    report.layers = layer_changes(analysis, plan, engine.widths(pruned))
    batch = engine.example_batch(loaded, SEED)
    expected = _outputs(engine, pruned, batch, "The pruned model")
    report.verification.exactness = verify_exactness(engine, loaded, analysis, plan, pruned,
                                                     batch, expected)
    report.params_after, report.macs_after = engine.measure(pruned, loaded)
    if data is not None:
        report.accuracy_after = engine.evaluate(pruned, data)
    with step(report, "save"):
        report.artifacts = engine.save(pruned, loaded, job, report)
    main = report.artifacts.get("model")
    if not main:
        raise PruningError("The pruned model could not be saved; nothing was returned.")
    report.file_size_after = os.path.getsize(os.path.join(job.output_dir, main))
    report.verification.round_trip = verify_round_trip(engine, job, report.artifacts, pruned,
                                                       batch, expected)
    return PruneResult(artifact=main, message=engine.summary(pruned, loaded, job),
                       report=report.to_dict())


# -- common steps -----------------------------------------------------------------
def check_omitted(omitted: tuple[str, ...], names: list[str], listed: list[str],
                  separator: str) -> None:
    """Every name in ``ommitted`` must be a layer (or container) of the model.

    Raises PruningError naming the unknown ones, each with its closest match (a
    nested layer's full name when the last part matches), and listing ``listed``.
    """
    known = set(names)
    unknown = [name for name in omitted if name not in known]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = [n for n in names if n.endswith(separator + name)] or \
            difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
    raise PruningError(f"ommitted names layers the model does not have: {', '.join(hints)}. "
                       f"Layers with channels: {_listing(listed)}.")


def _listing(names: list[str], limit: int = 60) -> str:
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


def _omitted_carrier(carriers: list[str], omitted: tuple[str, ...], separator: str,
                     ) -> str | None:
    """The first carrier named in ``omitted``, itself or through a container."""
    for carrier in carriers:
        for name in omitted:
            if carrier == name or carrier.startswith(name + separator):
                return carrier
    return None


def make_plan(analysis: Analysis, percent: float, omitted: tuple[str, ...],
              separator: str) -> Plan:
    """Choose the channels to remove in every group: the lowest summed filter L1 of
    ``channels_to_remove(n, percent)``, the same positions in every block, none in a
    group that reaches an output, an omitted layer or a layer the engine keeps."""
    plan = Plan()
    for layer in analysis.layers:
        plan.status[layer.name] = layer.fixed or (LayerStatus.UNCHANGED, None)
    for group in analysis.groups:
        verdict = _group_verdict(group, percent, omitted, separator)
        if isinstance(verdict, tuple):
            for member in group.members:
                if plan.status.get(member, (LayerStatus.UNCHANGED,))[0] == LayerStatus.UNCHANGED:
                    plan.status[member] = verdict
            continue
        plan.removal[group.key] = verdict
        for member in group.members:
            plan.status[member] = (LayerStatus.PRUNED, None)
    return plan


def _group_verdict(group: ChannelGroup, percent: float, omitted: tuple[str, ...],
                   separator: str) -> list[int] | tuple[LayerStatus, str | None]:
    """The channels ``group`` loses, or the status that keeps it whole."""
    if group.blocked and group.blocked[0] == LayerStatus.OUTPUT:
        return group.blocked
    carrier = _omitted_carrier(group.carriers, omitted, separator)
    if carrier is not None:
        return LayerStatus.OMITTED, "listed in ommitted" + (
            "" if carrier in omitted else f" (inside {carrier.rsplit(separator, 1)[0]})")
    if group.blocked:
        return group.blocked
    n = len(group.scores)
    if n % group.blocks:
        return (LayerStatus.UNSUPPORTED, f"{n} channels do not split into the "
                                         f"{group.blocks} groups of a grouped layer")
    per_block = n // group.blocks
    remove = channels_to_remove(per_block, percent)
    if remove <= 0:
        return LayerStatus.UNCHANGED, f"percent={percent} removes none of its {per_block} channels"
    # Sum a position's scores over the blocks; the lowest positions go from every
    # block (ties by index, so results are reproducible).
    scores = np.asarray(group.scores, dtype=np.float64).reshape(group.blocks, per_block).sum(0)
    positions = sorted(range(per_block), key=lambda i: (float(scores[i]), i))[:remove]
    return sorted(block * per_block + p for block in range(group.blocks) for p in positions)


def ensure_prunable(analysis: Analysis, plan: Plan, percent: float) -> None:
    """Raise PruningError, with every layer's reason, when the plan removes nothing."""
    if percent <= 0 or plan.removal:
        return
    reasons = sorted({f"{name}: {why}" for name, (_, why) in plan.status.items() if why})
    raise PruningError("Nothing prunable in this model at this percent: "
                       + ("; ".join(reasons[:12]) or "no convolution, dense or linear layer"))


def drop_failed(plan: Plan, analysis: Analysis, failed: dict[str, str],
                report: JobReport) -> None:
    """Groups the engine could not rewire are left whole, and said so."""
    groups = {group.key: group for group in analysis.groups}
    for key, why in failed.items():
        plan.removal.pop(key, None)
        report.warnings.append(f"{key}: left whole ({why})")
        for member in groups[key].members:
            plan.status[member] = (LayerStatus.UNSUPPORTED, f"could not be rewired: {why}")


def layer_changes(analysis: Analysis, plan: Plan, widths: dict[str, int]) -> list[LayerChange]:
    """The report's rows: each layer's channels before and after, status and reason."""
    rows = []
    for layer in analysis.layers:
        status, reason = plan.status.get(layer.name, (LayerStatus.UNCHANGED, None))
        after = widths.get(layer.name)
        if status == LayerStatus.UNCHANGED and after is not None and after != layer.channels:
            status, reason = LayerStatus.PRUNED, "follows its input channels (depthwise)"
        rows.append(LayerChange(layer.name, layer.type, layer.channels, after, status, reason))
    return rows


# -- verification -------------------------------------------------------------------
def _difference(expected: list[np.ndarray], actual: list[np.ndarray]) -> tuple[float, float]:
    """(max absolute difference, that over the outputs' largest magnitude)."""
    if len(expected) != len(actual) or any(e.shape != a.shape
                                           for e, a in zip(expected, actual, strict=False)):
        return float("inf"), float("inf")
    worst_abs = worst_rel = 0.0
    for e, a in zip(expected, actual, strict=True):
        diff = float(np.max(np.abs(e.astype(np.float64) - a.astype(np.float64)))) if e.size else 0
        scale = float(np.max(np.abs(e))) if e.size else 0.0
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / max(scale, 1e-6))
    return worst_abs, worst_rel


def _outputs(engine: Engine, model: Any, batch: Any, what: str) -> list[np.ndarray]:
    try:
        return engine.run_batch(model, batch)
    except Exception as error:  # noqa: BLE001 - any failure to run is the pruner's to report
        raise PruningError(f"{what} does not run ({type(error).__name__}: "
                           f"{str(error)[:300]}); nothing was returned.") from None


def verify_exactness(engine: Engine, loaded: Loaded, analysis: Analysis, plan: Plan,
                     pruned: Any, batch: Any, expected: list[np.ndarray]) -> Check:
    """Compare the pruned model's outputs (``expected``, on ``batch``) with the original
    masked the same way.

    Groups whose channels pass through a layer with channel statistics (LayerNorm,
    GroupNorm) cannot be reproduced by masking: the check then runs on a second
    rewrite without them, and says so. Raises PruningError, naming the first layer
    that differs, when the outputs do not match.
    """
    started = time.perf_counter()
    groups = {group.key: group for group in analysis.groups}
    inexact = sorted(key for key in plan.removal if groups[key].inexact)
    subject, subject_plan, detail = pruned, plan, "every pruned group"
    if inexact:
        exact = set(plan.removal) - set(inexact)
        why = groups[inexact[0]].inexact
        if not exact:
            return Check(detail=f"not applicable: every pruned group ({_listing(inexact, 6)}) "
                                f"{why}; removing channels there changes results by design",
                         seconds=round(time.perf_counter() - started, 4))
        subject_plan = plan.only(exact)
        subject, failed = engine.rewrite(loaded, analysis, subject_plan)
        for key in failed:
            subject_plan.removal.pop(key, None)
        detail = (f"{len(subject_plan.removal)} of {len(plan.removal)} pruned groups, rewritten "
                  f"without {_listing(inexact, 6)}, which {why}")
        expected = _outputs(engine, subject, batch, "The pruned model")
    masked = engine.mask(loaded, analysis, subject_plan)
    actual = _outputs(engine, masked, batch, "The masked original")
    if [a.shape for a in actual] != [e.shape for e in expected]:
        raise PruningError(f"Pruning changed the model's output shape ("
                           f"{[list(a.shape) for a in actual]} -> "
                           f"{[list(e.shape) for e in expected]}); nothing was returned.")
    worst_abs, worst_rel = _difference(actual, expected)
    check = Check(passed=worst_rel <= TOLERANCE, max_abs_diff=_finite(worst_abs),
                  max_rel_diff=_finite(worst_rel), tolerance=TOLERANCE,
                  detail=f"outputs on a seeded random batch; {detail}",
                  seconds=round(time.perf_counter() - started, 4))
    if not check.passed:
        where = _first_divergence(engine, analysis, subject_plan, subject, masked, batch)
        raise PruningError(
            f"The pruned model does not match the original with the removed channels masked "
            f"(largest difference {worst_abs:.3g}, {worst_rel:.3g} of the output range){where}. "
            "This is a bug in the pruner, not in your model; nothing was returned.")
    return check


def _finite(value: float) -> float | None:
    return round(value, 9) if np.isfinite(value) else None


def _first_divergence(engine: Engine, analysis: Analysis, plan: Plan, pruned: Any, masked: Any,
                      batch: Any) -> str:
    """``; first layer that differs: NAME (group ...)`` or an empty string."""
    names = [layer.name for layer in analysis.layers]
    ours = engine.layer_outputs(pruned, batch, names)
    theirs = engine.layer_outputs(masked, batch, names)
    groups = {member: group for group in analysis.groups for member in group.members}
    axis = engine.channel_axis
    for name in names:
        if name not in ours or name not in theirs:
            continue
        reference = theirs[name]
        group = groups.get(name)
        removed = set(plan.removal.get(group.key, [])) if group else set()
        keep = [c for c in range(reference.shape[axis]) if c not in removed]
        reference = np.take(reference, keep, axis=axis)
        _, rel = _difference([reference], [ours[name]])
        if rel > TOLERANCE:
            members = ", ".join(group.members[:6]) if group else name
            return f"; first layer that differs: {name} (its channel group: {members})"
    return ""


def verify_round_trip(engine: Engine, job: PruneJob, artifacts: dict[str, str | None],
                      pruned: Any, batch: Any, expected: list[np.ndarray]) -> Check:
    """Every saved artifact, loaded back as a user would, must give the pruned model's
    outputs (``expected``, on ``batch``). Raises PruningError naming the format that
    does not."""
    started = time.perf_counter()
    worst_abs = worst_rel = 0.0
    formats = []
    try:
        loaded_back = engine.load_saved(job, artifacts, pruned)
    except Exception as error:  # noqa: BLE001 - a file we cannot read back is not shipped
        raise PruningError(f"The saved model could not be loaded back ({type(error).__name__}: "
                           f"{str(error)[:300]}); nothing was returned.") from None
    for fmt, model in loaded_back.items():
        diff_abs, diff_rel = _difference(expected, _outputs(engine, model, batch,
                                                            f"The saved {fmt} file"))
        if diff_rel > TOLERANCE:
            raise PruningError(f"The saved {fmt} file, loaded back, does not give the pruned "
                               f"model's outputs (largest difference {diff_abs:.3g}); nothing "
                               "was returned.")
        worst_abs, worst_rel = max(worst_abs, diff_abs), max(worst_rel, diff_rel)
        formats.append(fmt)
    return Check(passed=True, max_abs_diff=_finite(worst_abs), max_rel_diff=_finite(worst_rel),
                 tolerance=TOLERANCE, detail=f"loaded back: {', '.join(formats)}",
                 seconds=round(time.perf_counter() - started, 4))
