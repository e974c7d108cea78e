"""The pipeline's common steps, written once and run for each framework.

Each framework brings the same small network (conv -> norm -> conv -> pool -> dense),
saved as a user saves it; the tests run the real engine's pipeline on it: the
per-job verification, a deliberately corrupted rewrite, the omitted-name check
with its suggestion, the nothing-prunable message, a container omitted, and a
group the mask cannot reproduce (LayerNorm).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgeai.pruning import PruningError


def test_every_job_reports_exactness_and_round_trip(framework):
    """A finished job's report proves its model: masked original vs pruned, and the saved
    files loaded back vs pruned, both within tolerance with their differences given."""
    result = framework.engine_class().prune(framework.job(0.5))
    checks = result.report["verification"]
    for name in ("exactness", "round_trip"):
        check = checks[name]
        assert check["passed"] is True, check
        assert 0 <= check["max_rel_diff"] <= check["tolerance"] == 1e-4
        assert math.isfinite(check["max_abs_diff"]) and check["seconds"] >= 0
    assert checks["exactness"]["detail"].endswith("every pruned group")
    assert checks["round_trip"]["detail"].startswith("loaded back: ")
    widths = {row["name"]: row["channels_after"] for row in result.report["layers"]}
    assert widths[framework.conv] == 4


def test_a_corrupted_rewrite_fails_the_job_and_names_the_layer(framework):
    """Two kept filters of conv2 swapped after the rewrite: the job fails instead of
    shipping a wrong model, and the message names conv2 as the first layer that differs."""
    job = framework.job(0.5)
    with pytest.raises(PruningError) as caught:
        framework.corrupting_engine().prune(job)
    message = str(caught.value)
    assert message.startswith("The pruned model does not match the original with the "
                              "removed channels masked")
    assert "first layer that differs: conv2" in message
    assert list(Path(job.output_dir).iterdir()) == []  # nothing was saved


def test_the_check_would_pass_without_the_corruption(framework):
    """Control for the test above: the same job with the real engine passes."""
    result = framework.engine_class().prune(framework.job(0.5))
    assert result.report["verification"]["exactness"]["passed"] is True


def test_unknown_omitted_name_is_refused_with_a_suggestion(framework):
    """A misspelt layer fails the job, suggests the closest name, lists layers with channels."""
    with pytest.raises(PruningError) as caught:
        framework.engine_class().prune(framework.job(0.5, omitted=("conv", "fcc")))
    message = str(caught.value)
    assert message.startswith("ommitted names layers the model does not have: conv")
    assert "fcc (did you mean fc?)" in message
    assert f"Layers with channels: {framework.conv}, conv2, fc." in message


def test_omitting_a_container_keeps_the_layers_inside(framework):
    """The container's layers keep their channels; the others are pruned as usual."""
    result = framework.engine_class().prune(framework.job(0.5, omitted=(framework.container,)))
    rows = {row["name"]: row for row in result.report["layers"]}
    assert rows[framework.conv]["status"] == "omitted"
    assert rows[framework.conv]["channels_after"] == 8
    assert rows["conv2"]["status"] == "pruned" and rows["conv2"]["channels_after"] == 8
    assert rows["fc"]["status"] == "output"


def test_nothing_prunable_says_why_for_every_layer(framework):
    """At a percent that removes no channel, the job fails with each layer's reason."""
    with pytest.raises(PruningError) as caught:
        framework.engine_class().prune(framework.job(0.01))
    message = str(caught.value)
    assert message.startswith("Nothing prunable in this model at this percent: ")
    assert "conv2: percent=0.01 removes none of its 16 channels" in message
    assert "fc: produces a model output" in message


def test_a_layernorm_group_is_checked_without_it(framework):
    """conv2's channels reach a LayerNorm (whose statistics change when channels go): the
    exactness check runs on a second rewrite without that group, and says so."""
    result = framework.engine_class().prune(framework.job(0.5, layer_norm=True))
    check = result.report["verification"]["exactness"]
    assert check["passed"] is True
    assert "1 of 2 pruned groups" in check["detail"] and "LayerNorm" in check["detail"]
    rows = {row["name"]: row for row in result.report["layers"]}
    assert rows["conv2"]["status"] == "pruned"


def test_percent_zero_changes_nothing_and_still_verifies(framework):
    result = framework.engine_class().prune(framework.job(0.0))
    assert result.report["params_after"] == result.report["params_before"]
    assert result.report["verification"]["exactness"]["max_abs_diff"] == 0.0
    assert np.isfinite(result.report["verification"]["round_trip"]["max_abs_diff"])
