"""Pruning to a latency budget (``target=latency:F``), timed where the model will run.

NetAdapt (Yang et al., ECCV 2018), with real timings deciding:

1. **Time the original** in the job's runtime (``runtime=``: the deploy format asked
   for, else the framework's own), at ``batch_size`` (default 1) with ``threads``.
   If the runtime cannot run the model, or the model runs under
   :data:`MIN_RELIABLE_MS` (each run's fixed overhead is then a large share of it),
   the search goes on with the estimate alone and the report says why.
2. **A path of plans**, one step at a time from the original: each step raises one
   channel group's fraction so that the *estimated* latency drops by a step
   (:func:`step_size`). The estimate counts every layer's MACs and output elements
   (memory traffic, :data:`ELEMENT_COST` MACs each) as the plan leaves them
   (:class:`CostEstimate`); it only ranks groups and guides the search, timings decide.
   The group each step takes is the one with the best latency saved per metric lost:
   with a dataset, the metric measured on calibration samples that recovery does not
   fit (the held-out fifth stays untouched for the report), each candidate recovered
   as a shipped model is; without one, the data-free sensitivity estimate
   (:func:`l1_loss`): how much of the group's filter L1 norm (Li et al.'s scores) the
   step removes, counted ever dearer as the group empties.
3. **Time along the path.** The first plan whose estimate, corrected by the timings
   so far (interpolated between measured plans), meets the budget is rewritten and
   timed against the original; then the path is bisected between the last plan
   measured too slow and the first measured fast enough, at most
   :data:`MAX_MEASUREMENTS` times. The result is the least-pruned plan measured
   within the budget, or, when the budget cannot be met, the fastest plan found,
   reported as not met.

**Noise.** A plan is timed against the original in interleaved rounds
(:meth:`.speed.Meter.compare`): each round gives one ratio, the plan's ratio is the
median of the rounds', with a distribution-free 90% interval from their order
statistics. The budget is met when that median is at most ``F``; while the interval
straddles ``F`` more rounds are taken (up to :data:`.speed.MAX_ROUNDS`), and a plan
accepted with the upper end of its interval above ``F`` is reported as met *within
noise*, with the interval. Nothing here loops: the path has at most one step per
group and grid fraction, the timings are bounded, and the job's deadline stops the
data-guided steps early (the rest are data-free, said in the report).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeai.pruning.base import PruneJob, PruningError
from edgeai.pruning.engine import Engine
from edgeai.pruning.metric import HIGHER_IS_BETTER, NotMeasured, evaluate, evaluate_smooth
from edgeai.pruning.plan import drop_failed, group_verdict, make_plan
from edgeai.pruning.report import JobReport
from edgeai.pruning.speed import Comparison, Meter, threads_note, timing_threads
from edgeai.pruning.structure import Analysis, ChannelGroup, Loaded, Plan

MIN_RELIABLE_MS = 1.0
ELEMENT_COST = 16
GRID = 0.05
MAX_FRACTION = 0.9
# A step raises one group's fraction by at most this much (NetAdapt takes a layer as far
# as one step's saving needs; a large jump in one group is a change no candidate judge
# sees coming, and what recovery wins back cannot be judged for it).
MAX_RISE = 0.15
MAX_MEASUREMENTS = 8
CANDIDATES = 6
MIN_CANDIDATES = 2
# The time the data-guided steps may take: it decides how candidates are judged (after a
# full recovery, or the cheap half of it: BatchNorm statistics) and how many per step;
# once spent, the remaining steps are data-free. The shipped model always gets the full
# recovery.
DATA_SECONDS = 240.0
UNIFORM = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
UNIFORM_STEP = "(every group: uniform)"
# Seconds kept free before the job's deadline for what follows the search.
RESERVE_SECONDS = 120.0


def step_size(budget: float) -> float:
    """How much of the original's estimated latency one step of the path removes."""
    return min(0.08, max(0.02, (1.0 - budget) / 10))


