"""Pruning to a latency budget where the model will run, re-timed here.

Keras ResNet50, MobileNetV2 and EfficientNetB0 (96x96x3, weights=None) and a
ResNet-18-style torch model (3x96x96), ``target=latency:0.5`` in TFLite (Keras) or ONNX
Runtime (torch), 1 thread, batch 1, through the real engines in this process, each with
a dataset: a synthetic task trained in a few minutes (sklearn's digits upscaled to
96x96, two epochs of Adam from random weights, then BatchNorm statistics measured on
the training digits; 1200 digits train it, 400 others go to the job).

Per row: the ratio the job reached; the ratio re-timed independently here (the job's
exported file against the original converted here, alternating runs, the median of 11
rounds' fastest-run ratios); the held-out metric after recovery; uniform pruning to the
same re-timed latency (its percent bisected with the same timing), pruned by a job with
the same data, and its held-out metric. Goals: re-timed <= 0.55; the search's metric at
least uniform's. Then the PyTorch digits recovery figure (goal: within 2 points), and
the points both engines lose after recovery over eight shuffles of the digits (one
held-out fifth is 119 digits: one split alone moves by 0.8 points a digit), for the
uniform 0.5 and for plan files pruning one group (or conv2 and fc1) at 0.5: where the
points go (the first convolution: 8 of its 16 filters over a one-channel 3x3 patch); and
for PyTorch two ceilings of recovery by refitting, by choices only a bench can make
(:func:`ceilings`).

``.venv/bin/python -m bench.latency [ResNet50 MobileNetV2 EfficientNetB0 torch]`` prints
the table on its own, for the rows named (default all; about an hour on two cores;
``recovery`` alone: only the digits figures, about five minutes).
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
for _name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
    os.environ.setdefault(_name, "1")

KERAS_MODELS = ("ResNet50", "MobileNetV2", "EfficientNetB0")
BUDGET = 0.5
SIDE = 96
TRAIN, JOB = 1200, 400


def images(channels_last: bool) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits as 96x96 three-channel images in [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    scale = SIDE // 8
    x = np.kron(data.images / 16.0, np.ones((1, scale, scale))).astype("float32")
    x = np.repeat(x[..., None], 3, axis=-1) if channels_last else np.repeat(x[:, None], 3, 1)
    return x, data.target.astype("int64")


EPOCHS = 2


def keras_task(name: str, folder: Path) -> tuple[Path, Path, float]:
    """The model trained on the synthetic task, its job dataset, its accuracy on it."""
    import keras

    from edgeai.pruning.keras_engine.recovery import reestimate_batchnorm
    from edgeai.pruning.metric import Data

    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(SIDE, SIDE, 3),
                                              classes=10)
    x, y = images(channels_last=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x[:TRAIN], y[:TRAIN], epochs=EPOCHS, batch_size=32, verbose=0)
    # Two epochs leave the running statistics far behind the weights (momentum 0.99).
    reestimate_batchnorm(model, Data(x[:TRAIN], y[:TRAIN]))
    path, data = folder / f"{name}.keras", folder / f"{name}.npz"
    model.save(path)
    job_x, job_y = x[TRAIN:TRAIN + JOB], y[TRAIN:TRAIN + JOB]
    np.savez(data, x=job_x, y=job_y)
    accuracy = float(np.mean(model.predict(job_x, batch_size=64, verbose=0).argmax(1) == job_y))
    return path, data, accuracy


def torch_task(folder: Path) -> tuple[dict[str, str], float]:
    """The ResNet-18-style model trained on the synthetic task; its job files."""
    import torch

    from bench.deploy import RESNET18
    from edgeai.pruning.metric import Data
    from edgeai.pruning.torch_engine.recovery import reestimate_batchnorm

    (folder / "model.py").write_text(RESNET18)
    namespace: dict = {}
    exec(compile(RESNET18, "model.py", "exec"), namespace)  # noqa: S102 - our own source
    torch.manual_seed(0)
    model = namespace["Net"]()
    x, y = images(channels_last=False)
    xs, ys = torch.as_tensor(x[:TRAIN]), torch.as_tensor(y[:TRAIN])
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(EPOCHS):
        model.train()
        order = torch.randperm(TRAIN)
        for start in range(0, TRAIN, 32):
            batch = order[start:start + 32]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xs[batch]), ys[batch]).backward()
            optimizer.step()
    model.eval()
    reestimate_batchnorm(model, Data(x[:TRAIN], y[:TRAIN]))
    with torch.no_grad():
        job_x = torch.as_tensor(x[TRAIN:TRAIN + JOB])
        accuracy = float((model(job_x).argmax(1).numpy() == y[TRAIN:TRAIN + JOB]).mean())
    torch.save(model.state_dict(), folder / "weights.pth")
    torch.save((job_x, torch.as_tensor(y[TRAIN:TRAIN + JOB])), folder / "data.pth")
    return {"class_def": str(folder / "model.py"), "weights": str(folder / "weights.pth"),
            "dataset": str(folder / "data.pth")}, accuracy


def retime(before: Callable[[], object], after: Callable[[], object], rounds: int = 11,
           pairs: int = 5) -> float:
    """The bench's own ratio: alternating runs, the fastest of each per round, the median
    of the rounds' ratios."""
    for fn in (before, after, before, after):
        fn()
    ratios = []
    for _ in range(rounds):
        fastest = [float("inf"), float("inf")]
        for _ in range(pairs):
            for index, fn in enumerate((before, after)):
                started = time.perf_counter()
                fn()
                fastest[index] = min(fastest[index], time.perf_counter() - started)
        ratios.append(fastest[1] / fastest[0])
    return statistics.median(ratios)


