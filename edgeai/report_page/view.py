"""What the report page shows, read from a transaction row and its typed report.

The report is :class:`edgeai.pruning.report.JobReport` as stored (``to_dict``), checked
again as it is read (:func:`edgeai.pruning.report.stored_report`): a stored report that
is not a valid one is withheld, with the reason, and never reaches the template. Fields
a job did not fill (no dataset, ``measure=false``, an older report) are left off the page
rather than shown empty. Values are formatted here, the free-form ones (a target, an
analysis) into plain text; the template only lays them out.
"""
from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgeai.db import Transaction
from edgeai.pruning.report import stored_report
from edgeai.report_page.charts import (
    LatencyChart,
    LayerChart,
    SensitivityChart,
    latency_chart,
    layer_chart,
    sensitivity_chart,
)

STAGES = (("before", "original"), ("after_prune", "pruned"),
          ("after_recovery", "after recovery"), ("after_finetune", "after fine-tuning"))


def count(value: Any) -> str:
    """``1234567`` -> ``1.23 M``; ``None`` -> ``–``."""
    if not isinstance(value, (int, float)):
        return "–"
    for size, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:g}"


def size(value: Any) -> str:
    """Bytes as ``12.3 MB``."""
    if not isinstance(value, (int, float)):
        return "–"
    for limit, unit in ((1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "KB")):
        if value >= limit:
            return f"{value / limit:.3g} {unit}"
    return f"{value:g} B"


def change(before: Any, after: Any) -> str:
    """The relative change from ``before`` to ``after``: ``-38.2%``."""
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)) or not before:
        return ""
    return f"{(after - before) / before * 100:+.1f}%"


def figure(value: Any, pattern: str = "{:.4g}") -> str:
    """A number in ``pattern``; ``None`` -> ``–``."""
    return "–" if value is None else pattern.format(value)


def when(epoch: float | None) -> str:
    """A Unix time as ``2026-11-25 15:40:02 UTC``."""
    if epoch is None:
        return "–"
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class Card:
    """One summary figure: before, after and the change."""

    label: str
    before: str
    after: str
    delta: str = ""
    note: str = ""
    tone: str = ""  # "better" or "worse": how the delta reads for this figure


def tone(before: Any, after: Any, higher_is_better: bool = False) -> str:
    """``better`` when ``after`` improves on ``before`` (smaller costs, by default)."""
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)) \
            or before == after:
        return ""
    return "better" if (after > before) == higher_is_better else "worse"


@dataclass
class Download:
    """One file the job made, with the formats it is downloaded as."""

    formats: list[str]
    filename: str


def scalar(value: Any) -> str:
    """A value of a free-form field as text: numbers and text as they are, anything
    else (a list, an object, nothing) as ``–``."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        return "–" if not isinstance(value, bool) else str(value).lower()
    return str(value)


@dataclass
class Analysis:
    """An analysis's text parts (the sensitivity field is free-form JSON: only what
    has the expected shape is shown)."""

    target: str = ""
    plan: list[tuple[str, str]] = field(default_factory=list)
    plan_result: tuple[str, str] | None = None
    uniform: tuple[str, str, str] | None = None
    baseline: str = "–"


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def target_text(target: Any) -> str:
    """``macs keep 0.5`` (and ``(reached 0.49)`` when the job says so); empty when the
    target is not an object."""
    target = _mapping(target)
    if not target:
        return ""
    text = f"{scalar(target.get('metric'))} keep {scalar(target.get('keep'))}"
    if "reached" in target:
        text += f" (reached {scalar(target.get('reached'))})"
    return text


def analysis(sensitivity: Any) -> Analysis | None:
    """The text parts of an analysis's ``sensitivity``; None when there is none."""
    sensitivity = _mapping(sensitivity)
    if not sensitivity:
        return None
    result, uniform = _mapping(sensitivity.get("plan_result")), _mapping(
        sensitivity.get("uniform"))
    return Analysis(
        target=target_text(sensitivity.get("target")),
        plan=[(str(group), scalar(ratio))
              for group, ratio in _mapping(sensitivity.get("plan")).items()],
        plan_result=(scalar(result.get("cost")), scalar(result.get("metric")))
        if result and uniform else None,
        uniform=(scalar(uniform.get("percent")), scalar(uniform.get("cost")),
                 scalar(uniform.get("metric"))) if result and uniform else None,
        baseline=scalar(sensitivity.get("baseline")))


