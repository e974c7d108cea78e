"""What the pipeline knows of a model: its layers with channels, its channel groups,
and the plan of which channels go. Plain data, shared by every engine."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeai.pruning.report import LayerStatus


@dataclass
class Loaded:
    """A model as an engine loaded it: the framework's model and the engine's own data."""

    model: Any
    extra: Any = None


@dataclass
class LayerInfo:
    """A layer with output channels, as the engine found it."""

    name: str
    type: str
    channels: int
    # A status the engine decided on its own (a structure it leaves whole).
    fixed: tuple[LayerStatus, str] | None = None


@dataclass
class ChannelGroup:
    """Channels that must go together, and everything the plan needs to know of them.

    ``scores`` has one value per channel: the summed L1 norm of the filters that
    produce it (Li et al.). ``blocks`` > 1 means a grouped layer splits the channels
    into that many equal contiguous blocks, each of which must lose the same
    positions. ``blocked`` is the engine's reason to keep the group whole (it reaches
    a model output, or a layer the engine cannot rewrite). ``inexact`` says why
    masking cannot reproduce the pruned model for this group (its channels pass
    through a layer whose statistics depend on how many there are).
    """

    key: str
    members: list[str]
    carriers: list[str]
    scores: np.ndarray
    blocks: int = 1
    blocked: tuple[LayerStatus, str] | None = None
    inexact: str | None = None
    handle: Any = None


@dataclass
class Analysis:
    """The engine's view of the model: its layers with channels, and the groups."""

    layers: list[LayerInfo]
    groups: list[ChannelGroup]


@dataclass
class Plan:
    """Which channels of which group go, and each layer's status and reason."""

    removal: dict[str, list[int]] = field(default_factory=dict)
    status: dict[str, tuple[LayerStatus, str | None]] = field(default_factory=dict)

    def only(self, keys: set[str]) -> Plan:
        """The same plan restricted to the groups in ``keys``."""
        return Plan({k: v for k, v in self.removal.items() if k in keys}, dict(self.status))


@dataclass
class LayerCost:
    """One layer's work in a forward pass, for the latency estimate: its MACs and output
    elements per sample, and where its channels come from.

    ``inputs``/``outputs`` map a channel group's key to how many of the layer's input
    features / output channels belong to that group (the rest are fixed: no plan
    removes them). ``depthwise``: the MACs follow the output channels alone.
    """

    name: str
    macs: int
    elements: int
    inputs: dict[str, int] = field(default_factory=dict)
    fixed_inputs: int = 0
    outputs: dict[str, int] = field(default_factory=dict)
    fixed_outputs: int = 0
    depthwise: bool = False
