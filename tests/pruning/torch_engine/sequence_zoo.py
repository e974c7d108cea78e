"""Class files of small PyTorch speech and time-series models (torch only, class
``Net``, a few thousand parameters), written as a user would: convolutions into
recurrent layers through transpose, permute and flatten. ``SEQUENCE`` maps a name to
``(source, input_size)``; the engine tests prune each one, the end-to-end breadth
test sends one through the service.
"""
from __future__ import annotations

KWS_LSTM = ("""
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.lstm = nn.LSTM(8 * 10, 16, batch_first=True)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):                         # [B, 1, 10 bands, T frames]
        y = torch.relu(self.bn(self.conv(x)))     # [B, 8, 10, T]
        y = y.permute(0, 3, 1, 2).flatten(2)      # [B, T, 8 * 10]: channel-major frames
        _, (h, _) = self.lstm(y)
        return self.fc(h[-1])
""", (1, 10, 12))

CONV_BIGRU = ("""
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(6, 12, 3, padding=1)
        self.gru = nn.GRU(12, 10, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(20 * 8, 3)

    def forward(self, x):                         # [B, 6 sensors, 8 steps]
        y = torch.relu(self.conv(x)).transpose(1, 2)
        out, _ = self.gru(y)                      # [B, 8, 2 directions * 10 units]
        return self.fc(out.reshape(x.shape[0], -1))
""", (6, 8))

SEQUENCE = {"kws_lstm": KWS_LSTM, "conv_bigru": CONV_BIGRU}
