"""Accuracy kept for ONNX models, on real data: scikit-learn's digits.

The shared accuracy tests' small CNN is trained in torch (seeded, a few seconds),
exported with torch.onnx.export (BatchNorm folded into the convolutions, as exporters
do), and pruned with the held-back digits as an .npz keyed by the model's input name.
Recovery (a least-squares refit, no training) wins back what pruning cost; an analysis
recommends a per-group plan that a prune then takes; datasets that do not fit are
refused, saying what to send.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeai.pruning import PruningError, UnsafeInputError
from tests.pruning.onnx_engine.models import export_torch
from tests.pruning.test_accuracy import TORCH_DIGITS, Digits


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory):
    """(model.onnx, digits.npz keyed by the input name, the held-back data)."""
    folder = tmp_path_factory.mktemp("digits-onnx")
    trained = Digits("pytorch", folder)
    namespace: dict = {}
    exec(compile(TORCH_DIGITS, "model.py", "exec"), namespace)
    model = namespace["Net"]()
    model.load_state_dict(torch.load(folder / "weights.pth", weights_only=True))
    path = export_torch(model, (1, 8, 8), folder / "digits.onnx")
    x, y = trained.data
    np.savez(folder / "digits.npz", input=x[:, None], y=y)
    return path, folder / "digits.npz", (x[:, None], y)


def test_recovery_wins_back_the_accuracy(digits_onnx, prune_onnx):
    """Held-out top-1: high before; pruning at 0.5 costs a lot; the refit of the layers
    that lost inputs wins most of it back, and the shipped file is the recovered model."""
    path, data, (x, y) = digits_onnx
    result, out = prune_onnx(path, 0.5, inputs={"dataset": data})
    evaluation = result.report["evaluation"]
    assert evaluation["metric"] == "top1_accuracy"
    assert evaluation["samples"] == 119 and evaluation["calibration_samples"] == 478
    assert evaluation["before"] >= 0.85
    assert evaluation["after_prune"] < evaluation["before"] - 0.1
    assert evaluation["after_recovery"] > evaluation["after_prune"] + 0.1
    assert set(evaluation["recovery"]["refit"]) >= {"/conv2/Conv", "/fc1/Gemm"}
    assert result.report["accuracy_after"] == evaluation["after_recovery"]
    assert result.report["verification"]["round_trip"]["passed"] is True
    from tests.pruning.onnx_engine.conftest import run_onnx

    (scores,) = run_onnx(out / result.artifact, x.astype(np.float32))
    assert (scores.argmax(1) == y).mean() > evaluation["after_prune"]


def test_recover_false_ships_the_model_as_rewritten(digits_onnx, prune_onnx):
    path, data, _ = digits_onnx
    result, _ = prune_onnx(path, 0.5, inputs={"dataset": data}, recover=False)
    evaluation = result.report["evaluation"]
    assert evaluation["after_recovery"] is None and evaluation["recovery"] is None
    assert result.report["accuracy_after"] == evaluation["after_prune"]


def test_an_analysis_recommends_a_plan_that_a_prune_takes(digits_onnx, prune_onnx, tmp_path):
    """onnx_analyze: each group's sensitivity at 0.1..0.9 and a plan for macs:0.6; sent
    back as the prune's plan file, the prune takes exactly those ratios."""
    path, _, (x, y) = digits_onnx
    small = tmp_path / "small.npz"
    np.savez(small, x=x[:200], y=y[:200])  # x: the model has one input
    analysis, out = prune_onnx(path, 0.0, inputs={"dataset": small}, task="analyze",
                               target={"metric": "macs", "keep": 0.6})
    result = analysis.report["sensitivity"]
    assert {group["group"] for group in result["groups"]} >= {"/conv2/Conv", "/fc1/Gemm"}
    for group in result["groups"]:
        assert len(group["metric"]) == 9 and group["cost"][0] > group["cost"][-1]
    assert result["plan_result"]["cost"] <= 0.6
    plan_file = out / analysis.artifact
    assert json.loads(plan_file.read_text()) == result["plan"]
    pruned, _ = prune_onnx(path, 0.0, inputs={"dataset": small, "plan": plan_file})
    assert pruned.report["plan"] == result["plan"]
    assert pruned.report["macs_ratio"] == pytest.approx(result["plan_result"]["cost"], abs=1e-3)


@pytest.mark.parametrize("content, error, message", [
    ({"input": np.array([object(), object()], dtype=object), "y": np.zeros(2)},
     UnsafeInputError, "Python objects"),
    ({"input": np.zeros((4, 1, 9, 9), np.float32), "y": np.zeros(4, np.int64)}, PruningError,
     "the model's input 'input' takes [1, 8, 8]"),
    ({"image": np.zeros((4, 1, 8, 8), np.float32), "y": np.zeros(4)}, PruningError,
     "has no array 'x' (it holds image, y)"),
    ({"input": np.zeros((4, 1, 8, 8), np.float32)}, PruningError, "has no array 'y'"),
    ({"x": np.zeros((4, 1, 8, 8), np.float32), "y": np.zeros(3)}, PruningError,
     "x has 4 samples but y has 3"),
])
def test_a_bad_npz_is_refused(digits_onnx, prune_onnx, tmp_path, content, error, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **content, allow_pickle=True)
    with pytest.raises(error) as caught:
        prune_onnx(digits_onnx[0], 0.5, inputs={"dataset": path})
    assert message in str(caught.value)
    assert "named after it ('input'; or x)" in str(caught.value)