@dataclass
class SearchStep:
    """One step of a latency search, as text."""

    step: str
    group: str
    fraction: str
    estimate: str
    corrected: str
    metric: str
    timed: str
    chosen: bool


@dataclass
class LatencySearch:
    """A latency target's text parts (``target`` is free-form JSON: only what has the
    expected shape is shown)."""

    keep: str
    runtime: str
    met: bool
    detail: str
    setting: str
    steps: list[SearchStep] = field(default_factory=list)


MAX_SEARCH_STEPS = 200


def _ms(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) and not isinstance(
        value, bool) else "–"


def latency_search(target: Any) -> LatencySearch | None:
    """The text of a ``latency:F`` target's search; None for any other target."""
    target = _mapping(target)
    if target.get("metric") != "latency":
        return None
    setting = (f"batch {scalar(target.get('batch'))}, {scalar(target.get('threads'))} "
               "thread(s)")
    if _ms(target.get("original_ms")) != "–":
        setting += f"; the original runs in {_ms(target.get('original_ms'))} ms"
    setting += (f" · steps chosen by {scalar(target.get('guided_by'))} · estimate: "
                f"{scalar(target.get('estimate'))} · {scalar(target.get('measurements'))} "
                "plan(s) timed")
    chosen = target.get("chosen_step")
    steps = []
    for raw in (target.get("steps") if isinstance(target.get("steps"), list) else [])[
            :MAX_SEARCH_STEPS]:
        if not isinstance(raw, dict):
            continue
        measured = _mapping(raw.get("measured"))
        interval = measured.get("interval")
        timed = "–"
        if measured:
            timed = scalar(measured.get("ratio"))
            if isinstance(interval, list) and len(interval) == 2:
                timed += f" ({scalar(interval[0])}–{scalar(interval[1])})"
        steps.append(SearchStep(
            step=scalar(raw.get("step")), group=scalar(raw.get("group")) if raw.get("group")
            else "", fraction=scalar(raw.get("fraction")), estimate=scalar(raw.get("estimate")),
            corrected=scalar(raw.get("corrected_estimate")), metric=scalar(raw.get("metric")),
            timed=timed, chosen=raw.get("step") is not None and raw.get("step") == chosen))
    return LatencySearch(keep=scalar(target.get("keep")), runtime=scalar(target.get("runtime")),
                         met=target.get("met") is True, detail=scalar(target.get("detail")),
                         setting=setting, steps=steps)


@dataclass
class Page:
    """Everything the template renders. ``report`` is empty unless the job is done and
    its report passed the check; ``withheld`` says why a done job's report is not shown."""

    row: Transaction
    report: dict[str, Any]
    withheld: str | None = None
    target: str = ""
    analysis: Analysis | None = None
    cards: list[Card] = field(default_factory=list)
    checks: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    stages: list[tuple[str, str]] = field(default_factory=list)
    downloads: list[Download] = field(default_factory=list)
    layers: LayerChart | None = None
    sensitivity: SensitivityChart | None = None
    latency: LatencyChart | None = None
    search: LatencySearch | None = None


def _figure_card(label: str, before: Any, after: Any, fmt: Callable[[Any], str]) -> Card:
    """Before -> after; the original's figure alone when nothing was made (an analysis)."""
    if after is None:
        return Card(label, before="", after=fmt(before), note="the uploaded model")
    return Card(label, fmt(before), fmt(after), change(before, after), tone=tone(before, after))


