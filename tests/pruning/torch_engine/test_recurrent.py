"""Convolutions into GRU/LSTM through permute, transpose, flatten and reshape, and the
recurrent layers' hidden units: pruned exactly.

As in test_exactness: what the plan removes is zeroed first (a convolution's filters;
a unit's rows in every gate block of every layer and direction, so that it stays 0),
and the pruned model must give the original's outputs (1e-5).
"""
from __future__ import annotations

import textwrap

import pytest
import torch

from edgeai.pruning import PruneJob
from edgeai.pruning.pipeline import Plan
from edgeai.pruning.torch_engine import TorchPruner, pruner
from tests.pruning.torch_engine.sequence_zoo import CONV_BIGRU, KWS_LSTM


def zero_filters(layer, idx):
    layer.weight[idx] = 0
    layer.bias[idx] = 0


def zero_units(rnn, units):
    """Every gate row of ``units`` in every layer and direction (weights and biases)."""
    gates = rnn.weight_hh_l0.shape[0] // rnn.hidden_size
    rows = [g * rnn.hidden_size + u for g in range(gates) for u in units]
    for parameter in rnn.parameters():
        parameter[rows] = 0


def kept(n, removed):
    return [i for i in range(n) if i not in set(removed)]


def gate_rows(units, hidden, gates):
    return [g * hidden + u for g in range(gates) for u in units]


def prune(paths, percent, input_size, out):
    """The real engine on the user's files (latency not measured: not what these
    tests are about)."""
    job = PruneJob(framework="pytorch", percent=percent, omitted=(),
                   inputs={k: str(v) for k, v in paths.items()},
                   input_names={k: v.name for k, v in paths.items()}, output_dir=str(out),
                   output_stem="tmptest0001", options={"input_size": list(input_size),
                                                       "model_name": "Net", "measure": False})
    return TorchPruner().prune(job)


def prune_and_compare(user_files, tmp_path, source, init, percent):
    paths, model = user_files(textwrap.dedent(source[0]), init=init)
    out = tmp_path / "out"
    out.mkdir()
    result = prune(paths, percent, source[1], out)
    pruned, _info = torch.load(out / result.artifact, weights_only=False)
    x = torch.randn(4, *source[1])
    with torch.no_grad():
        torch.testing.assert_close(pruned.eval()(x), model(x), atol=1e-5, rtol=1e-5)
    report = result.report
    assert report["verification"]["exactness"]["passed"] is True, report["verification"]
    assert report["params_after"] < report["params_before"]
    assert report["macs_after"] < report["macs_before"]
    return model, pruned, report