class CostEstimate:
    """Estimated latency of a plan, as a fraction of the original's (see the module
    docstring); from the engine's :meth:`~.engine.Engine.cost_terms`, or, for an
    engine without them, from the MACs of real rewrites (slower)."""

    def __init__(self, engine: Engine, loaded: Loaded, analysis: Analysis):
        self.engine, self.loaded, self.analysis = engine, loaded, analysis
        self.keys = [group.key for group in analysis.groups]
        self.sizes = np.array([len(group.scores) for group in analysis.groups], dtype=float)
        terms = engine.cost_terms(loaded, analysis)
        self.how = ("MACs and output elements of every layer (each element costs "
                    f"{ELEMENT_COST} MACs)") if terms else "MACs of each rewritten plan"
        self._rewrites: dict[tuple, float] = {}
        self.terms = terms
        if terms:
            index = {key: i for i, key in enumerate(self.keys)}
            shape = (len(terms), len(self.keys))
            self.ins, self.outs = np.zeros(shape), np.zeros(shape)
            for row, term in enumerate(terms):
                for key, count in term.inputs.items():
                    self.ins[row, index[key]] += count
                for key, count in term.outputs.items():
                    self.outs[row, index[key]] += count
            self.fixed_in = np.array([t.fixed_inputs for t in terms], dtype=float)
            self.fixed_out = np.array([t.fixed_outputs for t in terms], dtype=float)
            self.macs = np.array([t.macs for t in terms], dtype=float)
            self.elements = np.array([t.elements for t in terms], dtype=float)
            self.depthwise = np.array([t.depthwise for t in terms])
        self.base = 1.0
        self.base = self._absolute({})

    def _absolute(self, removal: dict[str, list[int]]) -> float:
        if not self.terms:
            return self._rewritten(removal)
        kept = 1.0 - np.array([len(removal.get(key, ())) for key in self.keys]) / \
            np.maximum(self.sizes, 1)

        def share(counts: np.ndarray, fixed: np.ndarray) -> np.ndarray:
            total = fixed + counts.sum(axis=1)
            return np.where(total > 0, (fixed + counts @ kept) / np.maximum(total, 1e-12), 1.0)

        f_in, f_out = share(self.ins, self.fixed_in), share(self.outs, self.fixed_out)
        macs = self.macs * np.where(self.depthwise, f_out, f_in * f_out)
        return float(np.sum(macs + ELEMENT_COST * self.elements * f_out))

    def _rewritten(self, removal: dict[str, list[int]]) -> float:
        key = tuple(sorted((k, tuple(v)) for k, v in removal.items()))
        if key not in self._rewrites:
            plan = Plan(removal=dict(removal))
            model = self.engine.rewrite(self.loaded, self.analysis, plan)[0] if removal \
                else self.loaded.model
            self._rewrites[key] = float(self.engine.measure(model, self.loaded)[1] or 1)
        return self._rewrites[key]

    def __call__(self, removal: dict[str, list[int]]) -> float:
        """The estimated latency of the plan removing ``removal``, over the original's."""
        return self._absolute(removal) / max(self.base, 1e-12)


def l1_loss(group: ChannelGroup, removed: list[int]) -> float:
    """The data-free sensitivity estimate of removing ``removed`` from ``group``:
    ``-log(1 - s)`` with ``s`` the share of the group's filter L1 norm they hold. It
    grows with the norm taken away, and ever faster as the group empties, so that a
    group already pruned hard costs more to prune further."""
    scores = np.asarray(group.scores, dtype=float)
    total = float(scores.sum())
    if total <= 0 or not removed:
        return 0.0
    share = min(float(scores[list(removed)].sum()) / total, 1.0 - 1e-6)
    return -float(np.log1p(-share))


@dataclass
class Step:
    """One plan on the path: each group's fraction, the channels it removes, its
    estimate, and (with data) its metric."""

    fractions: dict[str, float]
    removal: dict[str, list[int]]
    estimate: float
    group: str | None = None
    metric: float | None = None
    loss: float | None = None
    free_loss: float = 0.0
    measured: Comparison | None = None

    def as_dict(self, index: int, corrected: float) -> dict[str, Any]:
        """The step for the report."""
        row: dict[str, Any] = {"step": index, "group": self.group,
                               "fraction": self.fractions.get(self.group or "", None),
                               "estimate": round(self.estimate, 4),
                               "corrected_estimate": round(corrected, 4)}
        if self.metric is not None:
            row["metric"] = round(self.metric, 6)
        if self.loss is not None:
            row["loss"] = round(self.loss, 6)
        if self.measured is not None:
            row["measured"] = self.measured.as_dict()
        return row


