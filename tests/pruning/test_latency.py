"""Pruning to a latency budget (target=latency:F), through the real engines.

A small CNN (a few milliseconds a forward pass) is searched in the framework's own
runtime and in a deploy runtime; a budget no model can meet, runtimes whose time
pruning cannot change or that jump about, a model too small to time and a runtime that
cannot run the model all end with the best plan found and a report that says what
happened. The machine is shared: the tests check what the search promises (it stops,
and never calls a plan within the budget that its own timing put above it), not
how fast a model runs here.
"""
from __future__ import annotations

import json
import random
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from edgeai.pruning import PruneJob
from edgeai.pruning.latency import MAX_MEASUREMENTS
from tests.pruning.conftest import Framework

CNN = textwrap.dedent("""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
            self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = F.relu(self.conv2(F.relu(self.conv1(x))))
            x = F.relu(self.conv3(F.max_pool2d(x, 2)))
            return self.fc(x.mean(dim=(2, 3)))
""")


def torch_cnn_job(folder: Path, **options) -> PruneJob:
    import torch

    if not (folder / "weights.pth").exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.py").write_text(CNN)
        namespace: dict = {}
        exec(compile(CNN, "model.py", "exec"), namespace)
        torch.manual_seed(0)
        torch.save(namespace["Net"]().state_dict(), folder / "weights.pth")
    out = folder / f"job-{uuid.uuid4().hex[:6]}" / "out"
    out.mkdir(parents=True)
    return PruneJob(framework="pytorch", percent=0.0, omitted=(),
                    inputs={"class_def": str(folder / "model.py"),
                            "weights": str(folder / "weights.pth")},
                    input_names={"class_def": "model.py", "weights": "weights.pth"},
                    output_dir=str(out), output_stem="tmplatency",
                    options={"input_size": [3, 32, 32], "model_name": "Net", "measure": True,
                             **options})


def latency(keep: float, **extra) -> dict:
    return {"target": {"metric": "latency", "keep": keep}, **extra}


def torch_engine():
    import torch

    from edgeai.pruning.torch_engine import TorchPruner

    torch.set_num_threads(1)
    return TorchPruner()


def check_the_promise(report: dict, keep: float) -> dict:
    """What every latency job promises, met or not."""
    target = report["target"]
    assert target["metric"] == "latency" and target["keep"] == keep
    assert target["measurements"] <= MAX_MEASUREMENTS
    if target["measured"]:
        assert target["met"] == (target["reached"] <= keep)
        low, high = target["interval"]
        assert low <= target["reached"] <= high
        assert target["within_noise"] == (target["met"] and high > keep)
    else:
        assert target["met"] is False and target["detail"].startswith("NOT measured")
    if not target["met"]:
        assert any(w.startswith(f"latency target {keep:g}: NOT") for w in report["warnings"])
    chosen = target["steps"][target["chosen_step"]]
    assert target["chosen_step"] > 0 and report["params_after"] < report["params_before"]
    if target["measured"]:
        assert chosen["measured"]["ratio"] == target["reached"]
    assert report["plan"] == {k: round(v, 4) for k, v in target["fractions"].items()}
    assert report["verification"]["exactness"]["passed"] is True
    assert report["verification"]["round_trip"]["passed"] is True
    return target


def test_a_latency_budget_is_searched_with_timings_in_torch(tmp_path):
    """Data-free steps along a path of plans; plans timed against the original in
    interleaved rounds; the least-pruned plan within the budget is shipped."""
    report = torch_engine().prune(torch_cnn_job(tmp_path / "cnn", **latency(0.6))).report
    target = check_the_promise(report, 0.6)
    assert target["measured"] and target["runtime"] == "torch" and target["batch"] == 1
    assert target["guided_by"].startswith("data-free")
    assert target["original_ms"] >= 1.0
    steps = target["steps"]
    assert steps[0]["group"] is None and all(s["group"] for s in steps[1:])
    estimates = [s["estimate"] for s in steps]
    assert estimates == sorted(estimates, reverse=True)  # every step saves time
    timed = [s for s in steps if "measured" in s]
    assert 1 <= len(timed) == target["measurements"]
    if target["met"]:  # every plan before the chosen one that was timed was too slow
        assert all(s["measured"]["ratio"] > 0.6 for s in timed
                   if s["step"] < target["chosen_step"])
    # The measure step reuses the search's set-up and times both models again.
    rows = report["speed"]["latencies"]
    assert [(r["runtime"], r["batch"]) for r in rows] == [("torch", 1)]
    assert rows[0]["before_ms"] > 0 and rows[0]["after_ms"] > 0