def test_conv_permute_flatten_lstm_exact(user_files, tmp_path):
    channels, units = [1, 5], [0, 4, 7, 9]

    def init(model):
        zero_filters(model.conv, channels)
        model.bn.bias[channels] = 0  # BN maps the zeroed channels to 0 again
        model.bn.running_mean[channels] = 0
        zero_units(model.lstm, units)

    model, pruned, report = prune_and_compare(user_files, tmp_path, KWS_LSTM, init, 0.25)
    assert pruned.conv.out_channels == 6 and pruned.lstm.hidden_size == 12
    # permute(0, 3, 1, 2).flatten(2): channel c is features 10c .. 10c + 9 of a frame.
    features = [f for f in range(80) if f // 10 not in channels]
    rows = gate_rows(kept(16, units), 16, 4)
    assert pruned.lstm.input_size == 60 and pruned.fc.in_features == 12
    torch.testing.assert_close(pruned.lstm.weight_ih_l0,
                               model.lstm.weight_ih_l0[rows][:, features], atol=0, rtol=0)
    torch.testing.assert_close(pruned.lstm.weight_hh_l0,
                               model.lstm.weight_hh_l0[rows][:, kept(16, units)],
                               atol=0, rtol=0)
    torch.testing.assert_close(pruned.fc.weight, model.fc.weight[:, kept(16, units)],
                               atol=0, rtol=0)
    statuses = {row["name"]: row["status"] for row in report["layers"]}
    assert statuses == {"conv": "pruned", "lstm": "pruned", "fc": "output"}


def test_conv_transpose_stacked_bidirectional_gru_reshape_exact(user_files, tmp_path):
    channels, units = [0, 3, 7, 11], [2, 5, 8]

    def init(model):
        zero_filters(model.conv, channels)
        zero_units(model.gru, units)

    model, pruned, report = prune_and_compare(user_files, tmp_path, CONV_BIGRU, init, 0.3)
    # Both directions and both layers lose the same positions (they share hidden_size).
    assert pruned.conv.out_channels == 8 and pruned.gru.hidden_size == 7
    rows, keep = gate_rows(kept(10, units), 10, 3), kept(10, units)
    torch.testing.assert_close(pruned.gru.weight_ih_l1_reverse,
                               model.gru.weight_ih_l1_reverse[rows][:, keep + [10 + u for u
                                                                               in keep]],
                               atol=0, rtol=0)
    torch.testing.assert_close(pruned.gru.bias_hh_l1, model.gru.bias_hh_l1[rows], atol=0,
                               rtol=0)
    # out.reshape(B, -1) of [B, 8, 20]: unit u of direction d is every 20th feature.
    assert pruned.fc.in_features == 8 * 14
    widths = {row["name"]: row["channels_after"] for row in report["layers"]}
    assert widths == {"conv": 8, "gru": 14, "fc": 3}


REFUSED = {
    "a linear layer over the time axis": ("""
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv1d(3, 8, 3, padding=1)
                self.mix = nn.Linear(16, 16)
                self.head = nn.Conv1d(8, 4, 1)
                self.fc = nn.Linear(4 * 16, 2)

            def forward(self, x):
                return self.fc(self.head(self.mix(self.conv(x))).flatten(1))
        """, (3, 16), {"conv": "mix reads axis 2", "mix": "head reads axis 1"}, {"head"}),
    "one direction picked by fixed positions": ("""
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = nn.Linear(4, 6)
                self.gru = nn.GRU(6, 5, batch_first=True, bidirectional=True)
                self.fc = nn.Linear(5, 2)

            def forward(self, x):
                return self.fc(self.gru(self.proj(x))[0][:, -1, :5])
        """, (7, 4), {"gru": "keeps only some of the channels"}, {"proj"}),
    "an initial state and a projection": ("""
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.init = nn.Linear(4, 6)
                self.gru = nn.GRU(4, 6, batch_first=True)
                self.lstm = nn.LSTM(6, 8, proj_size=3, batch_first=True)
                self.fc = nn.Linear(3, 2)

            def forward(self, x):
                h0 = self.init(x.mean(1)).unsqueeze(0)
                return self.fc(self.lstm(self.gru(x, h0)[0])[0][:, -1])
        """, (7, 4), {"init": "called with an initial state", "gru": "initial state",
                      "lstm": "LSTM is left whole"}, set()),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_channels_that_cannot_follow_are_kept_with_the_reason(user_files, case):
    source, input_size, reasons, prunable = REFUSED[case]
    _, model = user_files("import torch\nimport torch.nn as nn\n" + textwrap.dedent(source))
    analysis = pruner.analyse(model, torch.randn(1, *input_size))
    why = {layer.name: layer.fixed[1] for layer in analysis.layers if layer.fixed}
    for group in analysis.groups:
        for member in group.members:
            if group.blocked:
                why.setdefault(member, group.blocked[1])
    for name, needle in reasons.items():
        assert needle in why.get(name, ""), (name, why)
    free = {m for group in analysis.groups if not group.blocked for m in group.members}
    assert prunable <= free, (prunable, why)


FIXED_SIZE = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.lstm = nn.LSTM(80, 6, batch_first=True)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        y = self.conv(x).permute(0, 3, 1, 2).reshape(x.shape[0], 12, 80)
        return self.fc(self.lstm(y)[0][:, -1])
"""


def test_a_size_fixed_in_the_code_leaves_only_its_group_whole(user_files):
    _, model = user_files(FIXED_SIZE)
    example = torch.randn(1, 1, 10, 12)
    analysis = pruner.analyse(model, example)
    plan = Plan(removal={group.key: [0, 1] for group in analysis.groups if not group.blocked})
    assert set(plan.removal) == {"conv", "lstm"}
    pruned, failed = pruner.rewrite(model, example, plan)
    assert list(failed) == ["conv"] and "the model does not run" in failed["conv"]
    assert pruned.conv.out_channels == 8 and pruned.lstm.hidden_size == 4


BIDIRECTIONAL_STATES = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.lstm = nn.LSTM(8, 6, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        _, (h, _) = self.lstm(torch.relu(self.conv(x)).transpose(1, 2))
        return self.fc(torch.cat((h[-2], h[-1]), dim=1))  # forward and backward states
"""


def test_bidirectional_final_states_concatenated(user_files):
    _, model = user_files(BIDIRECTIONAL_STATES)
    example = torch.randn(1, 4, 9)
    analysis = pruner.analyse(model, example)
    groups = {group.key: group for group in analysis.groups}
    assert groups["lstm"].blocks == 2 and groups["lstm"].blocked is None
    plan = Plan(removal={"conv": [0, 5], "lstm": [1, 4, 7, 10]})  # units 1, 4 both ways
    pruned, failed = pruner.rewrite(model, example, plan)
    assert not failed and pruned.lstm.hidden_size == 4 and pruned.fc.in_features == 8
    torch.testing.assert_close(pruned.fc.weight, model.fc.weight[:, [0, 2, 3, 5, 6, 8, 9, 11]],
                               atol=0, rtol=0)
    masked = pruner.mask(model, example, plan)  # what the job's exactness check runs
    x = torch.randn(3, 4, 9)
    with torch.no_grad():
        torch.testing.assert_close(masked(x), pruned.eval()(x), atol=1e-6, rtol=1e-5)
