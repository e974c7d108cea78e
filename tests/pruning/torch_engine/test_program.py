"""torch.export programs (.pt2) through the PyTorch engine: exact, smaller, the same
pipeline as the class-file form, and a pruned .pt2 that runs on any batch."""
from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import torch

from edgeai.pruning import PruneJob, PruningError
from edgeai.pruning.torch_engine import TorchPruner
from tests.pruning.torch_engine.models import (
    EFFICIENTNET,
    GUIDE_NET_SOURCE,
    MOBILENET_V2,
    RESNET,
)
from tests.pruning.torch_engine.programs import build, save_program, zero_lowest

GUIDE = (GUIDE_NET_SOURCE, (1, 28, 28))


@pytest.fixture
def prune_program(tmp_path):
    """``prune_program(path, percent, **options)`` -> (result, output folder)."""

    def run(path, percent=0.0, omitted=(), inputs=None, **options):
        out = tmp_path / f"out-{uuid.uuid4().hex[:6]}"
        out.mkdir()
        files = {"model": str(path), **{k: str(v) for k, v in (inputs or {}).items()}}
        job = PruneJob(framework="pytorch", percent=percent, omitted=tuple(omitted),
                       inputs=files, input_names={k: f"user-{k}{v[v.rfind('.'):]}"
                                                  for k, v in files.items()},
                       output_dir=str(out), output_stem="tmpprog0001",
                       options={"measure": False, **options})
        return TorchPruner().prune(job), out

    return run


def max_relative_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    scale = float(expected.abs().max()) or 1.0
    return float((got - expected).abs().max()) / scale


# Each family in one export form a user may send (batch fixed at 1, a dynamic batch,
# or decomposed to core ATen), so that every form is pruned at least once.
FAMILIES = [
    pytest.param(GUIDE, "static", (), id="guide-net-static"),
    pytest.param(RESNET, "dynamic", ("layer1.0",), id="resnet18-style-dynamic"),
    pytest.param(MOBILENET_V2, "static", (), id="mobilenet-v2-style-static"),
    pytest.param(EFFICIENTNET, "core", (), id="efficientnet-style-core-aten"),
]


@pytest.mark.parametrize("family, form, omitted", FAMILIES)
def test_program_prunes_exactly_and_shrinks(prune_program, tmp_path, family, form, omitted):
    """The lowest-L1 filters are zero, so the pruned program, loaded as a user loads it
    and run on a batch of 2, gives the original's outputs; params and MACs shrink; the
    layers keep the user's module names; the ONNX export is made and checked."""
    source, size = family
    model = build(source)
    zero_lowest(model, 0.5, keep=omitted)
    path = save_program(model, size, tmp_path / "net.pt2", form)
    result, out = prune_program(path, 0.5, omitted=omitted, formats=["onnx"])
    report = result.report

    assert result.artifact == "tmpprog0001.pt2"
    assert report["artifacts"]["model"] == report["artifacts"]["pt2"] == result.artifact
    assert report["params_after"] < 0.6 * report["params_before"]
    assert report["macs_after"] < 0.6 * report["macs_before"]
    assert report["verification"]["exactness"]["max_rel_diff"] <= 1e-4
    assert "pt2" in report["verification"]["round_trip"]["detail"]
    assert report["exports"]["onnx"]["passed"] is True
    assert "torch.export program" in report["brings_code"]
    names = {layer["name"]: layer for layer in report["layers"]}
    expected_names = {name for name, m in model.named_modules()
                      if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert set(names) == expected_names
    for name in names:
        if omitted and name.startswith(omitted):
            assert names[name]["status"] == "omitted"

    program = torch.export.load(out / result.artifact).module()
    x = torch.randn(2, *size)
    with torch.no_grad():
        assert max_relative_difference(program(x), model(x)) <= 1e-4
        assert program(torch.randn(5, *size)).shape[0] == 5
    saved = torch.load(out / report["artifacts"]["state_dict"], weights_only=True)
    assert {name: sizes["out"] for name, sizes in saved["layer_sizes"].items()} == {
        name: layer["channels_after"] for name, layer in names.items()}


def test_guide_program_table_and_rounding(prune_program, tmp_path):
    """The status message is the pruned model's torchsummary table, as for a class file
    (the guide's figures: fc1 kept whole by ommitted); round_to=8 keeps multiples of 8
    and the report times both models where they will run: ONNX Runtime for formats=onnx."""
    path = save_program(build(GUIDE_NET_SOURCE), (1, 28, 28), tmp_path / "net.pt2")
    result, _ = prune_program(path, 0.5, omitted=("fc1",))
    assert "Total params: 596,042" in result.message
    assert [line.split()[-1] for line in result.message.splitlines()
            if line.strip().startswith("Conv2d")] == ["160", "4,640"]

    result, _ = prune_program(path, 0.3, round_to=8, formats=["onnx"], measure=True)
    layers = {layer["name"]: layer for layer in result.report["layers"]}
    assert layers["conv1"]["channels_after"] == 24 and layers["conv2"]["channels_after"] == 48
    runtimes = {row["runtime"] for row in result.report["speed"]["latencies"]}
    assert runtimes == {"onnxruntime"}


SMALL = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))
"""


def test_a_cost_target_on_a_program(prune_program, tmp_path):
    """target=macs:0.5 is searched with real rewrites of the rebuilt program."""
    path = save_program(build(GUIDE_NET_SOURCE), (1, 28, 28), tmp_path / "net.pt2")
    result, _ = prune_program(path, target={"metric": "macs", "keep": 0.5})
    report = result.report
    assert report["target"]["reached"] <= 0.5
    assert report["macs_after"] <= 0.5 * report["macs_before"]


def test_analysis_plan_recovery_and_finetuning_on_a_program(prune_program, tmp_path):
    """pt_analyze takes a .pt2 and recommends a plan over the user's layers; the prune
    takes that plan with an .npz dataset: evaluated, recovered, fine-tuned one epoch."""
    path = save_program(build(SMALL), (1, 8, 8), tmp_path / "small.pt2")
    generator = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=generator.standard_normal((120, 1, 8, 8)).astype("float32"),
             y=generator.integers(0, 10, 120))
    analysis, out = prune_program(path, inputs={"dataset": data}, task="analyze",
                                  target={"metric": "macs", "keep": 0.6})
    sensitivity = analysis.report["sensitivity"]
    assert {group["group"] for group in sensitivity["groups"]} == {"conv1", "conv2", "fc1"}
    plan = out / analysis.artifact
    assert set(json.loads(plan.read_text())) <= {"conv1", "conv2", "fc1"}

    result, _ = prune_program(path, inputs={"dataset": data, "plan": plan}, finetune_epochs=1)
    report = result.report
    assert report["plan"] == sensitivity["plan"]
    evaluation = report["evaluation"]
    assert evaluation["metric"] == "top1_accuracy" and len(evaluation["epochs"]) == 1
    assert evaluation["after_recovery"] is not None
    assert report["verification"]["round_trip"]["passed"] is True


PATCHES = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.patch = nn.Conv2d(16, 32, 4, stride=4)
        self.mix = nn.Linear(32, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        x = self.patch(torch.relu(self.stem(x)))          # [B, 32, 4, 4]
        tokens = x.permute(0, 2, 3, 1).reshape(x.shape[0], 16, 32)
        return self.head(torch.relu(self.mix(tokens)).mean(1))
"""