def test_an_unreachable_budget_returns_the_fastest_plan_and_says_so(tmp_path):
    """latency:0.01: the path runs to its end (every group at its limit), that plan is
    timed once, shipped, and reported as not met."""
    report = torch_engine().prune(torch_cnn_job(tmp_path / "cnn", **latency(0.01))).report
    target = check_the_promise(report, 0.01)
    assert target["met"] is False and target["measured"]
    assert target["detail"].startswith("NOT met: the fastest plan found runs at")
    assert "at its limit" in target["detail"]
    assert target["chosen_step"] == len(target["steps"]) - 1
    assert target["measurements"] == 1


class ClockedTorch:
    """The torch engine with a runtime whose time is not the model's: a fixed overhead
    (pruning cannot change it) or one that jumps about. The search must stop either way,
    and never call a plan within the budget that its timing put above it."""

    def __init__(self, kind: str):
        from edgeai.pruning.torch_engine import TorchPruner

        self.kind = kind
        rng = random.Random(0)

        class Clocked(TorchPruner):
            def timer(self, model, runtime, batch, loaded, threads, path=None):
                def forward():
                    delay = 0.002 if kind == "fixed" else rng.uniform(0.0005, 0.004)
                    end = time.perf_counter() + delay
                    while time.perf_counter() < end:
                        pass
                return forward

        self.engine = Clocked()


@pytest.mark.parametrize("kind", ["fixed", "jumpy"])
def test_the_search_stops_whatever_the_runtime_says(tmp_path, kind):
    report = ClockedTorch(kind).engine.prune(
        torch_cnn_job(tmp_path / "cnn", **latency(0.5, measure=False))).report
    target = check_the_promise(report, 0.5)
    assert target["measured"]
    if kind == "fixed":
        assert target["met"] is False and 0.8 < target["reached"] < 1.25


def test_a_model_too_small_to_time_gets_the_estimate_and_says_so(tmp_path):
    """The pipeline tests' network runs in well under a millisecond: not timed, the plan
    whose estimate meets the budget is shipped, and the report says why."""
    from edgeai.pruning.torch_engine import TorchPruner

    framework = Framework("pytorch", TorchPruner, "block.0", "block", tmp_path)
    report = torch_engine().prune(framework.job(0.0, **latency(0.5))).report
    target = check_the_promise(report, 0.5)
    assert target["measured"] is False and target["estimated_met"] is True
    assert target["reached"] <= 0.5 and target["original_ms"] < 1.0
    assert "under 1 ms, too short to time a pruned copy reliably" in target["detail"]


def test_a_runtime_that_cannot_run_the_model_gets_the_estimate_and_says_so(tmp_path):
    """An op ONNX cannot express, timed in onnxruntime: the reason, and the plan the
    estimate chose."""
    from edgeai.pruning.torch_engine import TorchPruner

    framework = Framework("pytorch", TorchPruner, "block.0", "block", tmp_path)
    report = torch_engine().prune(framework.job(0.0, fft=True, runtime="onnxruntime",
                                                **latency(0.5))).report
    target = check_the_promise(report, 0.5)
    assert target["runtime"] == "onnxruntime" and target["measured"] is False
    assert "cannot be timed in onnxruntime: UnsupportedOperatorError" in target["detail"]


