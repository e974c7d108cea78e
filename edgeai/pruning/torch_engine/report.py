"""Measurements for the report: parameters, MACs, accuracy and the torchsummary table."""
from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import torch
from torch import nn

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def count_params_macs(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """Parameters, and multiply-accumulates for one sample by the rule both engines
    share: a convolution counts output elements x kernel size x input channels per
    group (a transposed one: input elements x kernel size x output channels per
    group), a linear layer output elements x input features; other layers count 0."""
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, CONV):
            kernel = math.prod(module.kernel_size)
            total += output[0].numel() * kernel * (module.in_channels // module.groups)
        elif isinstance(module, CONV_T):
            kernel = math.prod(module.kernel_size)
            total += inputs[0][0].numel() * kernel * (module.out_channels // module.groups)
        elif isinstance(module, nn.Linear):
            total += output[0].numel() * module.in_features

    handles = [module.register_forward_hook(hook) for module in model.modules()
               if isinstance(module, CONV + CONV_T + (nn.Linear,))]
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    return sum(p.numel() for p in model.parameters()), int(total)


def _widths(module: nn.Module) -> tuple[int | None, int | None]:
    """(input, output) channels of a layer that has them."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, CONV + CONV_T):
        return module.in_channels, module.out_channels
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features, module.num_features
    return None, None


def cost_terms(model: nn.Module, example: torch.Tensor, analysis) -> list:
    """Every leaf module that runs, as a :class:`LayerCost`: its MACs (the rule of
    :func:`count_params_macs`) and output elements per sample, and how many of its
    input and output channels each channel group holds (from torch-pruning's
    dependency graph), for the latency estimate."""
    from collections import Counter

    from edgeai.pruning.structure import LayerCost
    from edgeai.pruning.torch_engine.pruner import _is_out_fn, _pruning_group, trace

    graph = trace(model, example)
    names = {module: name for name, module in model.named_modules()}
    sides: dict[str, dict[str, Counter]] = {"in": {}, "out": {}}
    for group in analysis.groups:
        try:
            items = _pruning_group(graph, model, group.key, list(range(len(group.scores))))
        except Exception:  # noqa: BLE001 - a group torch-pruning cannot build stays whole
            continue
        for item in items:
            name = names.get(item.dep.target.module)
            if name:
                side = sides["out" if _is_out_fn(item.dep) else "in"]
                side.setdefault(name, Counter())[group.key] += len(set(item.idxs))
    terms = []

    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            return
        name = names.get(module, "")
        macs = 0
        if isinstance(module, CONV):
            macs = output[0].numel() * math.prod(module.kernel_size) * (
                module.in_channels // module.groups)
        elif isinstance(module, CONV_T):
            macs = inputs[0][0].numel() * math.prod(module.kernel_size) * (
                module.out_channels // module.groups)
        elif isinstance(module, nn.Linear):
            macs = output[0].numel() * module.in_features
        width_in, width_out = _widths(module)
        counts = {side: dict(sides[side].get(name, {})) for side in ("in", "out")}
        terms.append(LayerCost(
            name=name, macs=int(macs), elements=int(output[0].numel()),
            inputs=counts["in"], fixed_inputs=max(0, (width_in or 0) - sum(counts["in"].values())),
            outputs=counts["out"],
            fixed_outputs=max(0, (width_out or 0) - sum(counts["out"].values())),
            depthwise=isinstance(module, CONV) and module.groups > 1
            and module.groups == module.in_channels))

    handles = [module.register_forward_hook(hook) for module in model.modules()
               if not list(module.children())]
    try:
        with torch.no_grad():
            model.eval()(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    return terms


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> float | None:
    """Top-1 accuracy on ``(x, y)`` in eval mode; None without labels."""
    if y is None:
        return None
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(x[i:i + 64]).argmax(dim=1) for i in range(0, len(x), 64)])
    return round(float((predictions == y.view(-1).long()).float().mean()), 4)


def summary_text(model: nn.Module, input_size: list[int]) -> str:
    """torchsummary's table of ``model`` as plain text (what the guide's status shows)."""
    from torchsummary import summary

    buffer = io.StringIO()
    hooks = {module: dict(module._forward_hooks) for module in model.modules()}
    try:
        with contextlib.redirect_stdout(buffer):
            summary(model, tuple(input_size), device="cpu")
        return buffer.getvalue()
    except Exception as error:  # noqa: BLE001 - e.g. a layer returning None in a tuple
        # torchsummary leaves its hooks behind when it fails: put the model back.
        for module, saved in hooks.items():
            module._forward_hooks.clear()
            module._forward_hooks.update(saved)
        return fallback_summary(model, input_size, error)


def fallback_summary(model: nn.Module, input_size: list[int], error: Exception) -> str:
    """A torchsummary-shaped table for models torchsummary cannot hook (it fails on
    layers that return ``None`` among their outputs, like MultiheadAttention)."""
    rows: list[tuple[str, str, int]] = []
    counts: dict[str, int] = {}

    def first_shape(output):
        if isinstance(output, torch.Tensor):
            return [-1] + list(output.shape[1:])
        for item in output if isinstance(output, (list, tuple)) else []:
            if isinstance(item, torch.Tensor):
                return [-1] + list(item.shape[1:])
        return []

    def hook(module, _inputs, output):
        kind = type(module).__name__
        counts[kind] = counts.get(kind, 0) + 1
        params = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append((f"{kind}-{len(rows) + 1}", str(first_shape(output)), params))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if not list(m.children())]
    try:
        with torch.no_grad():
            model.eval()(torch.rand(2, *input_size))
    finally:
        for handle in handles:
            handle.remove()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    line = "-" * 64
    out = [line, "{:>20}  {:>25} {:>15}".format("Layer (type)", "Output Shape", "Param #"),
           "=" * 64]
    out += ["{:>20}  {:>25} {:>15}".format(name, shape, f"{params:,}")
            for name, shape, params in rows]
    out += ["=" * 64, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}", line,
            f"(torchsummary could not trace this model: {type(error).__name__}; "
            "table made from forward hooks)", ""]
    return "\n".join(out)