def test_a_reshape_with_written_sizes_keeps_its_group_whole(prune_program, tmp_path):
    """A reshape whose channel count the export wrote as a number cannot follow pruned
    channels: that group stays whole, with the reason; the others are pruned."""
    path = save_program(build(PATCHES), (3, 16, 16), tmp_path / "patches.pt2")
    result, out = prune_program(path, 0.5)
    layers = {layer["name"]: layer for layer in result.report["layers"]}
    assert layers["stem"]["channels_after"] == 8
    assert layers["mix"]["channels_after"] == 16
    assert layers["patch"]["channels_after"] == 32
    assert "does not run" in layers["patch"]["reason"]
    program = torch.export.load(out / result.artifact).module()
    assert program(torch.randn(3, 3, 16, 16)).shape == (3, 4)


COORDINATES = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.register_buffer("coords", torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8))
        self.head = nn.Conv2d(9, 4, 1)

    def forward(self, x):
        coords = self.coords.expand(x.shape[0], -1, -1, -1)
        return self.head(torch.cat([torch.relu(self.conv(x)), coords], 1))
"""


def test_a_program_tied_to_its_batch_fails_with_the_export_to_use(prune_program, tmp_path):
    """Exported at batch 1, the expand of a constant wrote the batch as 1: edgeai says
    so and how to export with a dynamic batch; exported that way, it is pruned."""
    model = build(COORDINATES)
    static = save_program(model, (3, 8, 8), tmp_path / "static.pt2")
    with pytest.raises(PruningError, match=r"runs only on its exported batch of 1.*"
                                           r"dynamic_shapes=\(\{0: torch.export.Dim"):
        prune_program(static, 0.5)
    dynamic = save_program(model, (3, 8, 8), tmp_path / "dynamic.pt2", "dynamic")
    result, out = prune_program(dynamic, 0.5)
    assert {layer["name"]: layer["channels_after"]
            for layer in result.report["layers"]} == {"conv": 4, "head": 4}
    program = torch.export.load(out / result.artifact).module()
    with torch.no_grad():
        assert program(torch.randn(3, 3, 8, 8)).shape == (3, 4, 8, 8)


def test_input_size_must_be_the_programs(prune_program, tmp_path):
    path = save_program(build(GUIDE_NET_SOURCE), (1, 28, 28), tmp_path / "net.pt2")
    with pytest.raises(PruningError, match=r"input_size=3,28,28 does not match the program: "
                                           r"its input 'x' is 1,28,28"):
        prune_program(path, 0.5, input_size=[3, 28, 28])
    result, _ = prune_program(path, 0.5, input_size=[1, 28, 28])
    assert result.report["params_after"] < result.report["params_before"]


def test_a_program_exported_in_training_mode_says_to_export_eval(prune_program, tmp_path):
    """Batch norm traced in train() uses batch statistics: no layer reproduces that."""
    model = build(SMALL).train()
    path = tmp_path / "train.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 1, 8, 8),)), path)
    with pytest.raises(PruningError, match=r"training mode.*export model.eval\(\)"):
        prune_program(path, 0.5)