def test_keras_in_tflite_times_each_plan_in_the_interpreter(tmp_path):
    """The deploy runtime asked for (formats=tflite) is where the budget is timed; the
    measure step reuses the converted original."""
    import keras

    from edgeai.pruning.keras_engine import KerasPruner

    keras.utils.set_random_seed(0)
    L = keras.layers
    inputs = keras.Input((48, 48, 3))
    x = L.Conv2D(32, 3, padding="same", activation="relu", name="c1")(inputs)
    x = L.Conv2D(64, 3, padding="same", activation="relu", name="c2")(x)
    x = L.Conv2D(64, 3, padding="same", activation="relu", name="c3")(L.MaxPooling2D()(x))
    model = keras.Model(inputs, L.Dense(10, name="fc")(L.GlobalAveragePooling2D()(x)))
    path = tmp_path / "cnn.keras"
    model.save(path)
    out = tmp_path / "out"
    out.mkdir()
    job = PruneJob(framework="tensorflow", percent=0.0, omitted=(), inputs={"model": str(path)},
                   input_names={"model": "cnn.keras"}, output_dir=str(out),
                   output_stem="tmplatency",
                   options={"formats": ["tflite"], "round_to": 8, **latency(0.6)})
    report = KerasPruner().prune(job).report
    target = check_the_promise(report, 0.6)
    assert target["runtime"] == "tflite" and target["measured"]
    pruned = [row["channels_after"] for row in report["layers"] if row["status"] == "pruned"]
    assert pruned and all(width % 8 == 0 for width in pruned)
    assert report["exports"]["tflite"]["passed"] is True
    assert [row["runtime"] for row in report["speed"]["latencies"]] == ["tflite"]


