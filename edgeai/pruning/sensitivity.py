"""Per-group sensitivity, and a per-group plan that meets a cost target (Li et al. 2017).

(A latency target is searched by :mod:`.latency` instead: timed, step by step.)

Layers differ in how much they can lose. For each prunable channel group, the
group alone is pruned at 0.1 ... 0.9, recovered as a shipped model is (see
:mod:`.accuracy`), and measured on the held-out data; the MACs/params it saves are
recorded. (Li et al. measure the raw effect; here the raw effect of pruning half of
almost any group is near chance on small data, and says nothing of what recovery
wins back.) The plan then starts from nothing and, step by step, raises the ratio
of the group whose next step costs the least metric per unit of cost saved, until
the cost target is predicted to be met; it is checked with a real rewrite (stepped
further until it really meets the target, then stepped back where the target
allows). The plan and the uniform percent at the plan's own cost are measured
alike, so the report shows plan against uniform at equal cost on the same data.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from edgeai.pruning.base import PruneJob, PruningError
from edgeai.pruning.engine import Engine
from edgeai.pruning.metric import HIGHER_IS_BETTER, NotMeasured, evaluate
from edgeai.pruning.plan import make_plan, search_percent
from edgeai.pruning.report import JobReport
from edgeai.pruning.structure import Analysis, Loaded

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MAX_PLAN_ROUNDS = 40


class Sensitivity:
    """Measures groups of one model on held-out data (see the module docstring)."""

    def __init__(self, engine: Engine, loaded: Loaded, analysis: Analysis, job: PruneJob,
                 accuracy: Any, report: JobReport):
        self.engine, self.loaded, self.analysis, self.job = engine, loaded, analysis, job
        self.accuracy, self.held_out, self.report = accuracy, accuracy.held_out, report
        self.round_to = report.round_to
        self.target = job.options.get("target") or {"metric": "macs", "keep": 0.5}
        self.index = 0 if self.target["metric"] == "params" else 1
        self.before = (report.params_before, report.macs_before)[self.index] or 1
        self.deadline = job.options.get("deadline")

    def metric(self, model: Any) -> float:
        _, value = evaluate(lambda x: self.engine.run_batch(model, x), self.held_out,
                            self.engine.channel_axis)
        return value

    def prune(self, ratios: dict[str, float] | None, percent: float = 0.0,
              recover: bool = False) -> tuple[float, float]:
        """(cost fraction, metric) of the model pruned at ``ratios`` (or ``percent``),
        as rewritten or after recovery."""
        plan = make_plan(self.analysis, percent, self.job.omitted, self.engine.separator,
                         self.round_to, ratios)
        if not plan.removal:
            return 1.0, self.baseline
        pruned, _ = self.engine.rewrite(self.loaded, self.analysis, plan)
        cost = self.engine.measure(pruned, self.loaded)[self.index] / self.before
        if recover:
            pruned, _ = self.accuracy._recover(pruned, self.loaded, self.analysis, plan)
        return cost, self.metric(pruned)

    def out_of_time(self) -> bool:
        return bool(self.deadline) and time.time() > float(self.deadline) - 60

    def run(self) -> dict[str, Any]:
        """The sensitivity table, the plan, and plan against uniform."""
        started = time.perf_counter()
        self.baseline = self.metric(self.loaded.model)
        higher = HIGHER_IS_BETTER[self.report.evaluation.metric] \
            if self.report.evaluation and self.report.evaluation.metric else True
        prunable = [g for g in self.analysis.groups
                    if make_plan(self.analysis, 0.5, self.job.omitted, self.engine.separator,
                                 self.round_to, {g.key: 0.5}).removal]
        table, complete = {}, True
        for group in prunable:
            rows = {}
            for ratio in RATIOS:
                if self.out_of_time():
                    complete = False
                    break
                rows[ratio] = self.prune({group.key: ratio}, recover=True)
            table[group.key] = rows
        plan, predicted = self.plan(table, higher)
        plan_cost, plan_metric = self.prune(plan, recover=True)
        # Uniform at the plan's own cost (its 0.1 steps rarely land on the target
        # exactly): the comparison is at equal cost.
        percent, uniform_cost, _ = search_percent(lambda p: self.prune(None, p)[0],
                                                  max(plan_cost, 1e-3))
        _, uniform_metric = self.prune(None, percent, recover=True)
        return {
            "metric": self.report.evaluation.metric if self.report.evaluation else None,
            "higher_is_better": higher, "baseline": self.baseline, "target": self.target,
            "ratios": list(RATIOS), "complete": complete,
            "groups": [{"group": key, "members": next(g.members for g in prunable
                                                      if g.key == key),
                        "metric": [round(rows[r][1], 6) for r in RATIOS if r in rows],
                        "cost": [round(rows[r][0], 4) for r in RATIOS if r in rows]}
                       for key, rows in table.items()],
            "plan": plan,
            "plan_result": {"cost": round(plan_cost, 4), "metric": plan_metric,
                            "predicted_metric": round(predicted, 6)},
            "uniform": {"percent": percent, "cost": round(uniform_cost, 4),
                        "metric": uniform_metric},
            "seconds": round(time.perf_counter() - started, 3),
        }

    def plan(self, table: dict[str, dict[float, tuple[float, float]]],
             higher: bool) -> tuple[dict[str, float], float]:
        """Greedy per-group ratios (see the module docstring); (plan, predicted metric)."""
        sign = 1.0 if higher else -1.0
        ratios = dict.fromkeys(table, 0.0)
        keep = float(self.target["keep"])

        def loss(key: str, ratio: float) -> float:
            return 0.0 if ratio == 0 else sign * (self.baseline - table[key][ratio][1])

        def saved(key: str, ratio: float) -> float:
            return 0.0 if ratio == 0 else 1.0 - table[key][ratio][0]

        def predicted_cost() -> float:
            return 1.0 - sum(saved(k, r) for k, r in ratios.items())

        for _ in range(MAX_PLAN_ROUNDS):
            while predicted_cost() > keep:
                step = self._best_step(table, ratios, loss, saved)
                if step is None:
                    break
                ratios[step[0]] = step[1]
            chosen = {k: r for k, r in ratios.items() if r > 0}
            cost, _ = self.prune(chosen) if chosen else (1.0, self.baseline)
            if cost <= keep:
                break
            step = self._best_step(table, ratios, loss, saved)
            if step is None:
                break
            ratios[step[0]] = step[1]
        chosen = self._back_off({k: r for k, r in ratios.items() if r > 0}, table, loss, keep)
        predicted = self.baseline - sign * sum(loss(k, r) for k, r in chosen.items())
        return chosen, predicted

    def _back_off(self, chosen: dict[str, float], table: dict, loss: Callable[[str, float],
                  float], keep: float) -> dict[str, float]:
        """Steps of 0.1 overshoot the target: give back, costliest loss first, every step
        the target can spare (checked with real rewrites)."""
        improved = True
        while improved and not self.out_of_time():
            improved = False
            for key in sorted(chosen, key=lambda k: -loss(k, chosen[k])):
                lower = [r for r in table[key] if r < chosen[key]]
                trial = dict(chosen)
                if lower:
                    trial[key] = max(lower)
                else:
                    del trial[key]
                if trial and self.prune(trial)[0] <= keep:
                    chosen, improved = trial, True
                    break
        return chosen

    @staticmethod
    def _best_step(table: dict, ratios: dict[str, float],
                   loss: Callable[[str, float], float],
                   saved: Callable[[str, float], float]) -> tuple[str, float] | None:
        best, best_price = None, None
        for key, ratio in ratios.items():
            larger = [r for r in table[key] if r > ratio]
            if not larger:
                continue
            nxt = min(larger)
            gain = saved(key, nxt) - saved(key, ratio)
            price = (loss(key, nxt) - loss(key, ratio)) / max(gain, 1e-9)
            if best_price is None or price < best_price:
                best, best_price = (key, nxt), price
        return best


def analyse_job(engine: Engine, loaded: Loaded, analysis: Analysis, job: PruneJob,
                accuracy: Any, report: JobReport) -> str:
    """Run the sensitivity analysis; write the plan as ``<stem>.plan.json`` (the job's
    artifact, to send back as a prune's ``plan``); return its file name."""
    if accuracy.held_out is None:
        raise PruningError("An analysis needs a dataset with labels the model's output can "
                           "be measured against: " + ((report.evaluation.detail or "")
                                                      if report.evaluation else "none given."))
    try:
        if (job.options.get("target") or {}).get("metric") == "latency":
            from edgeai.pruning.latency import analyse_latency

            result = analyse_latency(engine, loaded, analysis, job, report, accuracy)
        else:
            result = Sensitivity(engine, loaded, analysis, job, accuracy, report).run()
    except NotMeasured as error:
        raise PruningError(f"The analysis cannot measure this model: {error}") from None
    report.sensitivity = result
    name = job.output_stem + ".plan.json"
    with open(os.path.join(job.output_dir, name), "w") as handle:
        json.dump(result["plan"], handle, indent=1, sort_keys=True)
    return name
