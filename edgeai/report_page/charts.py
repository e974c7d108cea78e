"""Chart geometry for the report page, computed here and drawn as inline SVG by the template.

Only numbers are computed here; every text (layer and group names come from uploaded
models) reaches the page through the template's autoescaping, never through a string
built in Python.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

LABEL_CHARS = 34
ROW = 18
PALETTE = 8  # series colours in the stylesheet: .s0 .. .s7


def short(name: str, limit: int = LABEL_CHARS) -> str:
    """``name`` cut to ``limit`` characters, keeping its end (where layer names differ)."""
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


@dataclass
class Bar:
    """One layer's row: channels before (full bar) and after (inner bar)."""

    name: str
    label: str
    status: str
    before: int
    after: int | None
    y: int
    before_width: float
    after_width: float


@dataclass
class LayerChart:
    """A horizontal bar chart of output channels before and after, one row per layer."""

    width: int
    height: int
    label_width: int
    plot_width: int
    bars: list[Bar] = field(default_factory=list)


def layer_chart(layers: list[dict[str, Any]], width: int = 760) -> LayerChart | None:
    """The per-layer chart of a report's ``layers``; None when there are none."""
    rows = [layer for layer in layers if isinstance(layer.get("channels_before"), int)]
    if not rows:
        return None
    label_width, number_width = 250, 90
    plot = width - label_width - number_width
    widest = max(max(layer["channels_before"] for layer in rows), 1)
    chart = LayerChart(width=width, height=ROW * len(rows) + 8, label_width=label_width,
                       plot_width=plot)
    for index, layer in enumerate(rows):
        before = layer["channels_before"]
        after = layer.get("channels_after")
        kept = before if after is None else after
        chart.bars.append(Bar(
            name=str(layer.get("name", "")), label=short(str(layer.get("name", ""))),
            status=str(layer.get("status") or "unchanged"), before=before, after=after,
            y=4 + index * ROW, before_width=round(plot * before / widest, 2),
            after_width=round(plot * kept / widest, 2)))
    return chart


@dataclass
class Series:
    """One group's sensitivity curve: the metric when that group alone is pruned."""

    name: str
    label: str
    colour: str
    points: str
    plan_point: tuple[float, float] | None


@dataclass
class PlotFrame:
    """What every line chart shares: its size, the plot area inside it, the metric on
    the y axis and the ticks (drawn by the template's ``frame`` macro)."""

    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    metric: str
    x_ticks: list[tuple[float, str]]
    y_ticks: list[tuple[float, str]]

    def x_at(self, value: float, low: float, high: float) -> float:
        """Where ``value`` of [low, high] falls on the x axis."""
        return round(self.left + self.plot_width * (value - low) / ((high - low) or 1.0), 2)

    def y_at(self, value: float, low: float, high: float) -> float:
        """Where ``value`` of [low, high] falls on the y axis (high at the top)."""
        return round(self.top + self.plot_height * (high - value) / (high - low), 2)


@dataclass
class SensitivityChart(PlotFrame):
    """A line chart: pruning ratio (x) against the metric (y), one line per group."""

    baseline_y: float | None
    series: list[Series] = field(default_factory=list)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """``count`` evenly spaced values from ``low`` to ``high``."""
    step = (high - low) / (count - 1)
    return [low + step * index for index in range(count)]