def _evaluation_card(evaluation: dict[str, Any]) -> Card | None:
    """The metric before and at the job's last stage; None without a dataset."""
    if evaluation.get("before") is None:
        return None
    last = next((evaluation[key] for key, _ in reversed(STAGES[1:])
                 if evaluation.get(key) is not None), None)
    samples = evaluation.get("samples") or "?"
    if last is None:
        return Card(str(evaluation.get("metric") or "metric"), before="", after=figure(
            evaluation["before"]), note=f"the uploaded model, on {samples} held-out samples")
    return Card(label=str(evaluation.get("metric") or "metric"), before=figure(
        evaluation["before"]), after=figure(last), delta=change(evaluation["before"], last),
        tone=tone(evaluation["before"], last, evaluation.get("higher_is_better") is not False),
        note=f"on {samples} held-out samples")


def _latency_card(speed: dict[str, Any]) -> Card | None:
    """The first runtime's latency before and after; None when not measured."""
    rows = [row for row in speed.get("latencies") or [] if row.get("before_ms") is not None]
    if not rows:
        return None
    row = rows[0]
    return Card(label="latency", before=figure(row["before_ms"], "{:.3g} ms"), after=figure(
        row.get("after_ms"), "{:.3g} ms"), delta=change(row["before_ms"], row.get("after_ms")),
        tone=tone(row["before_ms"], row.get("after_ms")),
        note=f"{row.get('runtime', '')}, batch {row.get('batch', '?')}")


def cards(report: dict[str, Any]) -> list[Card]:
    """The summary cards: parameters, MACs, file size, latency and the metric."""
    made = [_figure_card(label, report.get(f"{key}_before"), report.get(f"{key}_after"), fmt)
            for label, key, fmt in (("parameters", "params", count), ("MACs", "macs", count),
                                    ("file size", "file_size", size))
            if report.get(f"{key}_before") is not None]
    extra = (_latency_card(report.get("speed") or {}),
             _evaluation_card(report.get("evaluation") or {}))
    return made + [card for card in extra if card is not None]


def downloads(report: dict[str, Any], fallback: str | None) -> list[Download]:
    """Each file the job made, once, with every format name that downloads it."""
    artifacts = report.get("artifacts") or ({"model": fallback} if fallback else {})
    files: dict[str, list[str]] = {}
    for fmt, filename in artifacts.items():
        if filename:
            files.setdefault(filename, []).append(fmt)
    return [Download(formats=formats, filename=name) for name, formats in files.items()]


def build_page(row: Transaction) -> Page:
    """The page for ``row``; a job that is not done gets its state and message only, a
    done one whose stored report fails the check its downloads and why it is withheld."""
    report, withheld = stored_report(row.report) if row.state == "done" else (None, None)
    page = Page(row=row, report=report or {}, withheld=withheld)
    if row.state == "done":
        page.downloads = downloads(page.report, row.filename)
    if not report:
        return page
    page.target = target_text(report.get("target"))
    page.analysis = analysis(report.get("sensitivity"))
    page.cards = cards(report)
    verification = report.get("verification") or {}
    page.checks = [(label, verification[key]) for key, label in
                   (("exactness", "exactness"), ("round_trip", "round trip"))
                   if (verification.get(key) or {}).get("passed") is not None
                   or (verification.get(key) or {}).get("detail")]
    evaluation = report.get("evaluation") or {}
    page.stages = [(label, f"{evaluation[key]:.4g}") for key, label in STAGES
                   if evaluation.get(key) is not None]
    page.layers = layer_chart(report.get("layers") or [])
    page.sensitivity = sensitivity_chart(report.get("sensitivity") or {},
                                         evaluation.get("metric") or "metric")
    page.search = latency_search(report.get("target"))
    if page.search:
        page.latency = latency_chart(report["target"], scalar(evaluation.get("metric")
                                                              or "metric"))
    return page