@dataclass
class Option:
    """A possible next step: one group raised to ``fraction``."""

    key: str
    fraction: float
    removal: dict[str, list[int]]
    estimate: float
    saving: float
    free_loss: float
    metric: float | None = None
    loss: float | None = None


@dataclass
class Candidates:
    """How the path's candidates are judged on data (None: data-free)."""

    engine: Engine
    loaded: Loaded
    analysis: Analysis
    accuracy: Any
    recover: bool
    higher: bool = True
    mode: str = "recovery"
    per_step: int = CANDIDATES
    stopped: bool = False
    baseline: float = 0.0
    baseline_loss: float = 0.0
    evaluations: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fit, self.selection = self.accuracy.recovery_split()
        if not self.recover:
            self.mode = "none"
        self.baseline, self.baseline_loss = self.judge(self.loaded.model)

    def judge(self, model: Any) -> tuple[float, float]:
        """The metric of ``model`` on the selection samples, and its smooth loss (which
        steps are compared by: see :func:`.metric.evaluate_smooth`)."""
        kind, value, loss = evaluate_smooth(lambda x: self.engine.run_batch(model, x),
                                            self.selection, self.engine.channel_axis)
        self.higher = HIGHER_IS_BETTER[kind]
        return value, loss

    def choose_mode(self, probe: dict[str, list[int]], steps: int, most: int) -> None:
        """Decide, once for the whole search, how candidates are judged and how many per
        step: after a full recovery if at least :data:`MIN_CANDIDATES` per step fit in
        :data:`DATA_SECONDS` (timed on ``probe``), else after BatchNorm re-estimation
        only; then as many per step (at most ``most``) as fit."""
        modes = ["recovery", "batchnorm"] if self.mode == "recovery" else [self.mode]
        spent = 0.0
        for mode in modes:
            self.mode = mode
            started = time.perf_counter()
            if probe:
                self(probe)
            spent = time.perf_counter() - started
            fits = int(DATA_SECONDS / max(spent * steps, 1e-9))
            if fits >= MIN_CANDIDATES or mode == modes[-1]:
                self.per_step = max(MIN_CANDIDATES, min(most, fits))
                break
        if self.mode != modes[0]:
            self.notes.append("a full recovery per candidate would take too long here; "
                              "candidates were judged after re-estimating BatchNorm "
                              "statistics only (the shipped model gets the full recovery)")
        if self.per_step < most:
            self.notes.append(f"{self.per_step} candidates per step (a candidate takes "
                              f"{spent:.1f} s here), the best by the data-free estimate")

    def __call__(self, removal: dict[str, list[int]]) -> tuple[float, float]:
        """The metric and smooth loss of the plan removing ``removal``, recovered as the
        mode says."""
        started = time.perf_counter()
        plan = Plan(removal=dict(removal))
        model, _ = self.engine.rewrite(self.loaded, self.analysis, plan)
        if self.mode == "recovery":
            model, _ = self.accuracy._recover(model, self.loaded, self.analysis, plan)
        elif self.mode == "batchnorm":
            self.engine.reestimate(model, self.fit)
        judged = self.judge(model)
        self.evaluations += 1
        self.seconds += time.perf_counter() - started
        return judged


