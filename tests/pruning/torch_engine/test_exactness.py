"""Exactness for the PyTorch engine: zeroed lowest-L1 filters go, outputs stay (1e-5)."""
from __future__ import annotations

import torch

from tests.pruning.torch_engine.models import GUIDE_NET_SOURCE
from tests.pruning.torch_engine.conftest import load_pruned


def zero_out(conv_or_linear, idx):
    conv_or_linear.weight[idx] = 0
    if conv_or_linear.bias is not None:
        conv_or_linear.bias[idx] = 0


def assert_same_outputs(model, out, result, input_size):
    pruned, _info = torch.load(out / result.artifact, weights_only=False)
    pruned.eval()
    x = torch.randn(4, *input_size)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), atol=1e-5, rtol=1e-5)
    return pruned


def test_guide_net_golden_table(user_files, prune_torch):
    paths, _ = user_files(GUIDE_NET_SOURCE)
    result, out = prune_torch(paths, 0.5, (1, 28, 28), omitted=("fc1", "fc2"))
    rows = {line.split()[0]: line.split() for line in result.message.splitlines()
            if line.strip().startswith(("Conv2d", "Linear"))}
    assert rows["Conv2d-1"] == ["Conv2d-1", "[-1,", "16,", "26,", "26]", "160"]
    assert rows["Conv2d-2"] == ["Conv2d-2", "[-1,", "32,", "24,", "24]", "4,640"]
    assert rows["Linear-4"] == ["Linear-4", "[-1,", "128]", "589,952"]
    assert "Total params: 596,042" in result.message
    assert load_pruned(out, result, paths["class_def"].parent) == ["model", "596042"]


def test_guide_net_exact(user_files, prune_torch):
    def init(model):
        zero_out(model.conv1, [0, 7, 9, 30])
        zero_out(model.conv2, list(range(0, 64, 4)))

    paths, model = user_files(GUIDE_NET_SOURCE, init=init)
    result, out = prune_torch(paths, 0.125, (1, 28, 28), omitted=("fc1",))
    pruned = assert_same_outputs(model, out, result, (1, 28, 28))
    assert pruned.conv1.out_channels == 28 and pruned.conv2.out_channels == 56
    assert pruned.fc1.in_features == 56 * 12 * 12 and pruned.fc2.out_features == 10


RESNET = """
import torch
import torch.nn as nn
import torch.nn.functional as F

class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.layer1 = Block(8, 8, 1)
        self.layer2 = Block(8, 16, 2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
"""


def test_residual_with_downsample_exact(user_files, prune_torch):
    def init(model):
        # stem, layer1.conv2 are tied by layer1's identity add; layer2.conv2 and
        # layer2.down.0 by layer2's add. Zero the same channels in every producer.
        for conv in (model.stem, model.layer1.conv2):
            zero_out(conv, [1, 6])
        zero_out(model.layer1.conv1, [0, 3])
        zero_out(model.layer2.conv1, [2, 5, 9, 12])
        for conv in (model.layer2.conv2, model.layer2.down[0]):
            zero_out(conv, [0, 4, 8, 15])

    paths, model = user_files(RESNET, init=init)
    result, out = prune_torch(paths, 0.25, (3, 16, 16))
    pruned = assert_same_outputs(model, out, result, (3, 16, 16))
    assert pruned.stem.out_channels == 6 and pruned.layer1.conv1.out_channels == 6
    assert pruned.layer2.conv2.out_channels == 12 and pruned.layer2.down[0].out_channels == 12
    assert pruned.fc.out_features == 5  # the output is never pruned


CONCAT = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(12, 6, 3)
        self.head = nn.Linear(6 * 6 * 6, 3)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.head(torch.flatten(torch.relu(self.c(y)), 1))
"""


def test_concatenation_exact(user_files, prune_torch):
    def init(model):
        zero_out(model.a, [1, 2])
        zero_out(model.b, [0, 3, 4, 7])
        zero_out(model.c, [2, 4, 5])

    paths, model = user_files(CONCAT, init=init)
    result, out = prune_torch(paths, 0.5, (3, 8, 8))
    pruned = assert_same_outputs(model, out, result, (3, 8, 8))
    assert (pruned.a.out_channels, pruned.b.out_channels, pruned.c.out_channels) == (2, 4, 3)
    assert pruned.c.in_channels == 6 and pruned.head.in_features == 3 * 36
