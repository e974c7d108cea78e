"""The PyTorch engine's analysis, rewrite and masking on torch-pruning's DepGraph.

torch-pruning (DepGraph, CVPR 2023) traces the model and groups every layer whose
channels are tied to a producer's output channels (BatchNorm, residual adds,
concatenations, flatten into a linear layer, depthwise convolutions). This module
turns its groups into the pipeline's :class:`ChannelGroup` (L1 scores from the
producers' filters only, model outputs and structures it cannot keep valid
marked), rewrites a *copy* of the model for a plan (one bad group never fails the
job), and masks the original for the exactness check.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from edgeai.pruning.pipeline import Analysis, ChannelGroup, LayerInfo, Plan
from edgeai.pruning.report import LayerStatus

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


class RecurrentInputPruner(tp.pruner.function.BasePruningFunc):
    """Lets a producer feeding a GRU/LSTM/RNN lose channels: the recurrent layer's
    first-layer input weights lose the matching columns. Its hidden size is kept
    (its gates make that a structure of its own), so its outputs never shrink."""

    TARGET_MODULES = (nn.GRU, nn.LSTM, nn.RNN)

    def prune_out_channels(self, layer: nn.Module, idxs):
        raise ValueError(f"{type(layer).__name__} hidden units are not pruned")

    def prune_in_channels(self, layer: nn.Module, idxs):
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


def _is_out_fn(dep) -> bool:
    name = getattr(dep.handler, "__name__", str(dep.handler))
    return "out_channels" in name


def group_scores(group, root_channels: int) -> torch.Tensor:
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


CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
         nn.ConvTranspose3d)


def channel_groups(group) -> int:
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


def trace(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model`` (recurrent layers' inputs prunable)."""
    recurrent = RecurrentInputPruner()
    return tp.DependencyGraph().build_dependency(
        model, example_inputs=example,
        customized_pruners={nn.GRU: recurrent, nn.LSTM: recurrent, nn.RNN: recurrent})


def _layers(model: nn.Module) -> tuple[list[LayerInfo], set[str], set[str]]:
    """Every layer with output channels in module order; producers inside structures
    left whole; and the out_proj of attention layers pruned by heads."""
    layers: dict[str, LayerInfo] = {}
    inside: dict[str, str] = {}
    projections: set[str] = set()
    for name, module in model.named_modules():
        kind = type(module).__name__
        if pruned_by_heads(module):
            layers[name] = LayerInfo(name, kind, module.embed_dim)
            projections.update(f"{name}.{child}" for child, sub in module.named_modules()
                               if child and isinstance(sub, PRODUCERS))
        elif left_whole(module):
            why = f"{kind} is left whole: {why_whole(module)}"
            layers[name] = LayerInfo(name, kind, structure_channels(module),
                                     (LayerStatus.UNSUPPORTED, why))
            for child_name, child in module.named_modules():
                if child_name and isinstance(child, PRODUCERS):
                    inside[f"{name}.{child_name}"] = f"part of {name}; {why}"
        elif isinstance(module, PRODUCERS):
            layers[name] = LayerInfo(name, kind, out_channels(module))
    for name, why in inside.items():
        layers[name].fixed = (LayerStatus.UNSUPPORTED, why)
    for name in projections:
        layers.pop(name, None)  # part of its attention layer's row
    return list(layers.values()), set(inside), projections


def _blocked(group, names: dict) -> tuple[LayerStatus, str] | None:
    """Why torch-pruning's ``group`` must stay whole, or None."""
    for item in group:
        target = item.dep.target
        # torch-pruning marks outputs with an _OutputOp node, except when a layer's
        # result is returned as it is: then its node simply has no consumers.
        if type(target.module).__name__ == "_OutputOp" or (
                _is_out_fn(item.dep) and not target.outputs):
            return LayerStatus.OUTPUT, "produces a model output"
    for item in group:
        module = item.dep.target.module
        if isinstance(module, nn.RNNBase) and not _is_out_fn(item.dep):
            continue  # RecurrentInputPruner trims its input weights
        if left_whole(module):
            return (LayerStatus.UNSUPPORTED, f"channels feed {names.get(module)} "
                                             f"({type(module).__name__}), which is left whole")
    return None


def _inexact(group) -> str | None:
    for item in group:
        if isinstance(item.dep.target.module, (nn.LayerNorm, nn.GroupNorm)):
            return f"pass through {type(item.dep.target.module).__name__}, whose statistics " \
                   "change when channels go"
    return None


