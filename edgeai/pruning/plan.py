"""Choosing what goes, the same for every framework.

The rule (Li et al. 2017): in every channel group, the channels whose producing
filters have the lowest summed L1 norm go, ``channels_to_remove(n, percent)`` of
them, the same positions in every block of a grouped layer; a group that reaches a
model output, an omitted layer or a layer the engine keeps stays whole. With
``round_to`` every pruned group keeps a multiple of that many channels. A cost
``target`` (params or MACs to keep) is met by searching the uniform percent.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from edgeai.pruning.base import PruningError, channels_to_remove
from edgeai.pruning.report import JobReport, LayerChange, LayerStatus
from edgeai.pruning.structure import Analysis, ChannelGroup, Plan

# Channel counts that are multiples of this suit the SIMD width of most CPUs.
SIMD_CHANNELS = 8
SEARCH_STEPS = 9


def listing(names: list[str], limit: int = 60) -> str:
    """Up to ``limit`` names, comma-separated."""
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


def check_omitted(omitted: tuple[str, ...], names: list[str], listed: list[str],
                  separator: str) -> None:
    """Every name in ``ommitted`` must be a layer (or container) of the model.

    Raises PruningError naming the unknown ones, each with its closest match (a
    nested layer's full name when the last part matches), and listing ``listed``.
    """
    known = set(names)
    unknown = [name for name in omitted if name not in known]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = [n for n in names if n.endswith(separator + name)] or \
            difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
    raise PruningError(f"ommitted names layers the model does not have: {', '.join(hints)}. "
                       f"Layers with channels: {listing(listed)}.")


def _omitted_carrier(carriers: list[str], omitted: tuple[str, ...], separator: str,
                     ) -> str | None:
    """The first carrier named in ``omitted``, itself or through a container."""
    for carrier in carriers:
        for name in omitted:
            if carrier == name or carrier.startswith(name + separator):
                return carrier
    return None


def make_plan(analysis: Analysis, percent: float, omitted: tuple[str, ...], separator: str,
              round_to: int = 1, ratios: dict[str, float] | None = None) -> Plan:
    """Choose the channels to remove in every group (see the module docstring); with
    ``ratios`` (group key -> fraction), each group at its own ratio, 0 if not named."""
    plan = Plan()
    for layer in analysis.layers:
        plan.status[layer.name] = layer.fixed or (LayerStatus.UNCHANGED, None)
    for group in analysis.groups:
        share = percent if ratios is None else ratios.get(group.key, 0.0)
        verdict = group_verdict(group, share, omitted, separator, round_to)
        if isinstance(verdict, tuple):
            for member in group.members:
                if plan.status.get(member, (LayerStatus.UNCHANGED,))[0] == LayerStatus.UNCHANGED:
                    plan.status[member] = verdict
            continue
        plan.removal[group.key] = verdict
        for member in group.members:
            plan.status[member] = (LayerStatus.PRUNED, None)
    return plan


def kept_per_block(per_block: int, blocks: int, percent: float, round_to: int) -> int:
    """How many channels of each block stay: the rule's count, then rounded so that
    the group keeps a multiple of ``round_to`` (the nearest, halves up, never fewer
    than one multiple)."""
    kept = per_block - channels_to_remove(per_block, percent)
    step = round_to // math.gcd(round_to, blocks)
    if step > 1:
        kept = max(step, int(math.floor(kept / step + 0.5)) * step)
    return min(kept, per_block)


def group_verdict(group: ChannelGroup, percent: float, omitted: tuple[str, ...],
                   separator: str, round_to: int,
                   ) -> list[int] | tuple[LayerStatus, str | None]:
    """The channels ``group`` loses, or the status that keeps it whole."""
    if group.blocked and group.blocked[0] == LayerStatus.OUTPUT:
        return group.blocked
    carrier = _omitted_carrier(group.carriers, omitted, separator)
    if carrier is not None:
        return LayerStatus.OMITTED, "listed in ommitted" + (
            "" if carrier in omitted else f" (inside {carrier.rsplit(separator, 1)[0]})")
    if group.blocked:
        return group.blocked
    n = len(group.scores)
    if n % group.blocks:
        return (LayerStatus.UNSUPPORTED, f"{n} channels do not split into the "
                                         f"{group.blocks} groups of a grouped layer")
    per_block = n // group.blocks
    if percent <= 0:  # not asked to lose any: rounding alone never takes channels away
        return LayerStatus.UNCHANGED, f"percent={percent} removes none of its {per_block} channels"
    if round_to > 1 and n <= round_to:
        return LayerStatus.UNCHANGED, f"round_to={round_to} is not smaller than its {n} channels"
    remove = per_block - kept_per_block(per_block, group.blocks, percent, round_to)
    if remove <= 0:
        return LayerStatus.UNCHANGED, f"percent={percent} removes none of its {per_block} channels"
    # Sum a position's scores over the blocks; the lowest positions go from every
    # block (ties by index, so results are reproducible).
    scores = np.asarray(group.scores, dtype=np.float64).reshape(group.blocks, per_block).sum(0)
    positions = sorted(range(per_block), key=lambda i: (float(scores[i]), i))[:remove]
    return sorted(block * per_block + p for block in range(group.blocks) for p in positions)


def resolve_ratios(requested: dict[str, float], analysis: Analysis, names: list[str],
                   separator: str) -> dict[str, float]:
    """A user's plan (group or layer name -> ratio) as group key -> ratio.

    Each name must be a group's key or one of its members (a layer with channels);
    raises PruningError with the unknown names, their closest match and the groups.
    """
    owner = {member: group.key for group in analysis.groups for member in group.members}
    unknown = [name for name in requested if name not in owner]
    if unknown:
        hints = []
        for name in unknown:
            close = [n for n in owner if n.endswith(separator + name)] or \
                difflib.get_close_matches(name, list(owner) or names, n=1, cutoff=0.6)
            hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
        raise PruningError(f"plan names layers that are not prunable channel groups of the "
                           f"model: {', '.join(hints)}. Groups: "
                           f"{listing([group.key for group in analysis.groups])}.")
    ratios: dict[str, float] = {}
    for name, ratio in requested.items():
        ratios[owner[name]] = max(ratios.get(owner[name], 0.0), ratio)
    return ratios


def ensure_prunable(analysis: Analysis, plan: Plan, percent: float) -> None:
    """Raise PruningError, with every layer's reason, when the plan removes nothing."""
    if percent <= 0 or plan.removal:
        return
    reasons = sorted({f"{name}: {why}" for name, (_, why) in plan.status.items() if why})
    raise PruningError("Nothing prunable in this model at this percent: "
                       + ("; ".join(reasons[:12]) or "no convolution, dense or linear layer"))


def drop_failed(plan: Plan, analysis: Analysis, failed: dict[str, str],
                report: JobReport) -> None:
    """Groups the engine could not rewire are left whole, and said so."""
    groups = {group.key: group for group in analysis.groups}
    for key, why in failed.items():
        plan.removal.pop(key, None)
        report.warnings.append(f"{key}: left whole ({why})")
        for member in groups[key].members:
            plan.status[member] = (LayerStatus.UNSUPPORTED, f"could not be rewired: {why}")


def layer_changes(analysis: Analysis, plan: Plan, widths: dict[str, int]) -> list[LayerChange]:
    """The report's rows: each layer's channels before and after, status and reason."""
    rows = []
    for layer in analysis.layers:
        status, reason = plan.status.get(layer.name, (LayerStatus.UNCHANGED, None))
        after = widths.get(layer.name)
        if status == LayerStatus.UNCHANGED and after is not None and after != layer.channels:
            status, reason = LayerStatus.PRUNED, "follows its input channels (depthwise)"
        rows.append(LayerChange(layer.name, layer.type, layer.channels, after, status, reason))
    return rows


def rounding_hints(rows: list[LayerChange], round_to: int, warnings: list[str]) -> None:
    """Say when rounding would help (channel counts off the SIMD width), and when a
    ``round_to`` kept a group whole because it is not smaller than the group."""
    if round_to == 1:
        odd = [row for row in rows if row.status == LayerStatus.PRUNED
               and row.channels_after and row.channels_after % SIMD_CHANNELS]
        if odd:
            examples = ", ".join(f"{row.name}: {row.channels_after}" for row in odd[:4])
            warnings.append(
                f"{len(odd)} pruned layers keep channel counts that are not multiples of "
                f"{SIMD_CHANNELS} ({examples}); CPUs compute in blocks of {SIMD_CHANNELS} or "
                f"16 channels, so round_to={SIMD_CHANNELS} usually runs faster for about the "
                "same size.")
    too_small = [row.name for row in rows if row.reason and row.reason.startswith("round_to=")]
    if too_small:
        warnings.append(f"round_to={round_to} is not smaller than {len(too_small)} layers "
                        f"({listing(too_small, 6)}), which keep all their channels.")


# -- cost targets ----------------------------------------------------------------
def search_percent(cost: Callable[[float], float], keep: float) -> tuple[float, float, int]:
    """The smallest percent whose cost (a fraction of the original's) is at most
    ``keep``: bisection guided by interpolation, over the discrete channel counts.

    ``cost`` may raise PruningError where nothing is prunable. Returns (percent,
    cost at it, evaluations). Raises PruningError when even the most pruning the
    model allows keeps more than ``keep``.
    """
    low, low_cost = 0.0, 1.0
    high = 0.99
    high_cost = cost(high)
    evaluations = 1
    if high_cost > keep:
        raise PruningError(f"The target cannot be met: removing as much as the model allows "
                           f"(percent={high}) still keeps {high_cost:.3f} of the original; "
                           "outputs, omitted layers and layers left whole keep the rest.")
    for _ in range(SEARCH_STEPS):
        if high - low < 0.004:
            break
        # Interpolate where the cost crosses ``keep``, but never closer than a tenth of
        # the bracket to either end, so that the bracket always shrinks.
        guess = low + (high - low) * (low_cost - keep) / max(low_cost - high_cost, 1e-12)
        guess = min(max(guess, low + (high - low) * 0.1), high - (high - low) * 0.1)
        value = cost(guess)
        evaluations += 1
        if value <= keep:
            high, high_cost = guess, value
        else:
            low, low_cost = guess, value
    return round(high, 4), high_cost, evaluations


def target_summary(target: dict[str, Any], percent: float, reached: float,
                   evaluations: int) -> dict[str, Any]:
    """The report's account of a target: what was asked and what was reached."""
    return {"metric": target["metric"], "keep": target["keep"], "reached": round(reached, 4),
            "percent": percent, "evaluations": evaluations}