class LatencySearch:
    """The search of one job (see the module docstring)."""

    def __init__(self, engine: Engine, loaded: Loaded, analysis: Analysis, job: PruneJob,
                 report: JobReport, accuracy: Any):
        self.engine, self.loaded, self.analysis, self.job = engine, loaded, analysis, job
        self.report, self.accuracy = report, accuracy
        target = job.options["target"]
        self.budget = float(target["keep"])
        self.runtime = engine.runtimes(job)[0]
        self.batch = int(job.options.get("batch_size") or 1)
        self.threads = timing_threads(job)
        self.round_to = report.round_to
        self.deadline = job.options.get("deadline")
        self.started = time.perf_counter()
        self.meter = Meter(engine, loaded, self.runtime, self.batch, self.threads)
        self.estimate = CostEstimate(engine, loaded, analysis)
        self.groups = {group.key: group for group in analysis.groups
                       if make_plan(analysis, 0.5, job.omitted, engine.separator, self.round_to,
                                    {group.key: 0.5}).removal}
        self.step = step_size(self.budget)
        self.path = [Step({}, {}, 1.0)]
        self.exhausted = False
        self.unmeasurable: str | None = None
        self.original_ms: float | None = None
        self.candidates: Candidates | None = None
        self.guide = ("data-free: the share of each group's filter L1 norm a step removes, "
                      "dearer as the group empties (no dataset was sent, so no metric was "
                      "measured)")
        self.models: dict[int, Any] = {}
        self.failed: dict[int, dict[str, str]] = {}
        self.uniform_check: dict[str, Any] | None = None

    # -- judging candidates on data -------------------------------------------------
    def _attach_data(self) -> None:
        if self.accuracy is None or not self.accuracy.active:
            if self.accuracy is not None and self.accuracy.report is not None:
                self.guide = ("data-free: the share of each group's filter L1 norm a step "
                              "removes (the dataset could not be measured on: "
                              f"{self.accuracy.report.detail})")
            return
        try:
            self.candidates = Candidates(self.engine, self.loaded, self.analysis,
                                         self.accuracy,
                                         recover=bool(self.job.options.get("recover", True)))
        except NotMeasured as error:
            self.guide = f"data-free: the metric cannot be measured ({error})"
            return
        self.path[0].metric = self.candidates.baseline
        self.path[0].loss = self.candidates.baseline_loss
        steps = int(np.ceil((1.0 - self.budget) / self.step)) + 2
        probe = make_plan(self.analysis, 0.3, self.job.omitted, self.engine.separator,
                          self.round_to).removal
        self.candidates.choose_mode(probe, steps, min(CANDIDATES, len(self.groups)))
        metric = getattr(self.accuracy.report, "metric", None) or "metric"
        loss = "its mse" if metric == "mse" else \
            f"the true class's log-probability, the smooth form of {metric}"
        self.guide = (f"your data: each step takes the group with the best latency saved per "
                      f"loss ({loss}) on {len(self.candidates.selection)} calibration samples "
                      "that recovery does not fit (NetAdapt-style; the held-out fifth is kept "
                      f"for the report); candidates judged after {self.candidates.mode}")

    def _out_of_time(self) -> bool:
        return self.deadline is not None and \
            time.time() > float(self.deadline) - RESERVE_SECONDS

    # -- the path --------------------------------------------------------------------
    def _options(self, current: Step) -> list[Option]:
        options = []
        for key, group in self.groups.items():
            fraction = current.fractions.get(key, 0.0)
            before = current.removal.get(key, [])
            chosen = None
            top = min(MAX_FRACTION, fraction + MAX_RISE)
            grid = np.round(np.arange(fraction + GRID, top + 1e-9, GRID), 4)
            for candidate in grid.tolist():
                verdict = group_verdict(group, candidate, self.job.omitted,
                                        self.engine.separator, self.round_to)
                if isinstance(verdict, tuple) or verdict == before:
                    continue
                removal = {**current.removal, key: verdict}
                estimate = self.estimate(removal)
                chosen = Option(key, candidate, removal, estimate, current.estimate - estimate,
                                l1_loss(group, verdict) - l1_loss(group, before))
                if chosen.saving >= self.step:
                    break
            if chosen is not None and chosen.saving > 1e-9:
                options.append(chosen)
        return options

    def _extend(self) -> bool:
        """Add one step to the path; False when no group can go further."""
        if self.exhausted:
            return False
        current = self.path[-1]
        options = sorted(self._options(current), key=lambda o: o.free_loss / o.saving)
        if not options:
            self.exhausted = True
            return False
        best = options[0]
        data = self.candidates
        if data is not None and current.loss is not None:
            spent = data.seconds > DATA_SECONDS
            if self._out_of_time() or spent:
                if not data.stopped:
                    data.stopped = True
                    data.notes.append(
                        f"from step {len(self.path)} on, steps were chosen data-free: " + (
                            f"judging candidates had taken {data.seconds:.0f} s"
                            if spent else "the job's deadline was near"))
            else:
                for option in options[:data.per_step]:
                    try:
                        option.metric, option.loss = data(option.removal)
                    except Exception as error:  # noqa: BLE001 - that candidate is skipped
                        data.notes.append(f"step {len(self.path)}, {option.key}: not measured "
                                          f"({type(error).__name__}: {str(error)[:120]})")
                base = current.loss
                judged = [(o, o.loss) for o in options[:data.per_step] if o.loss is not None]
                if judged:
                    best = min(judged, key=lambda pair: ((pair[1] - base) / pair[0].saving,
                                                         -pair[0].saving))[0]
        fractions = {**current.fractions, best.key: best.fraction}
        self.path.append(Step(fractions, best.removal, best.estimate, best.key, best.metric,
                              best.loss, current.free_loss + best.free_loss))
        return True

    # -- timing ----------------------------------------------------------------------
    def corrected(self, estimate: float) -> float:
        """``estimate`` corrected by the plans timed so far: interpolated between them
        (the original is 1.0), proportional beyond the most pruned one."""
        points = sorted({(1.0, 1.0)} | {(s.estimate, s.measured.ratio) for s in self.path
                                        if s.measured is not None})
        if estimate <= points[0][0]:
            return estimate * points[0][1] / max(points[0][0], 1e-12)
        for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
            if x0 <= estimate <= x1:
                return y0 + (y1 - y0) * (estimate - x0) / max(x1 - x0, 1e-12)
        return estimate

    def _time_original(self) -> None:
        try:
            timing = self.meter.time("original", self.loaded.model)
        except Exception as error:  # noqa: BLE001 - reported; the search goes on estimated
            message = str(error).splitlines()[0][:300] if str(error) else ""
            self.unmeasurable = (f"the model cannot be timed in {self.runtime}: "
                                 f"{type(error).__name__}: {message}")
            return
        self.original_ms = timing.median_ms
        # The low end of the median's interval: a busy machine only makes runs longer.
        if timing.low_ms < MIN_RELIABLE_MS:
            self.unmeasurable = (
                f"the original runs in {timing.low_ms:.3f} ms in {self.runtime} at batch "
                f"{self.batch}: under {MIN_RELIABLE_MS:g} ms, too short to time a pruned copy "
                "reliably (a run's fixed overhead is a large share of it)")

    def _model(self, index: int) -> Any:
        if index not in self.models:
            model, failed = self.engine.rewrite(self.loaded, self.analysis,
                                                Plan(removal=dict(self.path[index].removal)))
            self.models[index], self.failed[index] = model, failed
        return self.models[index]

    def _measure(self, index: int) -> Comparison | None:
        step = self.path[index]
        try:
            step.measured = self.meter.compare(("original", self.loaded.model),
                                               (f"step{index}", self._model(index)),
                                               budget=self.budget)
        except Exception as error:  # noqa: BLE001 - this plan cannot be timed; others may
            message = str(error).splitlines()[0][:300] if str(error) else ""
            self.unmeasurable = (f"a pruned plan cannot be timed in {self.runtime}: "
                                 f"{type(error).__name__}: {message}")
            return None
        return step.measured

    def _first_within(self, low: int, high: int | None) -> int | None:
        """The first path index after ``low`` (and before ``high``) whose corrected
        estimate meets the budget, growing the path as needed; else the last index
        there; None when there is none."""
        index = low + 1
        while True:
            if high is not None and index >= high:
                return high - 1 if high - 1 > low else None
            if index >= len(self.path) and not self._extend():
                last = len(self.path) - 1
                return last if last > low else None
            if self.corrected(self.path[index].estimate) <= self.budget:
                return index
            index += 1

    def _keep_only(self, index: int | None) -> None:
        """Forget the rewritten models and set-up runtimes of every timed plan but
        ``index`` (a ResNet50 in TFLite is a hundred megabytes)."""
        for key in [k for k in self.models if k != index]:
            self.engine.release(self.models.pop(key))
            self.meter.drop(f"step{key}")

    def run(self) -> tuple[int, dict[str, Any]]:
        """Search; returns (the chosen path index, the report's account of it)."""
        self._time_original()
        self._attach_data()
        low, high, measured = 0, None, 0
        while self.unmeasurable is None and measured < MAX_MEASUREMENTS:
            if high is not None and high - low <= 1:
                break
            index = self._first_within(low, high)
            if index is None:
                break
            if high is not None and measured >= 2 and index in (low + 1, high - 1) \
                    and high - low > 3:
                index = (low + high) // 2  # interpolation stalls at an end: bisect
            comparison = self._measure(index)
            measured += 1
            if comparison is None:
                break
            if comparison.ratio <= self.budget:
                high = index
            else:
                low = index
            self._keep_only(high if high is not None else index)
        if self.unmeasurable is not None:
            chosen = self._estimated_choice()
        elif high is not None:
            chosen = high
        else:
            timed = [i for i, s in enumerate(self.path) if s.measured is not None]
            chosen = max(timed) if timed else 0
        if self.candidates is not None and chosen > 0 and not self._out_of_time():
            chosen = self._against_uniform(chosen)
        return chosen, self.summary(chosen)

    def _against_uniform(self, chosen: int) -> int:
        """With data: uniform pruning at the chosen plan's estimated latency, judged the
        same way; when it loses less on the selection samples (and, timed, meets the
        budget too) it is shipped instead, as a last step of the path, said in the
        report. The search never ships worse than uniform on your samples."""
        data = self.candidates
        step = self.path[chosen]
        assert data is not None
        low, high = 0.0, MAX_FRACTION
        for _ in range(12):  # the smallest uniform percent whose estimate is the plan's
            middle = (low + high) / 2
            if self.estimate(self._uniform(middle)) > step.estimate:
                low = middle
            else:
                high = middle
        percent = round(high, 4)
        removal = self._uniform(percent)
        # Both as they would ship: after the full recovery, whatever the steps were judged
        # with (BatchNorm statistics alone ranked EfficientNetB0's plans wrongly).
        mode, data.mode = data.mode, "recovery" if data.recover else data.mode
        try:
            path_metric, path_loss = data(step.removal)
            metric, loss = data(removal)
        finally:
            data.mode = mode
        if step.loss is None:  # chosen data-free (the judging time was spent)
            step.metric, step.loss = path_metric, path_loss
        self.uniform_check = {"percent": percent, "metric": metric, "loss": loss,
                              "path_metric": path_metric, "path_loss": path_loss,
                              "judged": "after recovery" if data.recover else "as rewritten"}
        if loss >= path_loss:
            return chosen
        fractions = {key: percent for key in self.groups if key in removal}
        self.path.append(Step(fractions, removal, self.estimate(removal), UNIFORM_STEP,
                              metric, loss, step.free_loss))
        index = len(self.path) - 1
        if self.unmeasurable is None:
            timed = self._measure(index)
            if timed is None or timed.ratio > max(self.budget, step.measured.ratio
                                                  if step.measured else self.budget):
                self.uniform_check["timed"] = timed.ratio if timed else None
                return chosen
        self.uniform_check["shipped"] = True
        return index

    def _uniform(self, percent: float) -> dict[str, list[int]]:
        return make_plan(self.analysis, percent, self.job.omitted, self.engine.separator,
                         self.round_to).removal

    def _estimated_choice(self) -> int:
        index = self._first_within(0, None)
        return index if index is not None else len(self.path) - 1

    # -- the report -------------------------------------------------------------------
    def summary(self, chosen: int) -> dict[str, Any]:
        """The report's ``target`` for the search."""
        step = self.path[chosen]
        measured = step.measured
        summary: dict[str, Any] = {
            "metric": "latency", "keep": self.budget, "runtime": self.runtime,
            "batch": self.batch, "threads": self.threads,
            "original_ms": measured.before_ms if measured is not None else self.original_ms,
            "guided_by": self.guide, "estimate": self.estimate.how,
            "step_size": self.step, "measurements": sum(1 for s in self.path if s.measured),
            "fractions": {k: v for k, v in step.fractions.items() if k in step.removal},
            "steps": [s.as_dict(i, self.corrected(s.estimate)) for i, s in enumerate(self.path)],
            "chosen_step": chosen}
        summary.update(self._timed_verdict(measured) if measured is not None
                       else self._estimated_verdict(step))
        if self.uniform_check is not None:
            summary["uniform_check"] = self.uniform_check
            if self.uniform_check.get("shipped"):
                summary["detail"] += (
                    f"; uniform pruning (percent={self.uniform_check['percent']}) at the "
                    "path's latency lost less on your samples "
                    f"(loss {self.uniform_check['loss']:.4g} against "
                    f"{self.uniform_check['path_loss']:.4g}) and was shipped instead")
        if self.candidates is not None:
            summary["candidates"] = {"evaluations": self.candidates.evaluations,
                                     "seconds": round(self.candidates.seconds, 3),
                                     "judged_after": self.candidates.mode,
                                     "notes": self.candidates.notes,
                                     "baseline": self.candidates.baseline}
        summary["seconds"] = round(time.perf_counter() - self.started, 3)
        return summary

    def _timed_verdict(self, measured: Any) -> dict[str, Any]:
        """What the report says of a chosen plan that was timed."""
        met = measured.ratio <= self.budget
        verdict = dict(reached=round(measured.ratio, 4), measured=True, met=met,
                       interval=[round(measured.low, 4), round(measured.high, 4)],
                       within_noise=met and measured.high > self.budget,
                       before_ms=round(measured.before_ms, 4),
                       after_ms=round(measured.after_ms, 4))
        if met:
            verdict["detail"] = (
                f"met: {measured.ratio:.3f} of the original's latency in {self.runtime} "
                f"(90% interval {measured.low:.3f}-{measured.high:.3f} over "
                f"{measured.rounds} interleaved rounds)" + (
                    "; the interval reaches above the budget: met within measurement noise"
                    if measured.high > self.budget else ""))
        else:
            verdict["detail"] = (
                f"NOT met: the fastest plan found runs at {measured.ratio:.3f} of the "
                f"original's latency in {self.runtime} (90% interval {measured.low:.3f}-"
                f"{measured.high:.3f}), above the budget {self.budget:g}: every group the "
                f"search may prune is at its limit (at most {MAX_FRACTION:g} of a group; "
                "outputs, omitted layers and layers left whole keep the rest)"
                if self.exhausted else
                f"NOT met: the fastest plan timed runs at {measured.ratio:.3f} of the "
                f"original's latency in {self.runtime}, above the budget {self.budget:g}; "
                f"the search stopped after {MAX_MEASUREMENTS} timings")
        return verdict

    def _estimated_verdict(self, step: Step) -> dict[str, Any]:
        """What the report says of a chosen plan that could not be timed."""
        corrected = self.corrected(step.estimate)
        met = corrected <= self.budget
        why = self.unmeasurable or "no plan could be timed"
        return dict(reached=round(corrected, 4), measured=False, met=False,
                    estimated_met=met, interval=None, within_noise=False,
                    detail=f"NOT measured: {why}. The plan returned is the first whose "
                           f"estimate ({self.estimate.how}) is {corrected:.3f} of the "
                           "original's" + ("" if met else
                                           f", the lowest the search reached, above the "
                                           f"budget {self.budget:g}"))

    def curves(self, chosen: int) -> dict[str, list[list[float]]] | None:
        """With data: (corrected latency, metric) of the search's path and of uniform
        pruning, the metric on the same selection samples, judged the same way."""
        data = self.candidates
        if data is None:
            return None
        search = [[round(self.corrected(s.estimate), 4), round(s.metric, 6)]
                  for s in self.path[:max(chosen + 1, 2)]
                  if s.metric is not None and s.group != UNIFORM_STEP]
        uniform = [[1.0, round(data.baseline, 6)]]
        floor = self.corrected(self.path[chosen].estimate)
        for percent in UNIFORM:
            if self._out_of_time():
                break
            plan = make_plan(self.analysis, percent, self.job.omitted, self.engine.separator,
                             self.round_to)
            if not plan.removal:
                continue
            latency = self.corrected(self.estimate(plan.removal))
            uniform.append([round(latency, 4), round(data(plan.removal)[0], 6)])
            if latency < floor * 0.9:
                break
        return {"search": search, "uniform": uniform}

    def chosen_model(self, chosen: int) -> tuple[Plan, Any, dict[str, str]]:
        """The chosen plan (every layer's status filled in), its rewritten model, and the
        groups the rewrite could not rewire; the meter keeps its timing as ``pruned``
        for the measure step."""
        step = self.path[chosen]
        plan = make_plan(self.analysis, 0.0, self.job.omitted, self.engine.separator,
                         self.round_to, step.fractions)
        model = self._model(chosen)
        if step.measured is not None:
            self.meter.alias("pruned", f"step{chosen}")
        self._keep_only(chosen)
        return plan, model, self.failed.get(chosen, {})


