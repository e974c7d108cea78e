"""Accuracy kept: the metric on the user's data before and after, recovery, fine-tuning.

With a dataset, the job holds out a fifth of it (seeded) and reports the metric
(:mod:`.metric`) on that part only: before pruning, after, after *recovery* and after
each *fine-tuning* epoch. Recovery and fine-tuning learn from the other four
fifths, so no reported number is measured on data they fitted. Recovery (on by
default, ``recover=false`` turns it off) trains nothing: it refits, by least
squares, the layers that lost input channels so that their outputs match the
original's (He et al. 2017), keeping a refit only where it lowers that layer's
error on calibration samples it did not fit, then re-estimates BatchNorm
statistics, kept only if that brings the model's outputs closer to the
original's on those samples (after a good refit it often does not). An
evaluation that cannot run is reported as "not measured: <reason>"; the prune
still finishes.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgeai.pruning import progress
from edgeai.pruning.base import PruneJob
from edgeai.pruning.engine import Engine
from edgeai.pruning.metric import HIGHER_IS_BETTER, Data, NotMeasured, evaluate
from edgeai.pruning.report import Evaluation
from edgeai.pruning.structure import Analysis, Loaded, Plan

HELD_OUT = 0.2
MIN_SAMPLES = 10


class Accuracy:
    """The evaluation of one job: its data split and each stage's metric."""

    def __init__(self, engine: Engine, data: Data | None):
        self.engine = engine
        self.report: Evaluation | None = None
        self.calibration: Data | None = None
        self.held_out: Data | None = None
        self.seconds = 0.0
        if data is None:
            return
        if len(data) < MIN_SAMPLES:
            self.report = Evaluation(detail=f"not measured: the dataset has {len(data)} "
                                            f"samples; at least {MIN_SAMPLES} are needed")
            return
        self.calibration, self.held_out = data.split(HELD_OUT)
        self.report = Evaluation(
            samples=len(self.held_out), calibration_samples=len(self.calibration),
            detail=f"metric on {len(self.held_out)} held-out samples (a seeded fifth of "
                   f"yours); recovery and fine-tuning learn from the other "
                   f"{len(self.calibration)}")

    @property
    def active(self) -> bool:
        """Whether the metric can be measured (data given, and no failure so far)."""
        return self.held_out is not None

    def measure(self, model: Any, stage: str) -> float | None:
        """The metric of ``model`` on the held-out part, stored as ``stage``."""
        if not self.active or self.report is None:
            return None
        started = time.perf_counter()
        try:
            kind, value = evaluate(lambda x: self.engine.run_batch(model, x), self.held_out,
                                   self.engine.channel_axis)
        except NotMeasured as error:
            self.fail(f"not measured: {error}")
            return None
        except Exception as error:  # noqa: BLE001 - a metric never fails the prune
            self.fail(f"not measured: {type(error).__name__}: {str(error)[:200]}")
            return None
        finally:
            self.seconds += time.perf_counter() - started
        self.report.metric, self.report.higher_is_better = kind, HIGHER_IS_BETTER[kind]
        if stage != "epochs":
            setattr(self.report, stage, value)
        return value

    def fail(self, detail: str) -> None:
        """Stop measuring; the report says why."""
        if self.report is not None:
            self.report.detail = detail
        self.held_out = None

    def recover(self, pruned: Any, loaded: Loaded, analysis: Analysis, plan: Plan,
                job: PruneJob) -> Any:
        """Recovery (unless ``recover=false``), then its metric; returns the model."""
        if not self.active or not job.options.get("recover", True):
            return pruned
        started = time.perf_counter()
        try:
            pruned, summary = self._recover(pruned, loaded, analysis, plan)
        except Exception as error:  # noqa: BLE001 - recovery is an improvement, not the job
            if self.report is not None:
                self.report.recovery = {"failed": f"{type(error).__name__}: "
                                                  f"{str(error)[:200]}"}
            return pruned
        finally:
            spent = time.perf_counter() - started
            self.seconds += spent
        if self.report is not None:
            self.report.recovery = {**summary, "seconds": round(spent, 3)}
        self.measure(pruned, "after_recovery")
        return pruned

    def recovery_split(self) -> tuple[Data, Data]:
        """(fit, check): the calibration samples recovery fits on, and those it only
        checks its steps on (a search may choose on these: nothing is fitted to them,
        and the held-out fifth stays untouched for the report)."""
        assert self.calibration is not None
        return self.calibration.split(0.25, seed=1)

    def _recover(self, pruned: Any, loaded: Loaded, analysis: Analysis, plan: Plan,
                 ) -> tuple[Any, dict]:
        """Refit, then BatchNorm re-estimation; each step kept only where it brings the
        outputs closer to the original's on calibration samples it did not use. Where
        the engine can, the other order too (statistics measured first, the layers
        refit to them), and the better of the two on those samples."""
        fit, check = self.recovery_split()
        offered = type(self.engine).refit_measured is not Engine.refit_measured
        measured = self.engine.copy(pruned) if offered else None
        summary: dict = self.engine.refit(pruned, loaded, analysis, plan, fit, check)
        reference = [self.engine.run_batch(loaded.model, x) for x, _ in check.chunks()]
        candidate = self.engine.copy(pruned)
        count = self.engine.reestimate(candidate, fit)
        if count and self._score(candidate, check, reference) > \
                self._score(pruned, check, reference):
            pruned, summary["batchnorm"] = candidate, count
        else:
            summary["batchnorm"], summary["batchnorm_rejected"] = 0, count
        if count and measured is not None:
            first = self.engine.refit_measured(measured, loaded, analysis, plan, fit, check)
            if first is not None and self._score(measured, check, reference) > \
                    self._score(pruned, check, reference):
                return measured, {**first, "batchnorm": count, "statistics_first": True}
        return pruned, summary

    def _score(self, model: Any, data: Data, reference: list[list[Any]]) -> tuple[float, float]:
        """How good ``model`` is on calibration samples recovery did not fit: the metric
        (signed so that larger is better), then closeness to the original's outputs."""
        kind, value = evaluate(lambda x: self.engine.run_batch(model, x), data,
                               self.engine.channel_axis)
        return (value if HIGHER_IS_BETTER[kind] else -value,
                -self._distance(model, data, reference))

    def _distance(self, model: Any, data: Data, reference: list[list[Any]]) -> float:
        """Mean squared difference of ``model``'s outputs from ``reference`` on ``data``."""
        total = count = 0.0
        for (x, _), expected in zip(data.chunks(), reference, strict=True):
            for got, want in zip(self.engine.run_batch(model, x), expected, strict=True):
                total += float(np.sum((got.astype(np.float64) - want) ** 2))
                count += want.size
        return total / max(count, 1.0)

    def finetune(self, pruned: Any, job: PruneJob) -> Any:
        """``finetune_epochs`` epochs on the calibration part, each measured; stops
        early before the job's deadline. Returns the model."""
        epochs = int(job.options.get("finetune_epochs") or 0)
        if not self.active or epochs <= 0 or self.report is None:
            return pruned
        deadline = job.options.get("deadline")
        kind = self.report.metric
        for epoch in range(epochs):
            epoch_started = time.perf_counter()
            try:
                self.engine.train_epoch(pruned, self.calibration, kind, epoch)
            except Exception as error:  # noqa: BLE001 - fine-tuning is an improvement
                self.report.detail = (self.report.detail or "") + \
                    f"; fine-tuning stopped: {type(error).__name__}: {str(error)[:200]}"
                break
            finally:
                self.seconds += time.perf_counter() - epoch_started
            value = self.measure(pruned, "epochs")
            if value is None:
                break
            self.report.epochs.append(value)
            self.report.after_finetune = value
            progress.current().within((epoch + 1) / epochs)
            spent = time.perf_counter() - epoch_started
            if deadline and time.time() + 2 * spent > float(deadline):
                self.report.detail = (self.report.detail or "") + \
                    f"; fine-tuning stopped after {epoch + 1} epochs: the job's time limit"
                break
        return pruned

    def finish(self) -> Evaluation | None:
        """The evaluation for the report."""
        if self.report is not None:
            self.report.seconds = round(self.seconds, 3)
        return self.report
