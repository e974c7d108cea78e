"""Exactness for the PyTorch engine: zeroed lowest-L1 filters go, outputs stay (1e-5)."""
from __future__ import annotations

import torch

from tests.pruning.torch_engine.conftest import load_pruned
from tests.pruning.torch_engine.models import GUIDE_NET_SOURCE


def zero_out(conv_or_linear, idx):
    conv_or_linear.weight[idx] = 0
    if conv_or_linear.bias is not None:
        conv_or_linear.bias[idx] = 0


def randomise_bn(bn, zeroed):
    """Random statistics everywhere, except that a zeroed filter's channel stays 0 after BN
    (beta = 0, running mean = 0), so removing it cannot change the output."""
    bn.weight.uniform_(0.5, 1.5)
    bn.bias.normal_()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.bias[zeroed] = 0
    bn.running_mean[zeroed] = 0


def kept(n, removed):
    return [i for i in range(n) if i not in set(removed)]


def assert_rows(pruned, original, out_idx, in_idx=None):
    """The pruned layer holds exactly the original's ``out_idx`` filters (and ``in_idx`` inputs)."""
    weight = original.weight[out_idx]
    if in_idx is not None:
        weight = weight[:, in_idx]
    torch.testing.assert_close(pruned.weight, weight, atol=0, rtol=0)
    if original.bias is not None:
        torch.testing.assert_close(pruned.bias, original.bias[out_idx], atol=0, rtol=0)


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
    assert rows["Linear-6"] == ["Linear-6", "[-1,", "10]", "1,290"]
    assert "Total params: 596,042" in result.message
    assert load_pruned(out, result, paths["class_def"].parent) == ["model", "596042"]


def test_guide_net_artifacts_and_report(user_files, prune_torch):
    paths, _ = user_files(GUIDE_NET_SOURCE)
    result, out = prune_torch(paths, 0.5, (1, 28, 28), omitted=("fc1", "fc2"))
    report = result.report
    assert report["artifacts"] == {"model": "tmptest0001.pt",
                                   "state_dict": "tmptest0001.state_dict.pt",
                                   "pt2": "tmptest0001.pt2"}
    assert result.artifact == "tmptest0001.pt"
    saved = torch.load(out / report["artifacts"]["state_dict"], weights_only=True)
    assert saved["layer_sizes"]["conv2"] == {"in": 16, "out": 32}
    assert saved["layer_sizes"]["fc1"] == {"in": 4608, "out": 128}
    assert saved["state_dict"]["fc1.weight"].shape == (128, 4608)
    program = torch.export.load(out / report["artifacts"]["pt2"])
    x = torch.randn(1, 1, 28, 28)
    pruned, info = torch.load(out / result.artifact, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), pruned.eval()(x))
    assert info["params_after"] == report["params_after"] == 596042
    assert report["params_before"] == 1199882 and report["macs_after"] < report["macs_before"]
    assert report["file_size_before"] > report["file_size_after"] > 0
    assert set(report["timings"]) == {"load", "analyse", "rewrite", "verify", "save", "measure"}
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert layers["conv1"]["channels_before"] == 32 and layers["conv1"]["channels_after"] == 16
    assert layers["fc1"]["status"] == "omitted" and layers["fc2"]["status"] == "output"
    assert "accuracy_before" not in report