def search_latency(engine: Engine, loaded: Loaded, analysis: Analysis, job: PruneJob,
                   report: JobReport, accuracy: Any,
                   ) -> tuple[Plan, Any, LatencySearch]:
    """Search the plan for ``job``'s latency target; fill ``report.target`` (budget,
    what was reached, the steps) and ``report.plan``. Returns the plan, its rewritten
    model and the search (its meter serves the measure step). Raises PruningError when
    nothing in the model can be pruned."""
    search = LatencySearch(engine, loaded, analysis, job, report, accuracy)
    if not search.groups:
        raise PruningError("The latency target cannot be searched: no channel group of this "
                           "model can be pruned (outputs, omitted layers and layers left whole "
                           "keep every channel).")
    if threads_note(job):
        report.warnings.append(str(threads_note(job)))
    chosen, summary = search.run()
    curves = search.curves(chosen)
    if curves:
        summary["curves"] = curves
    report.target = summary
    plan, model, failed = search.chosen_model(chosen)
    drop_failed(plan, analysis, failed, report)
    report.plan = {key: round(value, 4) for key, value in summary["fractions"].items()}
    if not summary["met"]:
        report.warnings.append(f"latency target {search.budget:g}: {summary['detail']}")
    return plan, model, search

def analyse_latency(engine: Engine, loaded: Loaded, analysis: Analysis, job: PruneJob,
                    report: JobReport, accuracy: Any) -> dict[str, Any]:
    """The analysis task (tf_analyze, pt_analyze) for a latency target: the search's plan,
    and that plan against the uniform percent at the same latency, both recovered as a
    prune ships them and measured on the held-out fifth. Returns ``report.sensitivity``.
    Raises PruningError when nothing can be pruned."""
    started = time.perf_counter()
    plan, model, search = search_latency(engine, loaded, analysis, job, report, accuracy)
    summary = report.target or {}
    held_out = accuracy.held_out
    recover = bool(job.options.get("recover", True))

    def shipped_metric(pruned: Any, chosen: Plan) -> float | None:
        if held_out is None:
            return None
        if recover:
            pruned, _ = accuracy._recover(pruned, loaded, analysis, chosen)
        return evaluate(lambda x: engine.run_batch(pruned, x), held_out, engine.channel_axis)[1]

    reached = float(summary.get("reached") or 1.0)
    plan_metric = shipped_metric(model, plan)
    # The uniform percent whose corrected estimate is the plan's latency, then timed.
    low, high = 0.0, 0.95
    for _ in range(12):
        middle = (low + high) / 2
        removal = make_plan(analysis, middle, job.omitted, engine.separator,
                            report.round_to).removal
        if search.corrected(search.estimate(removal)) > reached:
            low = middle
        else:
            high = middle
    percent = round(high, 4)
    uniform_plan = make_plan(analysis, percent, job.omitted, engine.separator, report.round_to)
    uniform_model, _ = engine.rewrite(loaded, analysis, uniform_plan)
    uniform: dict[str, Any] = {"percent": percent}
    if search.unmeasurable is None:
        try:
            timed = search.meter.compare(("original", loaded.model), ("uniform", uniform_model))
            uniform.update(cost=round(timed.ratio, 4), interval=[round(timed.low, 4),
                                                                 round(timed.high, 4)])
        except Exception as error:  # noqa: BLE001 - the comparison is reported untimed
            uniform["detail"] = f"not timed: {type(error).__name__}"
    uniform.setdefault("cost", round(search.corrected(search.estimate(uniform_plan.removal)), 4))
    uniform["metric"] = shipped_metric(uniform_model, uniform_plan)
    evaluation = report.evaluation
    return {
        "metric": evaluation.metric if evaluation else None,
        "higher_is_better": evaluation.higher_is_better if evaluation else None,
        "baseline": evaluation.before if evaluation else None,
        "target": job.options.get("target"), "latency": True,
        "plan": report.plan or {},
        "plan_result": {"cost": reached, "interval": summary.get("interval"),
                        "measured": summary.get("measured"), "metric": plan_metric},
        "uniform": uniform, "seconds": round(time.perf_counter() - started, 3)}
