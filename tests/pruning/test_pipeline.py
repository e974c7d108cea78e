"""The pipeline's common steps, written once and run for each framework.

Each framework brings the same small network (conv -> norm -> conv -> pool -> dense),
saved as a user saves it; the tests run the real engine's pipeline on it: the
per-job verification, a deliberately corrupted rewrite, the omitted-name check
with its suggestion, the nothing-prunable message, a container omitted, and a
group the mask cannot reproduce (LayerNorm).
"""
from __future__ import annotations

import math
import os
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgeai.pruning import PruneJob, PruningError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TORCH_NET = """
import torch
import torch.nn as nn
import torch.nn.functional as F

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.norm = NORM
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.conv2(self.block(x)))
        x = self.norm(x.mean(dim=(2, 3)))
        return self.fc(x)
"""


@dataclass
class Framework:
    """How one framework builds the network, names its layers, and corrupts a rewrite."""

    name: str
    engine_class: type
    conv: str          # the first convolution's name in the report
    container: str     # a container holding that convolution
    tmp: Path

    def job(self, percent: float, omitted=(), layer_norm: bool = False) -> PruneJob:
        out = self.tmp / f"job-{uuid.uuid4().hex[:6]}" / "out"
        out.mkdir(parents=True)
        inputs, names, options = self.files(layer_norm)
        return PruneJob(framework=self.name, percent=percent, omitted=tuple(omitted),
                        inputs=inputs, input_names=names, output_dir=str(out),
                        output_stem="tmppipe0001", options=options)

    def files(self, layer_norm: bool):
        if self.name == "tensorflow":
            import keras

            keras.utils.set_random_seed(0)
            L = keras.layers
            block = keras.Sequential([keras.Input((10, 10, 3)), L.Conv2D(8, 3, name="conv1"),
                                      L.BatchNormalization(), L.ReLU()], name="block")
            inputs = keras.Input((10, 10, 3))
            x = L.Conv2D(16, 3, activation="relu", name="conv2")(block(inputs))
            x = L.GlobalAveragePooling2D()(x)
            x = L.LayerNormalization(name="norm")(x) if layer_norm else x
            model = keras.Model(inputs, L.Dense(4, name="fc")(x))
            path = self.tmp / f"net-{uuid.uuid4().hex[:6]}.keras"
            model.save(path)
            return {"model": str(path)}, {"model": "net.keras"}, {}
        import torch

        folder = self.tmp / f"user-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        source = TORCH_NET.replace("NORM", "nn.LayerNorm(16)" if layer_norm else "nn.Identity()")
        (folder / "model.py").write_text(textwrap.dedent(source))
        namespace: dict = {}
        exec(compile(source, "model.py", "exec"), namespace)
        torch.manual_seed(0)
        torch.save(namespace["Net"]().state_dict(), folder / "weights.pth")
        return ({"class_def": str(folder / "model.py"), "weights": str(folder / "weights.pth")},
                {"class_def": "model.py", "weights": "weights.pth"},
                {"input_size": [3, 10, 10], "model_name": "Net"})

    def corrupting_engine(self):
        """The real engine, except that its rewrite swaps two kept filters of conv2."""
        base = self.engine_class

        class Corrupting(base):
            def rewrite(self, loaded, analysis, plan):
                pruned, failed = super().rewrite(loaded, analysis, plan)
                swap_two_filters(pruned, self.spec.name)
                return pruned, failed

        return Corrupting()


def swap_two_filters(model, framework: str) -> None:
    if framework == "tensorflow":
        layer = model.get_layer("conv2")
        kernel, bias = layer.get_weights()
        kernel[..., [0, 1]] = kernel[..., [1, 0]]
        bias[[0, 1]] = bias[[1, 0]] + 1.0
        layer.set_weights([kernel, bias])
        return
    import torch

    with torch.no_grad():
        model.conv2.weight[[0, 1]] = model.conv2.weight[[1, 0]].clone()
        model.conv2.bias[[0, 1]] = model.conv2.bias[[1, 0]].clone() + 1.0


@pytest.fixture(params=["tensorflow", "pytorch"])
def framework(request, tmp_path):
    if request.param == "tensorflow":
        from edgeai.pruning.keras_engine import KerasPruner

        return Framework("tensorflow", KerasPruner, "block/conv1", "block", tmp_path)
    from edgeai.pruning.torch_engine import TorchPruner

    return Framework("pytorch", TorchPruner, "block.0", "block", tmp_path)


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
