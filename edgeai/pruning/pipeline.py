"""One pruning pipeline for every job, whatever the framework.

    load -> check the omitted names -> measure -> analyse (channel groups) -> plan
    (a percent, or the percent a cost target needs) -> rewrite -> verify exactness
    -> save -> verify the round trip -> export the deploy formats asked for (each
    checked in its runtime) -> time the models -> report

Each step is one function: :mod:`.plan` chooses what goes, :mod:`.verify` proves
the result, :mod:`.speed` times it. An engine (:class:`.engine.Engine`) supplies
only its framework's own steps — load, analyse, rewrite, mask, run a batch, save,
load back, export, time — and everything that is the same for every framework is
written once.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeai.pruning.base import PruneJob, PruneResult, PruningError
from edgeai.pruning.engine import Engine
from edgeai.pruning.plan import (
    check_omitted,
    drop_failed,
    ensure_prunable,
    layer_changes,
    make_plan,
    rounding_hints,
    search_percent,
    target_summary,
)
from edgeai.pruning.report import JobReport
from edgeai.pruning.speed import measure_speed
from edgeai.pruning.structure import Analysis, ChannelGroup, LayerInfo, Loaded, Plan
from edgeai.pruning.verify import (
    SEED,
    check_exports,
    outputs,
    verify_exactness,
    verify_round_trip,
)

__all__ = ["Analysis", "ChannelGroup", "Engine", "LayerInfo", "Loaded", "Plan", "run", "step"]


@contextmanager
def step(report: JobReport, name: str) -> Iterator[None]:
    """Time one step into ``report.timings``."""
    started = time.perf_counter()
    yield
    report.timings[name] = round(report.timings.get(name, 0.0) + time.perf_counter() - started, 4)


def run(engine: Engine, job: PruneJob) -> PruneResult:
    """Prune ``job`` with ``engine``; see the module docstring. Raises PruningError."""
    report = JobReport(framework=engine.spec.name, percent=job.percent,
                       round_to=int(job.options.get("round_to") or 1))
    with step(report, "load"):
        loaded = engine.load(job, Path(job.output_dir).parent)
        check_omitted(job.omitted, engine.layer_names(loaded), engine.channel_layers(loaded),
                      engine.separator)
        data = engine.load_data(job, loaded, report)
        if data is not None:
            report.accuracy_before = engine.evaluate(loaded.model, data)
        report.params_before, report.macs_before = engine.measure(loaded.model, loaded)
    report.file_size_before = os.path.getsize(engine.primary_input(job))
    with step(report, "analyse"):
        analysis = engine.analyse(loaded)
    plan, pruned = choose(engine, loaded, analysis, job, report)
    report.layers = layer_changes(analysis, plan, engine.widths(pruned))
    rounding_hints(report.layers, report.round_to, report.warnings)
    batch = engine.example_batch(loaded, SEED)
    expected = outputs(engine, pruned, batch, "The pruned model")
    report.verification.exactness = verify_exactness(engine, loaded, analysis, plan, pruned,
                                                     batch, expected)
    report.params_after, report.macs_after = engine.measure(pruned, loaded)
    if data is not None:
        report.accuracy_after = engine.evaluate(pruned, data)
    save(engine, pruned, loaded, job, report)
    report.verification.round_trip = verify_round_trip(engine, job, report.artifacts, pruned,
                                                       batch, expected)
    report.exports = check_exports(engine, pruned, loaded, job, batch, expected)
    report.artifacts.update({fmt: check.file for fmt, check in report.exports.items()})
    if job.options.get("measure", True):
        # The original is masked by now: the same architecture, so the same speed.
        report.speed = measure_speed(engine, loaded, loaded.model, pruned, job,
                                     report.artifacts)
    return PruneResult(artifact=report.artifacts["model"] or "",
                       message=engine.summary(pruned, loaded, job), report=report.to_dict())


def choose(engine: Engine, loaded: Loaded, analysis: Analysis, job: PruneJob,
           report: JobReport) -> tuple[Plan, Any]:
    """The plan and the pruned model: for ``percent``, or for the percent that meets
    the job's cost ``target`` (searched with real rewrites, so the figure reached is
    the shipped model's own)."""
    round_to = report.round_to
    target = job.options.get("target")
    rewrites: dict[float, tuple[Plan, Any]] = {}

    def rewrite_at(percent: float) -> tuple[Plan, Any]:
        if percent not in rewrites:
            plan = make_plan(analysis, percent, job.omitted, engine.separator, round_to)
            pruned, failed = engine.rewrite(loaded, analysis, plan)
            drop_failed(plan, analysis, failed, report)
            rewrites[percent] = (plan, pruned)
        return rewrites[percent]

    def final(percent: float) -> tuple[Plan, Any]:
        ensure_prunable(analysis, make_plan(analysis, percent, job.omitted, engine.separator,
                                            round_to), percent)
        plan, pruned = rewrite_at(percent)
        ensure_prunable(analysis, plan, percent)
        return plan, pruned

    with step(report, "rewrite"):
        if not target:
            return final(job.percent)
        index = 0 if target["metric"] == "params" else 1
        before = (report.params_before, report.macs_before)[index] or 1

        def cost(percent: float) -> float:
            return engine.measure(rewrite_at(percent)[1], loaded)[index] / before

        percent, reached, evaluations = search_percent(cost, float(target["keep"]))
        report.percent = percent
        report.target = target_summary(target, percent, reached, evaluations)
        report.warnings = list(dict.fromkeys(report.warnings))
        return final(percent)


def save(engine: Engine, pruned: Any, loaded: Loaded, job: PruneJob, report: JobReport) -> None:
    """Write the artifacts; fill the file sizes and the ratios."""
    with step(report, "save"):
        report.artifacts = engine.save(pruned, loaded, job, report)
    main = report.artifacts.get("model")
    if not main:
        raise PruningError("The pruned model could not be saved; nothing was returned.")
    report.file_size_after = os.path.getsize(os.path.join(job.output_dir, main))
    report.fill_ratios()