def test_an_onnx_model_is_searched_in_onnx_runtime(tmp_path):
    """An ONNX upload carries no code: its latency budget is timed in ONNX Runtime,
    the only runtime it has, and the plan is rewritten in its own graph."""
    import torch

    from edgeai.pruning.onnx_engine import OnnxPruner
    from tests.pruning.onnx_engine.models import export_torch

    namespace: dict = {}
    exec(compile(CNN, "model.py", "exec"), namespace)
    torch.manual_seed(0)
    path = tmp_path / "cnn.onnx"
    export_torch(namespace["Net"](), (3, 96, 96), path)  # ~5 ms in ORT
    out = tmp_path / "out"
    out.mkdir()
    job = PruneJob(framework="onnx", percent=0.0, omitted=(), inputs={"model": str(path)},
                   input_names={"model": "cnn.onnx"}, output_dir=str(out),
                   output_stem="tmplatency", options={"threads": 1, **latency(0.6)})
    report = OnnxPruner().prune(job).report
    target = check_the_promise(report, 0.6)
    assert target["runtime"] == "onnxruntime" and target["threads"] == 1
    assert target["measured"] and target["original_ms"] >= 1.0
    assert [row["runtime"] for row in report["speed"]["latencies"]] == ["onnxruntime"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The accuracy tests' PyTorch digits CNN, trained once for this module."""
    from tests.pruning.test_accuracy import Digits

    return Digits("pytorch", tmp_path_factory.mktemp("digits-latency"))


def test_with_data_each_step_is_chosen_on_the_metric(digits):
    """NetAdapt-style: each step takes the group with the best latency saved per metric
    lost on calibration samples recovery does not fit; the report has the path's curve
    next to uniform pruning's, and the held-out fifth is measured after recovery. (The
    digits model is too small to time: the estimate decides where the path stops.)"""
    report = digits.engine().prune(digits.job(0.0, **latency(0.5))).report
    target = check_the_promise(report, 0.5)
    assert target["guided_by"].startswith("your data: each step takes the group")
    assert target["candidates"]["evaluations"] >= len(target["steps"]) - 1
    assert all("metric" in step for step in target["steps"])
    curves = target["curves"]
    assert curves["search"][0] == curves["uniform"][0] == [1.0, target["candidates"]["baseline"]]
    assert len(curves["uniform"]) >= 3
    evaluation = report["evaluation"]
    assert evaluation["after_recovery"] is not None
    assert evaluation["before"] - evaluation["after_recovery"] < 0.1


def test_an_analysis_returns_the_latency_plan_that_a_prune_takes(digits):
    """tf_analyze/pt_analyze with target=latency:F: the search's plan is the download,
    compared with uniform pruning at the same latency on the held-out fifth; sent back as
    a prune's plan, it prunes the same channels."""
    job = digits.job(0.0, task="analyze", **latency(0.5))
    analysis = digits.engine().prune(job)
    result = analysis.report["sensitivity"]
    assert result["latency"] is True and result["plan"]
    assert result["plan_result"]["metric"] is not None and result["uniform"]["metric"] is not None
    assert 0 < result["uniform"]["percent"] < 1
    assert "Latency search for" in analysis.message
    plan_file = Path(job.output_dir) / analysis.artifact
    assert json.loads(plan_file.read_text()) == result["plan"]
    pruned = digits.engine().prune(digits.job(0.0, plan=plan_file)).report
    assert pruned["plan"] == result["plan"]
    fractions = analysis.report["target"]["fractions"]
    assert {key: round(value, 4) for key, value in fractions.items()} == result["plan"]


def test_an_engine_without_cost_terms_is_guided_by_real_rewrites(tmp_path):
    """An engine that joins without :meth:`cost_terms` (a new one starts so) still takes
    part: the estimate is then the MACs of each rewritten plan."""
    from edgeai.pruning.torch_engine import TorchPruner

    class Plain(TorchPruner):
        def cost_terms(self, loaded, analysis):
            return None

    framework = Framework("pytorch", TorchPruner, "block.0", "block", tmp_path)
    report = Plain().prune(framework.job(0.0, **latency(0.5))).report
    target = check_the_promise(report, 0.5)
    assert target["estimate"] == "MACs of each rewritten plan"
    assert target["reached"] <= 0.5 and report["macs_ratio"] == pytest.approx(
        target["steps"][target["chosen_step"]]["estimate"], abs=1e-3)


@pytest.mark.parametrize("n, low, high",
                         [(1, 1, 1), (5, 1, 5), (8, 2, 7), (11, 3, 9), (30, 11, 20)])
def test_the_median_interval_is_the_order_statistics_that_hold_it_90_percent(n, low, high):
    """[x_(j), x_(n+1-j)] holds the median with probability 1 - 2 P(Binomial(n, 1/2) < j):
    the widest j for which that is at least 90% (or the extremes when none is)."""
    from math import comb

    from edgeai.pruning.speed import median_interval

    values = [float(v) for v in range(n, 0, -1)]  # any order
    assert median_interval(values) == (low, high)
    if n >= 5:
        coverage = 1 - 2 * sum(comb(n, i) for i in range(low)) / 2 ** n
        tighter = 1 - 2 * sum(comb(n, i) for i in range(low + 1)) / 2 ** n
        assert coverage >= 0.9 and (tighter < 0.9 or low + 1 > n - low)


def test_an_onnx_analysis_returns_the_latency_plan_that_a_prune_takes(tmp_path):
    """onnx_analyze with target=latency:F: timed in ONNX Runtime, each step chosen on
    the data (labelled with the original's own classes), the plan is the download; sent
    back as a prune's plan, it prunes the same channels."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from edgeai.pruning.onnx_engine import OnnxPruner
    from tests.pruning.onnx_engine.models import export_torch

    namespace: dict = {}
    exec(compile(CNN, "model.py", "exec"), namespace)
    torch.manual_seed(0)
    path = tmp_path / "cnn.onnx"
    export_torch(namespace["Net"](), (3, 64, 64), path)
    x = np.random.default_rng(0).normal(size=(30, 3, 64, 64)).astype("float32")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.savez(tmp_path / "data.npz", x=x, y=logits.argmax(axis=1))

    def job(name: str, extra: dict, **options) -> PruneJob:
        out = tmp_path / name
        out.mkdir()
        inputs = {"model": str(path), "dataset": str(tmp_path / "data.npz"), **extra}
        return PruneJob(framework="onnx", percent=0.0, omitted=(), inputs=inputs,
                        input_names={role: Path(p).name for role, p in inputs.items()},
                        output_dir=str(out), output_stem="tmplatency",
                        options={"threads": 1, "measure": False, **options})

    analysis = OnnxPruner().prune(job("analysis", {}, task="analyze", **latency(0.6)))
    result = analysis.report["sensitivity"]
    assert result["latency"] is True and result["plan"]
    assert analysis.report["target"]["runtime"] == "onnxruntime"
    assert analysis.report["target"]["measured"] is True
    assert result["plan_result"]["metric"] is not None and result["uniform"]["metric"] is not None
    plan_file = tmp_path / "analysis" / analysis.artifact
    assert json.loads(plan_file.read_text()) == result["plan"]
    pruned = OnnxPruner().prune(job("prune", {"plan": str(plan_file)})).report
    assert pruned["plan"] == result["plan"]
    assert pruned["verification"]["exactness"]["passed"] is True