class Row:
    """One model: its engine, files, and how a model of it runs in the deploy runtime."""

    def __init__(self, name: str, framework: str, inputs: dict[str, str], options: dict,
                 accuracy: float, folder: Path):
        self.name, self.framework, self.inputs = name, framework, inputs
        self.options, self.accuracy, self.folder = options, accuracy, folder
        self.fmt = "tflite" if framework == "tensorflow" else "onnx"
        self.runtime = "tflite" if framework == "tensorflow" else "onnxruntime"
        self.engine = self._engine()
        job = self.job(0.0, {})
        self.loaded = self.engine.load(job, Path(job.output_dir).parent)
        self.analysis = self.engine.analyse(self.loaded)
        self.original = self.runner(self.loaded.model)

    def _engine(self) -> Any:
        if self.framework == "tensorflow":
            from edgeai.pruning.keras_engine import KerasPruner

            engine: Any = KerasPruner()
        else:
            from edgeai.pruning.torch_engine import TorchPruner

            engine = TorchPruner()
        engine.warm_up()
        return engine

    def job(self, percent: float, options: dict) -> Any:
        from edgeai.pruning import PruneJob

        out = Path(tempfile.mkdtemp(dir=self.folder)) / "out"
        out.mkdir()
        return PruneJob(framework=self.framework, percent=percent, omitted=(),
                        inputs=self.inputs, input_names={k: Path(v).name
                                                         for k, v in self.inputs.items()},
                        output_dir=str(out), output_stem="tmpbench",
                        options={"round_to": 8, "formats": [self.fmt], "measure": False,
                                 **self.options, **options})

    def runner(self, model: Any = None, path: str | None = None) -> Callable[[], object]:
        """The model (or exported file) set up in the deploy runtime, one thread, batch 1."""
        return self.engine.timer(model, self.runtime, 1, self.loaded, 1, path)

    def prune(self, percent: float, options: dict) -> tuple[dict, float]:
        """A job's report, and its exported file re-timed against the original."""
        job = self.job(percent, options)
        report = self.engine.prune(job).report
        exported = os.path.join(job.output_dir, report["artifacts"][self.fmt])
        return report, retime(self.original, self.runner(path=exported))

    def uniform_percent(self, ratio: float) -> float:
        """The uniform percent whose re-timed ratio is ``ratio`` (bisection on timings)."""
        from edgeai.pruning.plan import make_plan

        low, high = 0.0, 0.9
        for _ in range(6):
            middle = (low + high) / 2
            plan = make_plan(self.analysis, middle, (), self.engine.separator, 8)
            model, _ = self.engine.rewrite(self.loaded, self.analysis, plan)
            if retime(self.original, self.runner(model), rounds=7) > ratio:
                low = middle
            else:
                high = middle
        return round(high, 3)

    def measure(self) -> dict:
        started = time.perf_counter()
        target = {"target": {"metric": "latency", "keep": BUDGET}}
        report, retimed = self.prune(0.0, target)
        percent = self.uniform_percent(retimed)
        uniform, uniform_retimed = self.prune(percent, {})
        return {"model": self.name, "runtime": self.runtime, "original_accuracy": self.accuracy,
                "reached": report["target"]["reached"], "met": report["target"]["met"],
                "retimed": retimed, "metric": report["evaluation"]["after_recovery"],
                "guided_by": report["target"]["guided_by"].split(":")[0],
                "uniform_percent": percent, "uniform_retimed": uniform_retimed,
                "uniform_metric": uniform["evaluation"]["after_recovery"],
                "measurements": report["target"]["measurements"],
                "search_seconds": report["target"]["seconds"],
                "seconds": time.perf_counter() - started}


