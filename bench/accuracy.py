"""Accuracy kept, on scikit-learn's digits: both frameworks, through the real engines.

A small CNN per framework (the one tests/pruning/test_accuracy.py trains) learns
1200 digits; the other 597 go to the job (a fifth held out for the numbers).
Rows: baseline, pruned at 0.5 of the channels, after recovery, after 3 epochs of
fine-tuning, and the analysis's recommended plan against the uniform percent at
the same MACs target. Goals: recovery within 3 points of the baseline and
fine-tuning within 1; the plan at least as good as uniform at equal MACs.

``.venv/bin/python -m bench.accuracy`` prints the table on its own.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
for _name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
    os.environ.setdefault(_name, "1")


def rows(tmp: Path) -> list[dict]:
    from tests.pruning.test_accuracy import Digits

    results = []
    for framework in ("tensorflow", "pytorch"):
        trained = Digits(framework, tmp / framework)
        pruned = trained.engine().prune(trained.job(0.5, finetune_epochs=3)).report
        analysis = trained.engine().prune(trained.job(0.0, task="analyze", target={
            "metric": "macs", "keep": pruned["macs_ratio"]})).report["sensitivity"]
        evaluation = pruned["evaluation"]
        results.append({
            "framework": framework, "baseline": evaluation["before"],
            "pruned": evaluation["after_prune"], "recovered": evaluation["after_recovery"],
            "finetuned": evaluation["after_finetune"], "params": pruned["params_ratio"],
            "macs": pruned["macs_ratio"], "recovery_s": evaluation["recovery"]["seconds"],
            "plan": analysis["plan_result"], "uniform": analysis["uniform"],
            "analysis_s": analysis["seconds"]})
    return results


def table(results: list[dict]) -> str:
    """One line per framework; accuracies on the held-out fifth."""
    head = (f"{'framework':<11} {'base':>6} {'0.5':>6} {'recov':>6} {'ft x3':>6} "
            f"{'params':>6} {'MACs':>5}  {'plan / uniform at equal MACs':<34} goals")
    lines = [head, "-" * (len(head) + 20)]
    for r in results:
        recovered_ok = r["baseline"] - r["recovered"] <= 0.03
        tuned_ok = r["baseline"] - r["finetuned"] <= 0.01
        plan_ok = r["plan"]["metric"] >= r["uniform"]["metric"]
        compare = (f"{r['plan']['metric']:.3f} (MACs {r['plan']['cost']:.2f}) / "
                   f"{r['uniform']['metric']:.3f} ({r['uniform']['cost']:.2f})")
        goals = (f"recovery {'met' if recovered_ok else 'NOT met'}, fine-tune "
                 f"{'met' if tuned_ok else 'NOT met'}, plan {'met' if plan_ok else 'NOT met'}")
        lines.append(f"{r['framework']:<11} {r['baseline']:>6.3f} {r['pruned']:>6.3f} "
                     f"{r['recovered']:>6.3f} {r['finetuned']:>6.3f} {r['params']:>6.2f} "
                     f"{r['macs']:>5.2f}  {compare:<34} {goals}")
        lines.append(f"{'':<11} recovery {r['recovery_s']:.2f} s, analysis "
                     f"{r['analysis_s']:.1f} s")
    return "\n".join(lines)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="edgeai-bench-accuracy-") as tmp:
        for framework in ("tensorflow", "pytorch"):
            (Path(tmp) / framework).mkdir()
        results = rows(Path(tmp))
    print()
    print("Digits (held-out accuracy), pruned at 0.5 of the channels:")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