def test_guide_net_exact(user_files, prune_torch):
    def init(model):
        zero_out(model.conv1, [0, 7, 9, 30])
        zero_out(model.conv2, list(range(0, 64, 8)))
        # Huge consumer weights on those channels: the score is the producers' L1 only,
        # so the zero filters must still go first.
        for channel in range(0, 64, 8):
            model.fc1.weight[:, channel * 144:(channel + 1) * 144] *= 1000

    paths, model = user_files(GUIDE_NET_SOURCE, init=init)
    result, out = prune_torch(paths, 0.125, (1, 28, 28), omitted=("fc1",))
    pruned = assert_same_outputs(model, out, result, (1, 28, 28))
    assert pruned.conv1.out_channels == 28 and pruned.conv2.out_channels == 56
    assert pruned.fc1.in_features == 56 * 12 * 12 and pruned.fc2.out_features == 10
    keep1, keep2 = kept(32, [0, 7, 9, 30]), kept(64, range(0, 64, 8))
    assert_rows(pruned.conv1, model.conv1, keep1)
    assert_rows(pruned.conv2, model.conv2, keep2, keep1)
    # flatten: each kept channel keeps its 12x12 block of fc1's inputs
    columns = [c * 144 + j for c in keep2 for j in range(144)]
    torch.testing.assert_close(pruned.fc1.weight, model.fc1.weight[:, columns], atol=0, rtol=0)
    torch.testing.assert_close(pruned.fc2.weight, model.fc2.weight, atol=0, rtol=0)
    assert result.report["params_after"] < result.report["params_before"]
    statuses = {layer["name"]: layer["status"] for layer in result.report["layers"]}
    assert statuses == {"conv1": "pruned", "conv2": "pruned", "fc1": "omitted",
                        "fc2": "output"}


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
    tied_a, inner1, inner2, tied_b = [1, 6], [0, 3], [2, 5, 9, 12], [0, 4, 8, 15]

    def init(model):
        # stem, layer1.conv2 are tied by layer1's identity add; layer2.conv2 and
        # layer2.down.0 by layer2's add. Zero the same channels in every producer.
        for conv, bn in ((model.stem, model.bn), (model.layer1.conv2, model.layer1.bn2)):
            zero_out(conv, tied_a)
            randomise_bn(bn, tied_a)
        zero_out(model.layer1.conv1, inner1)
        randomise_bn(model.layer1.bn1, inner1)
        zero_out(model.layer2.conv1, inner2)
        randomise_bn(model.layer2.bn1, inner2)
        for conv, bn in ((model.layer2.conv2, model.layer2.bn2),
                         (model.layer2.down[0], model.layer2.down[1])):
            zero_out(conv, tied_b)
            randomise_bn(bn, tied_b)

    paths, model = user_files(RESNET, init=init)
    result, out = prune_torch(paths, 0.25, (3, 16, 16))
    pruned = assert_same_outputs(model, out, result, (3, 16, 16))
    assert pruned.stem.out_channels == 6 and pruned.layer1.conv1.out_channels == 6
    assert pruned.layer2.conv2.out_channels == 12 and pruned.layer2.down[0].out_channels == 12
    assert pruned.fc.out_features == 5  # the output is never pruned
    keep_a, keep_1, keep_2, keep_b = (kept(8, tied_a), kept(8, inner1), kept(16, inner2),
                                      kept(16, tied_b))
    assert_rows(pruned.stem, model.stem, keep_a)
    assert_rows(pruned.layer1.conv1, model.layer1.conv1, keep_1, keep_a)
    assert_rows(pruned.layer1.conv2, model.layer1.conv2, keep_a, keep_1)
    assert_rows(pruned.layer2.conv1, model.layer2.conv1, keep_2, keep_a)
    assert_rows(pruned.layer2.conv2, model.layer2.conv2, keep_b, keep_2)
    assert_rows(pruned.layer2.down[0], model.layer2.down[0], keep_b, keep_a)
    torch.testing.assert_close(pruned.layer2.bn2.running_mean,
                               model.layer2.bn2.running_mean[keep_b], atol=0, rtol=0)
    torch.testing.assert_close(pruned.fc.weight, model.fc.weight[:, keep_b], atol=0, rtol=0)


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
    keep_a, keep_b, keep_c = kept(4, [1, 2]), kept(8, [0, 3, 4, 7]), kept(6, [2, 4, 5])
    assert_rows(pruned.a, model.a, keep_a)
    assert_rows(pruned.b, model.b, keep_b)
    assert_rows(pruned.c, model.c, keep_c, keep_a + [4 + i for i in keep_b])


ATTENTION = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.proj(x)
        return self.head((h + self.attn(h, h, h, need_weights=False)[0]).mean(1))
"""


def test_attention_loses_the_same_positions_in_every_head_exact(user_files, prune_torch):
    # 2 heads of 8: removing positions 1 and 5 of each head is channels 1, 5, 9, 13 of
    # the stream, of q, k and v. Zeroed so that removing them changes nothing: the
    # stream's producers (proj, out_proj) and the q/v rows and out_proj columns.
    stream = [1, 5, 9, 13]

    def init(model):
        zero_out(model.proj, stream)
        zero_out(model.attn.out_proj, stream)
        model.attn.out_proj.weight[:, stream] = 0
        for block in (0, 2):  # q and v blocks of the packed projection
            rows = [block * 16 + i for i in stream]
            model.attn.in_proj_weight[rows] = 0
            model.attn.in_proj_bias[rows] = 0

    paths, model = user_files(ATTENTION, init=init)
    result, out = prune_torch(paths, 0.25, (5, 6))
    pruned = assert_same_outputs(model, out, result, (5, 6))
    assert pruned.attn.embed_dim == 12 and pruned.attn.head_dim == 6
    assert pruned.attn.num_heads == 2 and pruned.head.in_features == 12
    assert_rows(pruned.proj, model.proj, kept(16, stream))
    statuses = {layer["name"]: layer["status"] for layer in result.report["layers"]}
    assert statuses == {"proj": "pruned", "attn": "pruned", "head": "output"}
