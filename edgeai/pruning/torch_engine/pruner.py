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

import math
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


def pruned_by_heads(module: nn.Module) -> bool:
    """A MultiheadAttention torch-pruning can narrow: one packed q/k/v projection
    (``kdim == vdim == embed_dim``). Its embed dimension is pruned with the
    residual stream, the same positions in every head, so heads stay equal."""
    return isinstance(module, nn.MultiheadAttention) and bool(module._qkv_same_embed_dim)


def keep_attention_scale(attention: nn.MultiheadAttention, old_head_dim: int) -> None:
    """Rescale the query projection after heads got narrower.

    Attention divides q.k by sqrt(head_dim); with fewer dimensions per head that
    divisor shrinks. Multiplying the query weights and bias by sqrt(new / old)
    restores the old scale, so removing dimensions whose q or k is zero changes
    nothing (the exactness test relies on it).
    """
    new_head_dim = attention.embed_dim // attention.num_heads
    attention.head_dim = new_head_dim
    if new_head_dim == old_head_dim:
        return
    factor = math.sqrt(new_head_dim / old_head_dim)
    embed = attention.embed_dim
    with torch.no_grad():
        attention.in_proj_weight[:embed] *= factor
        if attention.in_proj_bias is not None:
            attention.in_proj_bias[:embed] *= factor


def left_whole(module: nn.Module) -> bool:
    """A structure whose units are never removed (recurrent, embedding, other attention)."""
    return isinstance(module, UNSUPPORTED) and not pruned_by_heads(module)


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


class RecurrentInputPruner(tp.pruner.function.BasePruningFunc):
    """Lets a producer feeding a GRU/LSTM/RNN lose channels: the recurrent layer's
    first-layer input weights lose the matching columns. Its hidden size is kept
    (its gates make that a structure of its own), so its outputs never shrink."""

    TARGET_MODULES = (nn.GRU, nn.LSTM, nn.RNN)

    def prune_out_channels(self, layer: nn.Module, idxs):  # noqa: ANN001
        raise ValueError(f"{type(layer).__name__} hidden units are not pruned")

    def prune_in_channels(self, layer: nn.Module, idxs):  # noqa: ANN001
        keep = [i for i in range(layer.input_size) if i not in set(idxs)]
        names = ["weight_ih_l0"] + (["weight_ih_l0_reverse"] if layer.bidirectional else [])
        for name in names:
            weight = getattr(layer, name)
            setattr(layer, name, nn.Parameter(weight.data[:, keep].clone(),
                                              requires_grad=weight.requires_grad))
        layer.input_size = len(keep)
        layer._flat_weights = [getattr(layer, n) if hasattr(layer, n) else None
                               for n in layer._flat_weights_names]
        layer.flatten_parameters()
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.hidden_size * (2 if layer.bidirectional else 1)

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.input_size


def out_channels(module: nn.Module) -> int:
    """Output channels (units) of a producer layer."""
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.out_channels


def why_whole(module: nn.Module) -> str:
    """Why a structure in :data:`UNSUPPORTED` keeps all its units."""
    if isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
        return ("its gates share each hidden unit across stacked weight blocks and the "
                "recurrence; only its input width follows the layer before it")
    if isinstance(module, (nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoderLayer,
                           nn.TransformerDecoderLayer)):
        return ("its query/key/value/output projections are split into heads, and removing "
                "units would have to keep every head the same size")
    return "its units are looked up by index, not produced by filters"


def structure_channels(module: nn.Module) -> int:
    """Output width of a structure left whole (attention, recurrent, embedding layers)."""
    if isinstance(module, nn.RNNBase):
        return module.hidden_size * (2 if module.bidirectional else 1)
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return module.embedding_dim
    return int(getattr(module, "d_model", 0) or getattr(module, "hidden_size", 0) or 0)


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
        if pruned_by_heads(module) and _is_out_fn(dep):
            module = module.out_proj  # the attention's output units are out_proj's rows
        elif not isinstance(module, PRODUCERS) or not _is_out_fn(dep):
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
        if isinstance(module, nn.RNNBase) and not _is_out_fn(dep):
            continue  # RecurrentInputPruner trims its input weights
        if left_whole(module):
            return "unsupported", f"channels feed {name} ({kind}), which is left whole"
    return None


CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
         nn.ConvTranspose3d)


def channel_groups(group) -> int:  # noqa: ANN001
    """How many equal channel groups the group's channels fall into.

    A grouped convolution (not depthwise) or a GroupNorm splits channels into
    contiguous groups; they stay valid when every group loses the same positions.
    """
    count = 1
    for item in group:
        module = item.dep.target.module
        if isinstance(module, nn.GroupNorm):
            count = math.lcm(count, module.num_groups)
        elif pruned_by_heads(module):
            count = math.lcm(count, module.num_heads)
        elif isinstance(module, CONVS) and module.groups > 1 and not (
                module.groups == module.in_channels == module.out_channels):
            count = math.lcm(count, module.groups)
    return count


