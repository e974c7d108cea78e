"""Proof, on every job, that what is shipped is right.

* *exactness*: the original with the removed channels masked (their producers'
  filters and consumers' input weights zeroed) must give the pruned model's outputs
  on a seeded random batch; otherwise the job fails and names the first layer
  that differs;
* *round trip*: every saved file, loaded back the way a user loads it, must give
  the pruned model's outputs;
* *exports*: every deploy format asked for, run in its own runtime, is compared
  the same way; one that fails or differs is reported for that format and not
  shipped, and the prune still finishes.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeai.pruning.base import PruneJob, PruningError
from edgeai.pruning.engine import Engine, Written
from edgeai.pruning.plan import listing
from edgeai.pruning.report import Check, ExportCheck
from edgeai.pruning.structure import Analysis, Loaded, Plan

# Outputs may differ by float rounding (another summation order), never by more.
TOLERANCE = 1e-4
SEED = 20171


def difference(expected: list[np.ndarray], actual: list[np.ndarray]) -> tuple[float, float]:
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


def outputs(engine: Engine, model: Any, batch: Any, what: str,
            compiled: bool = False) -> list[np.ndarray]:
    """``model``'s outputs on ``batch``: through the engine's compiled function of it when
    ``compiled`` (and the engine has one), else an eager call. Raises PruningError
    saying ``what`` does not run."""
    try:
        forward = engine.forward(model) if compiled else None
        return forward(batch) if forward is not None else engine.run_batch(model, batch)
    except Exception as error:  # noqa: BLE001 - any failure to run is the pruner's to report
        raise PruningError(f"{what} does not run ({type(error).__name__}: "
                           f"{str(error)[:300]}); nothing was returned.") from None


def verify_exactness(engine: Engine, loaded: Loaded, analysis: Analysis, plan: Plan,
                     pruned: Any, batch: Any, expected: list[np.ndarray],
                     compiled: bool = False) -> Check:
    """Compare the pruned model's outputs (``expected``, on ``batch``) with the original
    masked the same way (``compiled``: through the engine's compiled functions, which
    read the masked weights in place).

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
            return Check(detail=f"not applicable: every pruned group ({listing(inexact, 6)}) "
                                f"{why}; removing channels there changes results by design",
                         seconds=round(time.perf_counter() - started, 4))
        subject_plan = plan.only(exact)
        subject, failed = engine.rewrite(loaded, analysis, subject_plan)
        for key in failed:
            subject_plan.removal.pop(key, None)
        detail = (f"{len(subject_plan.removal)} of {len(plan.removal)} pruned groups, rewritten "
                  f"without {listing(inexact, 6)}, which {why}")
        expected = outputs(engine, subject, batch, "The pruned model")
    masked = engine.mask(loaded, analysis, subject_plan)
    actual = outputs(engine, masked, batch, "The masked original", compiled)
    if [a.shape for a in actual] != [e.shape for e in expected]:
        raise PruningError(f"Pruning changed the model's output shape ("
                           f"{[list(a.shape) for a in actual]} -> "
                           f"{[list(e.shape) for e in expected]}); nothing was returned.")
    worst_abs, worst_rel = difference(actual, expected)
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
        _, rel = difference([reference], [ours[name]])
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
        diff_abs, diff_rel = difference(expected, outputs(engine, model, batch,
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


def written_round_trip(written: Written) -> Check:
    """The round trip of a model that was loaded from its own saved file (the engine
    wrote the file first): every check ran on the file's model, so its outputs are the
    pruned model's by construction; the load is what it cost."""
    formats = ", ".join(sorted(Path(name).suffix.lstrip(".") for name in
                               written.artifacts.values() if name))
    return Check(passed=True, max_abs_diff=0.0, max_rel_diff=0.0, tolerance=TOLERANCE,
                 detail=f"loaded back: {formats}; the pruned model is this file as loaded "
                        "the way a user loads it, and the exactness check ran on it",
                 seconds=round(written.load_seconds, 4))


def check_exports(engine: Engine, pruned: Any, loaded: Loaded, job: PruneJob, batch: Any,
                  expected: list[np.ndarray]) -> dict[str, ExportCheck]:
    """Make each format in ``job.options["formats"]`` and run it in its runtime.

    A format that cannot be made, or (float formats) differs beyond the tolerance,
    is reported and its file removed; quantized formats report their difference.
    """
    checks = {}
    for fmt in job.options.get("formats") or ():
        started = time.perf_counter()
        name = None
        try:
            name = engine.export(pruned, loaded, job, fmt)
            path = os.path.join(job.output_dir, name)
            got = engine.run_exported(path, fmt, batch)
            diff_abs, diff_rel = difference(expected, got)
            quantized = "int8" in fmt
            passed = None if quantized else diff_rel <= TOLERANCE
            detail = (f"made in the sandbox, run in {engine.runtime_of(fmt)} on the verify "
                      f"batch" + ("; quantized weights, difference reported only"
                                  if quantized else ""))
            if passed is False:
                detail = (f"differs from the pruned model by {diff_abs:.3g} "
                          f"({diff_rel:.3g} of the output range); not shipped")
                os.remove(path)
                name = None
            checks[fmt] = ExportCheck(
                file=name, passed=passed, max_abs_diff=_finite(diff_abs),
                max_rel_diff=_finite(diff_rel), tolerance=None if quantized else TOLERANCE,
                size=os.path.getsize(path) if name else None, detail=detail,
                seconds=round(time.perf_counter() - started, 4))
        except Exception as error:  # noqa: BLE001 - one format failing must not fail the prune
            if name and os.path.exists(os.path.join(job.output_dir, name)):
                os.remove(os.path.join(job.output_dir, name))
            checks[fmt] = ExportCheck(
                passed=False, detail=f"could not be made: {type(error).__name__}: "
                                     f"{str(error).splitlines()[0][:300] if str(error) else ''}",
                seconds=round(time.perf_counter() - started, 4))
    return checks