TORCH_ROW = "ResNet-18 style (torch)"


def rows(folder: Path, only: tuple[str, ...] = ()) -> list[dict]:
    """Every model's row, or those named in ``only`` ("torch" for the torch one); progress
    on stderr: a row takes minutes."""
    results = []
    for name in KERAS_MODELS:
        if only and name not in only:
            continue
        print(f"bench.latency: {name}: training the task", file=sys.stderr, flush=True)
        path, data, accuracy = keras_task(name, folder)
        print(f"bench.latency: {name}: accuracy {accuracy:.3f}, searching", file=sys.stderr,
              flush=True)
        results.append(Row(name, "tensorflow", {"model": str(path), "dataset": str(data)}, {},
                           accuracy, folder).measure())
        print(f"bench.latency: {results[-1]}", file=sys.stderr, flush=True)
    if only and "torch" not in only:
        return results
    print(f"bench.latency: {TORCH_ROW}: training the task", file=sys.stderr, flush=True)
    inputs, accuracy = torch_task(folder)
    results.append(Row(TORCH_ROW, "pytorch", inputs,
                       {"input_size": [3, SIDE, SIDE], "model_name": "Net"}, accuracy,
                       folder).measure())
    print(f"bench.latency: {results[-1]}", file=sys.stderr, flush=True)
    return results


SPLITS = 8


GROUPS = (("conv1",), ("conv2",), ("fc1",), ("conv2", "fc1"))


def recovery_over_splits(folder: Path, splits: int = SPLITS,
                         ) -> dict[str, dict[str, list[dict]]]:
    """Each framework's digits CNN pruned at 0.5 over ``splits`` shuffles of the digits
    (split 0: the digits as scikit-learn ships them; each trains its own model; one
    held-out fifth of a few hundred digits moves by 0.8 points a digit, so one split
    alone says little): the evaluation of each job, before and after recovery — under
    "all" for the uniform 0.5, and under each of ``GROUPS`` for a plan file pruning only
    those groups at 0.5 (where the points go)."""
    import json

    from tests.pruning.test_accuracy import Digits

    evaluations: dict[str, dict[str, list[dict]]] = {"pytorch": {}, "tensorflow": {}}
    for framework, done in evaluations.items():
        for order in range(splits):
            split = folder / f"{framework}-{order}"
            split.mkdir()
            trained = Digits(framework, split, order=order)
            done.setdefault("all", []).append(
                trained.engine().prune(trained.job(0.5)).report["evaluation"])
            for groups in GROUPS:
                plan = split / f"plan-{'-'.join(groups)}.json"
                plan.write_text(json.dumps(dict.fromkeys(groups, 0.5)))
                done.setdefault(" + ".join(groups), []).append(
                    trained.engine().prune(trained.job(0.0, plan=plan)).report["evaluation"])
            if framework == "pytorch":
                for name, evaluation in ceilings(trained).items():
                    done.setdefault(name, []).append(evaluation)
    return evaluations