def prune_model(model: nn.Module, example: torch.Tensor, percent: float,
                omitted: set[str]) -> PruneOutcome:
    """Prune ``model`` in place; return the per-layer outcome.

    Raises whatever torch-pruning raises while tracing (the caller turns it into
    a user-facing reason); a group that fails to prune is reported and skipped.
    """
    names = {module: name for name, module in model.named_modules()}
    outcome = PruneOutcome()
    inside: dict[str, str] = {}  # producer inside a structure left whole -> why
    projections: set[str] = set()  # out_proj of an attention pruned as a whole
    for name, module in model.named_modules():
        if pruned_by_heads(module):
            n = module.embed_dim
            outcome.layers[name] = LayerOutcome(name, type(module).__name__, n, n)
            projections.update(f"{name}.{child}" for child, sub in module.named_modules()
                               if child and isinstance(sub, PRODUCERS))
        elif left_whole(module):
            n = structure_channels(module)
            why = f"{type(module).__name__} is left whole: {why_whole(module)}"
            outcome.layers[name] = LayerOutcome(name, type(module).__name__, n, n,
                                                "unsupported", why)
            for child_name, child in module.named_modules():
                if child_name and isinstance(child, PRODUCERS):
                    inside[f"{name}.{child_name}"] = f"part of {name}; {why}"
        elif isinstance(module, PRODUCERS):
            n = out_channels(module)
            outcome.layers[name] = LayerOutcome(name, type(module).__name__, n, n)
    for name, why in inside.items():
        outcome.layers[name].status = "unsupported"
        outcome.layers[name].reason = why
    for name in projections:
        # Part of its attention layer's entry: torch-pruning narrows it with the layer.
        outcome.layers.pop(name, None)
    started = time.perf_counter()
    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=example,
        customized_pruners={nn.GRU: RecurrentInputPruner(), nn.LSTM: RecurrentInputPruner(),
                            nn.RNN: RecurrentInputPruner()})
    groups = []
    covered: set[int] = set()
    # One group per producer not already in a group (as get_all_groups does), but a
    # group torch-pruning cannot build is reported on its own instead of ending the walk.
    for name, module in model.named_modules():
        if (not isinstance(module, PRODUCERS) or id(module) in covered or name in inside
                or name in projections):
            continue
        try:
            pruner = graph.get_pruner_of_module(module)
            group = graph.get_pruning_group(module, pruner.prune_out_channels,
                                            list(range(pruner.get_out_channels(module))))
        except Exception as error:  # noqa: BLE001
            outcome.layers[name].status = "unsupported"
            outcome.layers[name].reason = (
                "torch-pruning could not follow where this layer's channels go "
                f"({type(error).__name__}: {str(error)[:120]}), so it is left whole")
            covered.add(id(module))
            continue
        for item in group:
            if graph.is_out_channel_pruning_fn(item.dep.handler):
                covered.add(id(item.dep.target.module))
        groups.append(group)
    outcome.analyse_seconds = time.perf_counter() - started
    for group in groups:
        root = group[0].dep.target.module
        root_name = names.get(root)
        members = [names.get(item.dep.target.module) for item in group
                   if (isinstance(item.dep.target.module, PRODUCERS)
                       or pruned_by_heads(item.dep.target.module)) and _is_out_fn(item.dep)]
        blocked = _blocker(group, names, omitted)
        if blocked is not None:
            status, reason = blocked
            for member in members:
                if member in outcome.layers and outcome.layers[member].status == "unchanged":
                    outcome.layers[member].status = status
                    outcome.layers[member].reason = reason
            continue
        n = len(group[0].idxs)
        parts = channel_groups(group)
        if n % parts:
            for member in members:
                if member in outcome.layers:
                    outcome.layers[member].status = "unsupported"
                    outcome.layers[member].reason = (f"{n} channels do not split into the "
                                                     f"{parts} groups of a grouped layer")
            continue
        per_part = n // parts
        remove = channels_to_remove(per_part, percent)  # the rule, applied per channel group
        if remove <= 0:
            for member in members:
                if member in outcome.layers:
                    outcome.layers[member].reason = (
                        f"percent={percent} removes none of its {per_part} channels")
            continue
        # Sum the scores of the same position across channel groups; drop the lowest
        # positions from every group (ties by index, so results are reproducible).
        scores = group_scores(group, n).view(parts, per_part).sum(0)
        order = sorted(range(per_part), key=lambda i: (float(scores[i]), i))
        chosen = sorted(order[:remove])
        victims = [part * per_part + position for part in range(parts) for position in chosen]
        try:
            pruning = graph.get_pruning_group(root, group[0].dep.handler, idxs=victims)
            if not graph.check_pruning_group(pruning):
                raise ValueError("torch-pruning refused the group")
            head_dims = {id(item.dep.target.module): (item.dep.target.module,
                                                       item.dep.target.module.head_dim)
                         for item in pruning if pruned_by_heads(item.dep.target.module)}
            pruning.prune()
            for attention, old_head_dim in head_dims.values():
                keep_attention_scale(attention, old_head_dim)
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
        module = model.get_submodule(name)
        layer.channels_after = (structure_channels(module) if isinstance(module, UNSUPPORTED)
                                else out_channels(module))
    return outcome
