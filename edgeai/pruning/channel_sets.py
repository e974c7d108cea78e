"""Channel sets shared by the graph engines (Keras, ONNX): the union-find that joins
channels which must go together, and the two questions every group is asked — is it
blocked (a model output, an operation that cannot follow), and how do grouped layers
order its channels."""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from edgeai.pruning.report import LayerStatus

OUTPUT_REASON = "produces a model output"


class UnionFind:
    """Union-find over integer ids with path halving. Roots are asked for in bulk once
    the sets are built (an analysis, a rewrite, a mask): :meth:`roots` answers from one
    array of every id's root, made on the first question after a change."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self._roots: np.ndarray | None = None

    def make(self, count: int) -> np.ndarray:
        """``count`` new ids, each its own set."""
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        self._roots = None
        return np.arange(start, start + count, dtype=np.int64)

    def find(self, item: int) -> int:
        """The root of ``item``'s set."""
        parent = self.parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        """Join the sets of ``a`` and ``b`` (the smaller root wins)."""
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
            self._roots = None

    def roots(self, items: np.ndarray) -> np.ndarray:
        """The root of each of ``items``."""
        return self.all_roots()[np.asarray(items, dtype=np.int64)]

    def all_roots(self) -> np.ndarray:
        """The root of every id, as one array indexed by id (pointer jumping over the
        parent array until every id points at its root; kept until the next change)."""
        if self._roots is None:
            parent = np.asarray(self.parent, dtype=np.int64)
            while True:
                grand = parent[parent]
                if np.array_equal(grand, parent):
                    break
                parent = grand
            parent.flags.writeable = False
            self._roots = parent
        return self._roots


def blocked(roots: list[int], frozen: dict[int, str],
            layout: tuple | str | None) -> tuple[LayerStatus, str] | None:
    """Why a group's channels cannot be pruned (a frozen channel's reason, or the
    grouped layers' ``layout`` when it is a reason); None when they can."""
    why = next((frozen[root] for root in roots if root in frozen), None)
    if why == OUTPUT_REASON:
        return LayerStatus.OUTPUT, why
    if why is not None:
        return LayerStatus.UNSUPPORTED, why
    if isinstance(layout, str):
        return LayerStatus.UNSUPPORTED, layout
    return None


def channel_layout(uf: UnionFind, constraints: Iterable[tuple[Any, int, str]],
                   channel_roots: list[int], grouped: str) -> tuple | str | None:
    """None if no grouped layer (``constraints``: its channels, its groups, its name)
    constrains these channels; else (channels in block order, blocks); or a reason
    string when the constraints cannot be met together. ``grouped`` names such layers
    in the reason ("layer", "convolution")."""
    wanted = set(channel_roots)
    layout: tuple | None = None
    for elements, parts, name in constraints:
        roots = uf.roots(elements).tolist()
        if not wanted.intersection(roots):
            continue
        if set(roots) != wanted or len(roots) != len(wanted) or len(roots) % parts:
            return f"channels reach the grouped {grouped} {name} mixed with others"
        if layout is None:
            layout = (roots, parts)
        elif layout[0] != roots:
            return f"grouped {grouped}s order these channels differently ({name})"
        else:
            layout = (roots, math.lcm(layout[1], parts))
            if len(roots) % layout[1]:
                return f"{len(roots)} channels do not split into {layout[1]} groups ({name})"
    return layout
