"""One pruning pipeline for every job, whatever the framework.

    load -> check the omitted names -> measure -> analyse (channel groups) -> plan
    (a percent, the percent a cost target needs, or the per-group plan a latency
    budget needs, timed in the runtime the model will run in) -> rewrite -> verify exactness
    -> save -> verify the round trip -> export the deploy formats asked for (each
    checked in its runtime) -> time the models -> report

Each step is one function: :mod:`.plan` chooses what goes, :mod:`.verify` proves
the result, :mod:`.speed` times it. An engine (:class:`.engine.Engine`) supplies
only its framework's own steps — load, analyse, rewrite, mask, run a batch, save,
load back, export, time — and everything that is the same for every framework is
written once.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeai.pruning import progress
from edgeai.pruning.accuracy import Accuracy
from edgeai.pruning.base import PruneJob, PruneResult, PruningError
from edgeai.pruning.engine import Engine, Written
from edgeai.pruning.latency import search_latency
from edgeai.pruning.plan import (
    check_omitted,
    drop_failed,
    ensure_prunable,
    layer_changes,
    make_plan,
    resolve_ratios,
    rounding_hints,
    search_percent,
    target_summary,
)
from edgeai.pruning.report import JobReport
from edgeai.pruning.sensitivity import analyse_job
from edgeai.pruning.speed import Meter, measure_speed
from edgeai.pruning.structure import Analysis, ChannelGroup, LayerInfo, Loaded, Plan
from edgeai.pruning.verify import (
    SEED,
    check_exports,
    outputs,
    verify_exactness,
    verify_round_trip,
    written_round_trip,
)

__all__ = ["Analysis", "ChannelGroup", "Engine", "LayerInfo", "Loaded", "Plan", "run", "step"]


@contextmanager
def step(report: JobReport, name: str) -> Iterator[None]:
    """Run one step (a key of :data:`.progress.STEP_PHASES`): announce its phase to
    :mod:`.progress`, and add its time to ``report.timings``."""
    tracker = progress.current()
    tracker.enter(name)
    started = time.perf_counter()
    yield
    report.timings[name] = round(report.timings.get(name, 0.0) + time.perf_counter() - started, 4)
    tracker.leave()


def planned_steps(job: PruneJob, engine: Engine | None = None) -> int:
    """How many :func:`step` blocks :func:`run` passes through for ``job`` (with
    ``engine``: its compilation ahead of the checks counted): the progress fraction's
    denominator. (With a dataset too small to measure on, the evaluation steps are
    skipped and the fraction jumps; it never goes back.)"""
    data = "dataset" in job.inputs
    if job.options.get("task") == "analyze":
        return 3 + data  # load, (evaluate,) analyse, rewrite
    epochs = int(job.options.get("finetune_epochs") or 0)
    measure = bool(job.options.get("measure", True))
    return (6  # load, analyse, rewrite, verify, save, verify the round trip
            + 2 * data + (data and epochs > 0)  # evaluate before, after (+ recovery)
            + bool(job.options.get("formats")) + measure + compiles(engine, job))


def run(engine: Engine, job: PruneJob) -> PruneResult:
    """Prune ``job`` with ``engine``; see the module docstring. Raises PruningError."""
    report = JobReport(framework=engine.spec.name, percent=job.percent,
                       round_to=int(job.options.get("round_to") or 1),
                       brings_code=engine.untrusted_code(job))
    progress.current().plan(planned_steps(job, engine))
    loaded, accuracy = load(engine, job, report)
    with step(report, "analyse"):
        analysis = engine.analyse(loaded)
    if job.options.get("task") == "analyze":
        return analyse(engine, loaded, analysis, job, report, accuracy)
    meters: dict[tuple[str, int], Meter] = {}
    plan, pruned, written = choose(engine, loaded, analysis, job, report, accuracy, meters)
    with discarded_on_failure(job, written):
        report.layers = layer_changes(analysis, plan, engine.widths(pruned))
        rounding_hints(report.layers, report.round_to, report.warnings)
        final = evaluate_and_recover(engine, accuracy, pruned, loaded, analysis, plan, job, report)
        batch = engine.example_batch(loaded, SEED)
        compiled = compile_for_timing(engine, job, report, (final, loaded.model), batch)
        with step(report, "verify"):
            expected = outputs(engine, pruned, batch, "The pruned model",
                               compiled and final is pruned)
            report.verification.exactness = verify_exactness(engine, loaded, analysis, plan,
                                                             pruned, batch, expected, compiled)
        tuned = accuracy.active and int(job.options.get("finetune_epochs") or 0) > 0
        if tuned:
            with step(report, "finetune"):
                final = accuracy.finetune(final, job)  # trained in place
        if final is not pruned or tuned:  # the shipped model's outputs, for the round trip
            if final is not pruned:
                engine.release(pruned)
            written = None  # the model is no longer the file it was loaded from
            pruned, expected = final, outputs(engine, final, batch, "The recovered model",
                                              compiled)
        report.evaluation = accuracy.finish()
        _legacy_accuracy(report)
        report.params_after, report.macs_after = engine.measure(pruned, loaded)
        save(engine, pruned, loaded, job, report, written)
        with step(report, "verify"):
            report.verification.round_trip = (
                verify_round_trip(engine, job, report.artifacts, pruned, batch, expected)
                if written is None else written_round_trip(written))
        if job.options.get("formats"):
            with step(report, "export"):
                report.exports = check_exports(engine, pruned, loaded, job, batch, expected)
                report.artifacts.update({fmt: check.file for fmt, check in report.exports.items()})
        if job.options.get("measure", True):
            with step(report, "measure"):
                # The original is masked by now: the same architecture, so the same speed.
                report.speed = measure_speed(engine, loaded, loaded.model, pruned, job,
                                             report.artifacts, meters)
        return PruneResult(artifact=report.artifacts["model"] or "",
                           message=engine.summary(pruned, loaded, job), report=report.to_dict())


def load(engine: Engine, job: PruneJob, report: JobReport) -> tuple[Loaded, Accuracy]:
    """The uploaded model and its data, checked against ``job.omitted``; the figures
    before pruning (size, cost, and the metric where the job brought data)."""
    with step(report, "load"):
        loaded = engine.load(job, Path(job.output_dir).parent)
        check_omitted(job.omitted, engine.layer_names(loaded), engine.channel_layers(loaded),
                      engine.separator)
        accuracy = Accuracy(engine, engine.load_data(job, loaded, report))
        report.params_before, report.macs_before = engine.measure(loaded.model, loaded)
    if accuracy.active:
        with step(report, "evaluate"):
            accuracy.measure(loaded.model, "before")
    report.file_size_before = os.path.getsize(engine.primary_input(job))
    return loaded, accuracy


@contextmanager
def discarded_on_failure(job: PruneJob, written: Written | None) -> Iterator[None]:
    """A job that fails leaves no file behind, the one written with the rewrite too."""
    try:
        yield
    except BaseException:
        for name in (written.artifacts.values() if written is not None else ()):
            if name:
                Path(job.output_dir, name).unlink(missing_ok=True)
        raise


def compiles(engine: Engine | None, job: PruneJob) -> bool:
    """Whether the job compiles its models for the measure step ahead of the checks
    (:func:`compile_for_timing`)."""
    return engine is not None and engine.compiles and bool(job.options.get("measure", True)) \
        and engine.timing_runtimes[:1] == tuple(engine.runtimes(job))[:1]


def compile_for_timing(engine: Engine, job: PruneJob, report: JobReport, models: tuple,
                       batch: Any) -> bool:
    """When the models will be timed in the framework's own compiled runtime (the
    measure step), compile them now, as part of that step: the checks then run the same
    compiled functions instead of slower eager calls (the original's reads the masked
    weights in place), and each model is compiled once. Returns whether it did."""
    if not compiles(engine, job):
        return False
    with step(report, "measure"):
        try:
            for model in models:
                engine.forward(model)(batch)
        except Exception:  # noqa: BLE001 - timing is a measurement, not the job
            for model in models:  # the checks run eagerly; the measure step says why
                engine.release(model)
            return False
    return True


def evaluate_and_recover(engine: Engine, accuracy: Accuracy, pruned: Any, loaded: Loaded,
                         analysis: Analysis, plan: Plan, job: PruneJob, report: JobReport) -> Any:
    """With data: the metric after pruning, then recovery (unless ``recover=false``).
    Returns the model to go on with (``pruned`` itself without recovery)."""
    if not accuracy.active:
        return pruned
    with step(report, "evaluate"):
        accuracy.measure(pruned, "after_prune")
        if not (accuracy.active and job.options.get("recover", True)):
            return pruned
        # Recovery needs the original as it is; the exactness check masks it, so recovery
        # works on a copy first, and the check proves the rewrite on the model as rewritten.
        return accuracy.recover(engine.copy(pruned), loaded, analysis, plan, job)


def _legacy_accuracy(report: JobReport) -> None:
    """accuracy_before/after: the held-out top-1 accuracy before and as shipped."""
    evaluation = report.evaluation
    if evaluation is None or evaluation.metric != "top1_accuracy":
        return
    report.accuracy_before = evaluation.before
    report.accuracy_after = next((value for value in (
        evaluation.after_finetune, evaluation.after_recovery, evaluation.after_prune)
        if value is not None), None)


def choose(engine: Engine, loaded: Loaded, analysis: Analysis, job: PruneJob,
           report: JobReport, accuracy: Accuracy | None = None,
           meters: dict[tuple[str, int], Meter] | None = None,
           ) -> tuple[Plan, Any, Written | None]:
    """The plan and the pruned model: for ``percent``, for the percent that meets the
    job's cost ``target`` (searched with real rewrites, so the figure reached is the
    shipped model's own), or for its latency target (:mod:`.latency`, timed; its meter
    is added to ``meters`` for the measure step to reuse). For ``percent``, where the
    engine can, the model is written to its file and loaded from it (the third value;
    None otherwise)."""
    round_to = report.round_to
    target = job.options.get("target")
    if target and target["metric"] == "latency":
        with step(report, "rewrite"):
            plan, pruned, search = search_latency(engine, loaded, analysis, job, report,
                                                  accuracy)
            ensure_prunable(analysis, plan, 1.0)
        if meters is not None:
            meters[(search.runtime, search.batch)] = search.meter
        return plan, pruned, None
    ratios = read_plan(job, analysis, engine) if "plan" in job.inputs else None
    report.plan = ratios
    rewrites: dict[float, tuple[Plan, Any]] = {}

    def rewrite_at(percent: float) -> tuple[Plan, Any]:
        if percent not in rewrites:
            plan = make_plan(analysis, percent, job.omitted, engine.separator, round_to, ratios)
            pruned, failed = engine.rewrite(loaded, analysis, plan)
            drop_failed(plan, analysis, failed, report)
            rewrites[percent] = (plan, pruned)
        return rewrites[percent]

    def final(percent: float, direct: bool = False) -> tuple[Plan, Any, Written | None]:
        amount = 1.0 if ratios else percent  # a plan's groups have their own ratios
        plan = make_plan(analysis, percent, job.omitted, engine.separator, round_to, ratios)
        ensure_prunable(analysis, plan, amount)
        written = write_directly(engine, loaded, analysis, plan, job, report) if direct else None
        if written is not None:
            return plan, written.model, written
        plan, pruned = rewrite_at(percent)
        ensure_prunable(analysis, plan, amount)
        return plan, pruned, None

    with step(report, "rewrite"):
        if not target:
            return final(job.percent, direct=True)
        index = 0 if target["metric"] == "params" else 1
        before = (report.params_before, report.macs_before)[index] or 1

        def cost(percent: float) -> float:
            return engine.measure(rewrite_at(percent)[1], loaded)[index] / before

        percent, reached, evaluations = search_percent(cost, float(target["keep"]))
        report.percent = percent
        report.target = target_summary(target, percent, reached, evaluations)
        report.warnings = list(dict.fromkeys(report.warnings))
        return final(percent)


def write_directly(engine: Engine, loaded: Loaded, analysis: Analysis, plan: Plan,
                   job: PruneJob, report: JobReport) -> Written | None:
    """The pruned model written to its file and loaded from it, where the engine can
    (:meth:`Engine.rewrite_saved`); a failed attempt is said in the warnings."""
    written, failure = engine.rewrite_saved(loaded, analysis, plan, job)
    if failure:
        report.warnings.append(f"The pruned file was written by the framework's own saver: "
                               f"{failure}.")
    return written


MAX_PLAN_BYTES = 1 << 20


def read_plan(job: PruneJob, analysis: Analysis, engine: Engine) -> dict[str, float]:
    """The ``plan`` file: JSON {group or layer name: fraction in [0, 1)}, resolved to
    group keys. Raises PruningError saying what is wrong."""
    allowed = ("plan must be a JSON object of group or layer names to fractions in [0, 1), "
               'e.g. {"conv1": 0.3, "layer2.0.conv1": 0.5}')
    path = job.inputs["plan"]
    if os.path.getsize(path) > MAX_PLAN_BYTES:
        raise PruningError(f"plan: larger than {MAX_PLAN_BYTES >> 10} KB; {allowed}.")
    try:
        with open(path, encoding="utf-8") as handle:
            requested = json.load(handle)
    except (ValueError, UnicodeDecodeError):
        raise PruningError(f"plan: not valid JSON; {allowed}.") from None
    if not isinstance(requested, dict) or not all(
            isinstance(name, str) and isinstance(value, (int, float))
            and not isinstance(value, bool) and 0 <= value < 1
            for name, value in requested.items()):
        raise PruningError(f"plan: {allowed}.")
    return resolve_ratios({name: float(value) for name, value in requested.items()},
                          analysis, [layer.name for layer in analysis.layers],
                          engine.separator)


def analyse(engine: Engine, loaded: Loaded, analysis: Analysis, job: PruneJob,
            report: JobReport, accuracy: Accuracy) -> PruneResult:
    """The analysis task (tf_analyze, pt_analyze): no model is shipped, a plan is."""
    with step(report, "rewrite"):
        artifact = analyse_job(engine, loaded, analysis, job, accuracy, report)
    report.evaluation = accuracy.finish()
    report.artifacts = {"model": artifact, "plan": artifact}
    result = report.sensitivity or {}
    if result.get("latency"):
        target = report.target or {}
        lines = [f"Latency search for {result.get('target')} in {target.get('runtime')}: "
                 f"{target.get('detail')}",
                 f"Guided by {target.get('guided_by')}.",
                 f"Recommended plan: {json.dumps(result.get('plan'))}",
                 f"  on the held-out fifth after recovery: {result.get('plan_result')}",
                 f"Uniform at the same latency: {result.get('uniform')}"]
        return PruneResult(artifact=artifact, message="\n".join(lines),
                           report=report.to_dict())
    lines = [f"Sensitivity of {len(result.get('groups', []))} channel groups on "
             f"{accuracy.report.samples if accuracy.report else 0} held-out samples "
             f"({result.get('metric')}; the original: {result.get('baseline')}).",
             f"Recommended plan for {result.get('target')}: {json.dumps(result.get('plan'))}",
             f"  measured: {result.get('plan_result')}",
             f"Uniform for the same target: {result.get('uniform')}"]
    return PruneResult(artifact=artifact, message="\n".join(lines), report=report.to_dict())


def save(engine: Engine, pruned: Any, loaded: Loaded, job: PruneJob, report: JobReport,
         written: Written | None = None) -> None:
    """Write the artifacts (unless ``pruned`` was loaded from the file ``written``, as
    it still is); fill the file sizes and the ratios."""
    with step(report, "save"):
        report.artifacts = dict(written.artifacts) if written is not None else \
            engine.save(pruned, loaded, job, report)
    main = report.artifacts.get("model")
    if not main:
        raise PruningError("The pruned model could not be saved; nothing was returned.")
    report.file_size_after = os.path.getsize(os.path.join(job.output_dir, main))
    report.fill_ratios()