def ceilings(trained: Any) -> dict[str, dict]:
    """Two looks at what recovery by refitting could reach on one split at 0.5, each by a
    choice the job cannot make (it never looks at its held-out fifth): "best of three" —
    of the models recovery builds (refit; refit then statistics; statistics first), the
    one best on the held-out fifth; "held-out fitted" — recovery fitting on its samples
    and the held-out fifth too. The real pipeline, with its Accuracy subclassed."""
    from unittest import mock

    from edgeai.pruning import accuracy, pipeline
    from edgeai.pruning.metric import Data, evaluate

    seen: list[float] = []

    class BestOfThree(accuracy.Accuracy):
        def _score(self, model: Any, data: Data, reference: list) -> tuple[float, float]:
            assert self.held_out is not None
            seen.append(evaluate(lambda x: self.engine.run_batch(model, x), self.held_out,
                                 self.engine.channel_axis)[1])
            return super()._score(model, data, reference)

    class HeldOutFitted(accuracy.Accuracy):
        def recovery_split(self) -> tuple[Data, Data]:
            fit, check = super().recovery_split()
            assert self.held_out is not None
            return Data(np.concatenate([fit.x, self.held_out.x]),
                        np.concatenate([fit.y, self.held_out.y])), check

    found = {}
    for name, kind in (("best of three", BestOfThree), ("held-out fitted", HeldOutFitted)):
        with mock.patch.object(pipeline, "Accuracy", kind):
            found[name] = trained.engine().prune(trained.job(0.5)).report["evaluation"]
    found["best of three"]["after_recovery"] = max(seen)
    return found


def points_lost(evaluation: dict) -> float:
    """Held-out points lost after recovery (no training)."""
    return round((evaluation["before"] - evaluation["after_recovery"]) * 100, 1)


def table(results: list[dict]) -> str:
    """One line per model."""
    head = (f"{'model':<24} {'runtime':<11} {'reached':>7} {'re-timed':>8} {'acc orig':>8} "
            f"{'search':>6} {'uniform (pct, re-timed)':>24}  goals (re-timed <= 0.55, "
            "search >= uniform)")
    lines = [head, "-" * len(head)]
    for r in results:
        ok_time = r["retimed"] <= 0.55
        ok_metric = r["metric"] >= r["uniform_metric"]
        lines.append(
            f"{r['model']:<24} {r['runtime']:<11} {r['reached']:>7.3f} {r['retimed']:>8.3f} "
            f"{r['original_accuracy']:>8.3f} {r['metric']:>6.3f} "
            f"{r['uniform_metric']:>6.3f} ({r['uniform_percent']:.3f}, "
            f"{r['uniform_retimed']:.3f})  {'met' if ok_time else 'NOT met'}, "
            f"{'met' if ok_metric else 'NOT met'}")
        lines.append(f"{'':<24} guided by {r['guided_by']}; {r['measurements']} plans timed; "
                     f"search {r['search_seconds']:.0f} s, row {r['seconds']:.0f} s")
    return "\n".join(lines)


def main(only: tuple[str, ...] = ()) -> int:
    """Print the table (``only``: some rows, e.g. ``("MobileNetV2", "torch")``)."""
    with tempfile.TemporaryDirectory(prefix="edgeai-bench-latency-") as tmp:
        results = rows(Path(tmp), only)
        (Path(tmp) / "splits").mkdir()
        splits = recovery_over_splits(Path(tmp) / "splits")
    if results:
        print()
        print(f"target=latency:{BUDGET} at batch 1, one thread, with a dataset (held-out "
              "accuracy after recovery):")
        print(table(results))
    digits = splits["pytorch"]["all"][0]
    gap = digits["before"] - digits["after_recovery"]
    order = "statistics first" if digits["recovery"].get("statistics_first") else "refit first"
    print(f"\nPyTorch digits CNN at 0.5: {digits['before']:.3f} -> pruned "
          f"{digits['after_prune']:.3f} -> recovered {digits['after_recovery']:.3f} "
          f"({order}); {gap * 100:.1f} points lost, goal <= 2: "
          f"{'met' if gap <= 0.02 else 'NOT met'}")
    print(f"Over {SPLITS} shuffles of the digits (split 0 is the one above), points lost after "
          "recovery at 0.5 — all groups; a plan file pruning only the groups named; for "
          "PyTorch, two ceilings by choices the job cannot make (see ceilings()):")
    for framework, by_groups in splits.items():
        for groups, evaluations in by_groups.items():
            drops = [points_lost(evaluation) for evaluation in evaluations]
            print(f"  {framework:<10} {groups:<15} mean {statistics.mean(drops):4.1f}, median "
                  f"{statistics.median(drops):4.1f}  ({', '.join(f'{d:.1f}' for d in drops)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(tuple(sys.argv[1:])))