def analyse(model: nn.Module, example: torch.Tensor) -> Analysis:
    """The model's layers with channels and its channel groups (one per producer not
    already in a group, as torch-pruning's get_all_groups; a group it cannot build is
    reported on its own layer instead of ending the walk)."""
    names = {module: name for name, module in model.named_modules()}
    layers, inside, projections = _layers(model)
    by_name = {layer.name: layer for layer in layers}
    graph = trace(model, example)
    groups, covered = [], set()
    for name, module in model.named_modules():
        if (not isinstance(module, PRODUCERS) or id(module) in covered or name in inside
                or name in projections):
            continue
        try:
            pruner = graph.get_pruner_of_module(module)
            group = graph.get_pruning_group(module, pruner.prune_out_channels,
                                            list(range(pruner.get_out_channels(module))))
        except Exception as error:  # noqa: BLE001
            by_name[name].fixed = (LayerStatus.UNSUPPORTED, (
                "torch-pruning could not follow where this layer's channels go "
                f"({type(error).__name__}: {str(error)[:120]}), so it is left whole"))
            covered.add(id(module))
            continue
        carriers = []
        for item in group:
            if _is_out_fn(item.dep):
                covered.add(id(item.dep.target.module))
                carriers.append(names.get(item.dep.target.module))
        members = [names[item.dep.target.module] for item in group
                   if _is_out_fn(item.dep) and names.get(item.dep.target.module) in by_name]
        n = len(group[0].idxs)
        groups.append(ChannelGroup(
            key=name, members=members, carriers=[c for c in carriers if c],
            scores=group_scores(group, n).numpy(), blocks=channel_groups(group),
            blocked=_blocked(group, names), inexact=_inexact(group)))
    return Analysis(layers=layers, groups=groups)


def _pruning_group(graph: tp.DependencyGraph, model: nn.Module, key: str, idxs: list[int]):
    root = model.get_submodule(key)
    return graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels,
                                   idxs=idxs)


def rewrite(model: nn.Module, example: torch.Tensor, plan: Plan,
            ) -> tuple[nn.Module, dict[str, str]]:
    """A pruned copy of ``model`` and the groups that could not be rewired, with why."""
    pruned = copy.deepcopy(model)
    graph = trace(pruned, example)
    failed = {}
    for key, idxs in plan.removal.items():
        try:
            group = _pruning_group(graph, pruned, key, idxs)
            if not graph.check_pruning_group(group):
                raise ValueError("torch-pruning refused the group")
            head_dims = {id(item.dep.target.module): (item.dep.target.module,
                                                       item.dep.target.module.head_dim)
                         for item in group if pruned_by_heads(item.dep.target.module)}
            group.prune()
            for attention, old_head_dim in head_dims.values():
                keep_attention_scale(attention, old_head_dim)
        except Exception as error:  # noqa: BLE001 - one bad group must not fail the job
            failed[key] = f"{type(error).__name__}: {error}"
    return pruned, failed


def mask(model: nn.Module, example: torch.Tensor, plan: Plan) -> nn.Module:
    """Zero, in ``model`` itself, every weight that reads or writes a planned channel."""
    graph = trace(model, example)
    with torch.no_grad():
        for key, idxs in plan.removal.items():
            for item in _pruning_group(graph, model, key, idxs):
                _zero(item.dep.target.module, list(item.idxs), _is_out_fn(item.dep))
    return model


def _zero(module: nn.Module, idxs: list[int], out: bool) -> None:
    """Zero ``module``'s weights for channels ``idxs`` of its output (``out``) or input."""
    if not idxs:
        return
    if isinstance(module, nn.MultiheadAttention):
        # torch-pruning narrows the embedding as one: the same positions of q, k, v
        # (rows), of the input (columns), and of out_proj on both sides.
        embed = module.embed_dim
        rows = [i + k * embed for k in range(3) for i in idxs]
        module.in_proj_weight[rows] = 0
        module.in_proj_weight[:, idxs] = 0
        if module.in_proj_bias is not None:
            module.in_proj_bias[rows] = 0
        _zero(module.out_proj, idxs, out=True)
        _zero(module.out_proj, idxs, out=False)
        return
    if isinstance(module, nn.RNNBase):
        if not out:
            for name in ("weight_ih_l0", "weight_ih_l0_reverse"):
                if hasattr(module, name):
                    getattr(module, name)[:, idxs] = 0
        return
    if not isinstance(module, PRODUCERS):
        return  # per-channel layers (BatchNorm, ...) need nothing: their consumers are zeroed
    weight = module.weight
    transposed = isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))
    groups = getattr(module, "groups", 1)
    if out:
        if transposed:
            per = weight.shape[1]
            for i in idxs:
                weight[(i // per) * (weight.shape[0] // groups):
                       (i // per + 1) * (weight.shape[0] // groups), i % per] = 0
        else:
            weight[idxs] = 0
        if module.bias is not None:
            module.bias[idxs] = 0
        return
    if transposed:
        weight[idxs] = 0
    elif groups == 1:
        weight[:, idxs] = 0
    else:
        per_in, per_out = weight.shape[1], weight.shape[0] // groups
        for i in idxs:
            block = i // per_in
            weight[block * per_out:(block + 1) * per_out, i % per_in] = 0


def layer_outputs(model: nn.Module, batch: torch.Tensor, names: list[str],
                  ) -> dict[str, np.ndarray]:
    """Outputs of the named modules on ``batch``, as arrays (first tensor of a tuple)."""
    captured: dict[str, np.ndarray] = {}
    handles = []
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue

        def hook(_module, _inputs, output, name=name):
            tensor = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(tensor, torch.Tensor):
                captured[name] = tensor.detach().numpy()

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(batch)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every producer and structure, by module name."""
    return {name: (structure_channels(module) if isinstance(module, UNSUPPORTED)
                   else out_channels(module))
            for name, module in model.named_modules()
            if isinstance(module, PRODUCERS + UNSUPPORTED)}