def _number(value: Any) -> bool:
    """A finite int or float (not a bool): what a free-form field may plot."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _numbers(values: Any) -> list[float] | None:
    """``values`` as floats if it is a non-empty list of finite numbers, else None."""
    if not isinstance(values, list) or not values or not all(_number(v) for v in values):
        return None
    return [float(v) for v in values]


def sensitivity_chart(sensitivity: Any, metric: str = "metric", width: int = 760,
                      height: int = 320) -> SensitivityChart | None:
    """The chart of an analysis's ``sensitivity``; None when it has no curves. ``metric``
    names the y axis when the analysis does not. The field is free-form JSON: groups
    whose curve is not a list of finite numbers are left out, and without such ratios
    there is no chart."""
    sensitivity = sensitivity if isinstance(sensitivity, dict) else {}
    ratios = _numbers(sensitivity.get("ratios"))
    if ratios is None:
        return None
    groups = [(g, curve) for g in sensitivity.get("groups") or [] if isinstance(g, dict)
              and (curve := _numbers(g.get("metric")))] \
        if isinstance(sensitivity.get("groups"), list) else []
    if not groups:
        return None
    baseline = sensitivity.get("baseline") if _number(sensitivity.get("baseline")) else None
    values = [v for _, curve in groups for v in curve]
    values += [float(baseline)] if baseline is not None else []
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    chart = SensitivityChart(width=width, height=height, left=60, top=12,
                             plot_width=width - 80, plot_height=height - 50,
                             metric=str(sensitivity.get("metric") or metric),
                             x_ticks=[], y_ticks=[], baseline_y=None)

    def x(ratio: float) -> float:
        return chart.x_at(ratio, ratios[0], ratios[-1])

    def y(value: float) -> float:
        return chart.y_at(value, low, high)

    chart.x_ticks = [(x(r), f"{r:g}") for r in ratios]
    chart.y_ticks = [(y(v), f"{v:.3g}") for v in _ticks(low, high)]
    if baseline is not None:
        chart.baseline_y = y(float(baseline))
    plan = sensitivity.get("plan") if isinstance(sensitivity.get("plan"), dict) else {}
    for index, (group, curve) in enumerate(groups):
        name = str(group.get("group", ""))
        pairs = list(zip(ratios, curve, strict=False))
        chosen = plan.get(name)
        if isinstance(chosen, bool) or not isinstance(chosen, (int, float)):
            chosen = None
        at = next((p for p in pairs if chosen and abs(p[0] - float(chosen)) < 1e-6), None)
        chart.series.append(Series(
            name=name, label=short(name, 28), colour=f"s{index % PALETTE}",
            points=" ".join(f"{x(r)},{y(v)}" for r, v in pairs),
            plan_point=(x(at[0]), y(at[1])) if at else None))
    return chart


@dataclass
class Curve:
    """One curve of the latency chart: (latency kept, metric) points."""

    label: str
    colour: str
    points: str
    dots: list[tuple[float, float]]


@dataclass
class LatencyChart(PlotFrame):
    """A line chart: latency kept (x, the original at 1) against the metric (y), the
    search's path and uniform pruning, with the budget as a vertical line."""

    budget_x: float | None
    chosen: tuple[float, float] | None
    curves: list[Curve] = field(default_factory=list)


MAX_CURVE_POINTS = 400


def _pairs(points: Any) -> list[tuple[float, float]]:
    """The (x, y) number pairs of a free-form list (a report is the job's word: anything
    else in it is skipped, and at most MAX_CURVE_POINTS are drawn)."""
    if not isinstance(points, list):
        return []
    return [(float(point[0]), float(point[1])) for point in points[:MAX_CURVE_POINTS]
            if isinstance(point, (list, tuple)) and len(point) == 2
            and _number(point[0]) and _number(point[1])]


def latency_chart(target: dict[str, Any], metric: str = "metric", width: int = 760,
                  height: int = 300) -> LatencyChart | None:
    """The chart of a latency search's ``curves`` (report ``target``); None without them."""
    curves = target.get("curves")
    curves = curves if isinstance(curves, dict) else {}
    series = [(name, _pairs(curves.get(name))) for name in ("search", "uniform")]
    series = [(name, points) for name, points in series if points]
    if not series:
        return None
    xs = [x for _, points in series for x, _ in points]
    ys = [y for _, points in series for _, y in points]
    budget = target.get("keep") if _number(target.get("keep")) else None
    x_low = min(xs + ([float(budget)] if budget is not None else []))
    x_low, x_high = max(0.0, x_low - 0.05), max(1.0, max(xs))
    if x_high - x_low < 1e-9:
        x_low = x_high - 1.0
    y_low, y_high = min(ys), max(ys)
    if y_high - y_low < 1e-9:
        y_low, y_high = y_low - 0.5, y_high + 0.5
    chart = LatencyChart(width=width, height=height, left=60, top=12, plot_width=width - 80,
                         plot_height=height - 50, metric=metric, x_ticks=[], y_ticks=[],
                         budget_x=None, chosen=None)

    def x(value: float) -> float:
        return chart.x_at(value, x_low, x_high)

    def y(value: float) -> float:
        return chart.y_at(value, y_low, y_high)

    chart.x_ticks = [(x(v), f"{v:.2f}") for v in _ticks(x_low, x_high)]
    chart.y_ticks = [(y(v), f"{v:.3g}") for v in _ticks(y_low, y_high)]
    if budget is not None and x_low <= budget <= x_high:
        chart.budget_x = x(float(budget))
    for index, (name, points) in enumerate(series):
        ordered = sorted(points, reverse=True)
        chart.curves.append(Curve(
            label="the search's path" if name == "search" else "uniform pruning",
            colour=f"s{index}", points=" ".join(f"{x(a)},{y(b)}" for a, b in ordered),
            dots=[(x(a), y(b)) for a, b in ordered]))
    search = dict(series).get("search")
    if search:
        chart.chosen = (x(search[-1][0]), y(search[-1][1]))
    return chart
