"""Channel pruning on torch-pruning's dependency graph (DepGraph, CVPR 2023).

torch-pruning traces the model and groups every layer whose channels are tied
to a producer's output channels (BatchNorm, residual adds, concatenations,
flatten into a linear layer, depthwise convolutions). Around it, this module
adds what a service needs: model outputs protected automatically (the graph's
``_OutputOp``), ``ommitted`` layers kept, the L1 score computed from the
producers' filters only, the shared channel-count rule, structures it cannot
keep valid (attention heads, RNNs, grouped convolutions, GroupNorm that would
break) left whole with a reason, and one bad group never failing the job.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from edgeai.pruning.base import channels_to_remove

PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
             nn.ConvTranspose3d, nn.Linear)
UNSUPPORTED = (nn.MultiheadAttention, nn.RNNBase, nn.RNNCellBase, nn.Embedding,
               nn.EmbeddingBag, nn.Transformer, nn.TransformerEncoderLayer,
               nn.TransformerDecoderLayer)


@dataclass
class LayerOutcome:
    """What happened to one producer layer's output channels."""

    name: str
    type: str
    channels_before: int
    channels_after: int
    status: str = "unchanged"
    reason: str | None = None


@dataclass
class PruneOutcome:
    """Per-layer outcomes in module order, and warnings."""

    layers: dict[str, LayerOutcome] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    analyse_seconds: float = 0.0


def out_channels(module: nn.Module) -> int:
    """Output channels (units) of a producer layer."""
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.out_channels


def filter_l1(module: nn.Module) -> torch.Tensor:
    """L1 norm of each output filter's kernel weights (Li et al.): one value per channel."""
    weight = module.weight.detach().abs()
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        # [in, out / groups, k...]: output channels live on dim 1, repeated per group.
        per = weight.transpose(0, 1).reshape(weight.shape[1], -1).sum(1)
        return per.repeat(module.groups)
    return weight.reshape(weight.shape[0], -1).sum(1)


def _is_out_fn(dep) -> bool:  # noqa: ANN001 - a torch-pruning Dependency
    name = getattr(dep.handler, "__name__", str(dep.handler))
    return "out_channels" in name


def group_scores(group, root_channels: int) -> torch.Tensor:  # noqa: ANN001 - tp Group
    """Summed L1 norms of every producer whose output channels the group removes."""
    scores = torch.zeros(root_channels, dtype=torch.float64)
    for item in group:
        dep, idxs = item.dep, item.idxs
        module = dep.target.module
        if not isinstance(module, PRODUCERS) or not _is_out_fn(dep):
            continue
        local = filter_l1(module).to(torch.float64)
        root_idxs = item.root_idxs
        for local_i, root_i in zip(idxs, root_idxs, strict=False):
            if root_i is not None and local_i < local.numel() and root_i < root_channels:
                scores[root_i] += local[local_i]
    return scores


def _blocker(group, module_names: dict, omitted: set[str]) -> tuple[str, str] | None:  # noqa: ANN001
    """Why a group must stay whole, as (status, reason), or None if it may be pruned."""
    for item in group:
        target = item.dep.target
        # torch-pruning marks outputs with an _OutputOp node, except when a layer's
        # result is returned as it is: then its node simply has no consumers.
        if type(target.module).__name__ == "_OutputOp" or (
                _is_out_fn(item.dep) and not target.outputs):
            return "output", "produces a model output"
    for item in group:
        dep = item.dep
        module = dep.target.module
        kind = type(module).__name__
        name = module_names.get(module)
        if name in omitted and _is_out_fn(dep):
            return "omitted", "listed in ommitted"
        if isinstance(module, UNSUPPORTED):
            return "unsupported", f"channels feed {name} ({kind}), which is left whole"
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                               nn.ConvTranspose2d, nn.ConvTranspose3d)) and module.groups > 1:
            depthwise = module.groups == module.in_channels == module.out_channels
            if not depthwise:
                return "unsupported", (f"channels feed {name}, a grouped convolution "
                                       f"(groups={module.groups}), which is left whole")
    return None


def _group_norm_multiple(group) -> int:  # noqa: ANN001
    """Channels must stay a multiple of every GroupNorm's group count in the group."""
    multiple = 1
    for item in group:
        module = item.dep.target.module
        if isinstance(module, nn.GroupNorm):
            multiple = max(multiple, module.num_groups)
    return multiple


def prune_model(model: nn.Module, example: torch.Tensor, percent: float,
                omitted: set[str]) -> PruneOutcome:
    """Prune ``model`` in place; return the per-layer outcome.

    Raises whatever torch-pruning raises while tracing (the caller turns it into
    a user-facing reason); a group that fails to prune is reported and skipped.
    """
    names = {module: name for name, module in model.named_modules()}
    outcome = PruneOutcome()
    for name, module in model.named_modules():
        if isinstance(module, PRODUCERS):
            n = out_channels(module)
            outcome.layers[name] = LayerOutcome(name, type(module).__name__, n, n)
    started = time.perf_counter()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    groups = list(graph.get_all_groups(root_module_types=PRODUCERS))
    outcome.analyse_seconds = time.perf_counter() - started
    for group in groups:
        root = group[0].dep.target.module
        root_name = names.get(root)
        members = [names.get(item.dep.target.module) for item in group
                   if isinstance(item.dep.target.module, PRODUCERS) and _is_out_fn(item.dep)]
        blocked = _blocker(group, names, omitted)
        if blocked is not None:
            status, reason = blocked
            for member in members:
                if member in outcome.layers and outcome.layers[member].status == "unchanged":
                    outcome.layers[member].status = status
                    outcome.layers[member].reason = reason
            continue
        n = len(group[0].idxs)
        remove = channels_to_remove(n, percent)
        multiple = _group_norm_multiple(group)
        if multiple > 1:
            keep = max(multiple, ((n - remove) // multiple) * multiple)
            remove = n - keep if n % multiple == 0 else 0
        if remove <= 0:
            continue
        scores = group_scores(group, n)
        # Lowest L1 first; ties broken by index so results are reproducible.
        order = sorted(range(n), key=lambda i: (float(scores[i]), i))
        victims = sorted(order[:remove])
        try:
            pruning = graph.get_pruning_group(root, group[0].dep.handler, idxs=victims)
            if not graph.check_pruning_group(pruning):
                raise ValueError("torch-pruning refused the group")
            pruning.prune()
        except Exception as error:  # noqa: BLE001 - one bad group must not fail the job
            outcome.warnings.append(f"{root_name}: left whole ({type(error).__name__}: {error})")
            for member in members:
                if member in outcome.layers:
                    outcome.layers[member].status = "unsupported"
                    outcome.layers[member].reason = f"could not be rewired: {error}"
            continue
        for member in members:
            if member in outcome.layers:
                outcome.layers[member].status = "pruned"
    for name, layer in outcome.layers.items():
        layer.channels_after = out_channels(model.get_submodule(name))
    return outcome
