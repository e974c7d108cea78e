"""Speed where it runs: rounding, cost targets, deploy formats and latency, per framework.

The same small network as the pipeline tests (conv 8 -> norm -> conv 16 -> pool -> dense
4), through each real engine.
"""
from __future__ import annotations

import numpy as np
import pytest

from edgeai.pruning import PruningError


def widths(result) -> dict[str, int]:
    return {row["name"]: row["channels_after"] for row in result.report["layers"]}


def test_round_to_keeps_multiples_and_stays_exact(framework):
    """At 0.4 the rule keeps 5 of 8 and 10 of 16; round_to=4 keeps 4 and 12 (the nearest
    multiples, halves up), and the exactness check still passes."""
    plain = framework.engine_class().prune(framework.job(0.4))
    assert widths(plain)[framework.conv] == 5 and widths(plain)["conv2"] == 10
    rounded = framework.engine_class().prune(framework.job(0.4, round_to=4))
    assert widths(rounded)[framework.conv] == 4 and widths(rounded)["conv2"] == 12
    assert rounded.report["round_to"] == 4
    assert rounded.report["verification"]["exactness"]["passed"] is True
    assert any("round_to=8" in warning for warning in plain.report["warnings"])


def test_round_to_never_keeps_fewer_than_one_multiple(framework):
    """At 0.9 the rule would keep 1 of 8: round_to=4 keeps 4; a group not larger than
    round_to stays whole, with a warning."""
    result = framework.engine_class().prune(framework.job(0.9, round_to=4))
    assert widths(result)[framework.conv] == 4 and widths(result)["conv2"] == 4
    result = framework.engine_class().prune(framework.job(0.5, round_to=8))
    rows = {row["name"]: row for row in result.report["layers"]}
    assert rows[framework.conv]["status"] == "unchanged"
    assert rows[framework.conv]["reason"] == "round_to=8 is not smaller than its 8 channels"
    assert rows["conv2"]["channels_after"] == 8
    assert any("round_to=8 is not smaller than 1 layers" in w for w in result.report["warnings"])


@pytest.mark.parametrize("metric, keep", [("macs", 0.5), ("params", 0.6)])
def test_a_cost_target_is_met_within_one_step(framework, metric, keep):
    """The searched percent keeps at most the target's fraction, and a percent one
    channel step lower would keep more than it."""
    result = framework.engine_class().prune(
        framework.job(0.0, target={"metric": metric, "keep": keep}))
    report = result.report
    reached = report[f"{metric}_ratio"]
    assert reached <= keep and report["target"]["reached"] == pytest.approx(reached, abs=1e-4)
    assert report["target"]["percent"] == report["percent"] > 0
    assert report["verification"]["exactness"]["passed"] is True
    lower = framework.engine_class().prune(framework.job(report["percent"] - 0.07))
    assert lower.report[f"{metric}_ratio"] > keep


def test_an_unreachable_target_fails_with_the_reason(framework):
    with pytest.raises(PruningError, match="The target cannot be met"):
        framework.engine_class().prune(framework.job(0.0, target={"metric": "params",
                                                                    "keep": 0.01}))


def test_every_deploy_format_runs_in_its_runtime_and_matches(framework):
    """Each format asked for is made, runs in its own runtime, and matches the pruned
    model (float32 within 1e-4; int8 reported); the file is listed for download."""
    formats = framework.engine_class.export_formats
    result = framework.engine_class().prune(framework.job(0.5, formats=list(formats)))
    report = result.report
    assert set(report["exports"]) == set(formats)
    for fmt, check in report["exports"].items():
        assert report["artifacts"][fmt] == check["file"] and check["size"] > 0
        if "int8" in fmt:
            assert check["passed"] is None and check["tolerance"] is None
            assert check["max_rel_diff"] < 0.05
        else:
            assert check["passed"] is True and check["max_rel_diff"] <= 1e-4, check


def test_an_export_that_fails_is_reported_and_the_prune_finishes(tmp_path):
    """A model with an op ONNX cannot express: the onnx format fails with the reason, the
    prune and its other files are fine."""
    from edgeai.pruning.torch_engine import TorchPruner
    from tests.pruning.conftest import Framework

    framework = Framework("pytorch", TorchPruner, "block.0", "block", tmp_path)
    result = TorchPruner().prune(framework.job(0.5, fft=True, formats=["onnx"]))
    check = result.report["exports"]["onnx"]
    assert check["passed"] is False and check["file"] is None
    assert "could not be made: UnsupportedOperatorError" in check["detail"]
    assert "fft_rfft" in check["detail"]
    assert result.report["artifacts"]["onnx"] is None
    assert result.report["verification"]["round_trip"]["passed"] is True


def test_latency_is_measured_where_the_model_will_run(framework):
    """measure (the default) times the original and the pruned model at batch 1 and the
    user's batch, in the runtime of each deploy format asked for (where the model will
    run); without formats in the framework's own, and in the one runtime= names."""
    formats = [f for f in framework.engine_class.export_formats if f in ("tflite", "onnx")]
    result = framework.engine_class().prune(framework.job(0.5, measure=True, batch_size=4,
                                                         formats=formats))
    speed = result.report["speed"]
    assert speed["threads"] >= 1 and speed["seconds"] > 0
    rows = {(row["runtime"], row["batch"]): row for row in speed["latencies"]}
    expected = {"tensorflow": {"tflite", "onnxruntime"},
                "pytorch": {"onnxruntime"}, "onnx": {"onnxruntime"}}[framework.name]
    assert {runtime for runtime, _ in rows} == expected
    own = framework.engine_class.timing_runtimes[0]
    plain = framework.engine_class().prune(framework.job(0.5, measure=True)).report["speed"]
    assert [row["runtime"] for row in plain["latencies"]] == [own]
    named = framework.engine_class().prune(framework.job(0.5, measure=True, formats=formats,
                                                        runtime=own)).report["speed"]
    assert [row["runtime"] for row in named["latencies"]] == [own]
    assert {batch for _, batch in rows} == {1, 4}
    for row in rows.values():
        assert row["before_ms"] > 0 and row["after_ms"] > 0 and row["runs"] >= 5
        assert row["ratio"] == pytest.approx(row["after_ms"] / row["before_ms"], rel=1e-2)


def test_measure_false_skips_the_timing(framework):
    result = framework.engine_class().prune(framework.job(0.5, measure=False))
    assert "speed" not in result.report


def test_ratios_are_reported(framework):
    report = framework.engine_class().prune(framework.job(0.5)).report
    for name in ("params", "macs", "file_size"):
        assert report[f"{name}_ratio"] == pytest.approx(
            report[f"{name}_after"] / report[f"{name}_before"], abs=1e-4)
    assert 0 < report["macs_ratio"] < 1 and np.isfinite(report["params_ratio"])
