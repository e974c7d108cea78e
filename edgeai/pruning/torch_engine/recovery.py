"""Getting accuracy back without training, and a little training, for torch models.

* Least-squares refit (He et al. 2017, "Channel Pruning for Accelerating Very Deep
  Neural Networks"): a Conv2d/Conv1d (ungrouped) or Linear that lost input channels
  gets the weights that best reproduce, from its remaining inputs, the original
  layer's outputs on the calibration data (ridge regularised, sampled rows). A refit
  is kept only if it lowers the layer's error on calibration samples it did not fit.
* BatchNorm re-estimation: running statistics recomputed on the calibration data —
  after the refit, or (``measured_statistics``) before it and after each refit layer,
  with the targets taken from the original with its statistics measured alike.
* One epoch of fine-tuning: Adam, the loss that fits the metric and the outputs.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeai.pruning.metric import MSE, Data

MAX_ROWS = 8192
RIDGE = 1e-3
BATCH = 32
LEARNING_RATE = 1e-3


def kept_channels(model: nn.Module, example: torch.Tensor, plan: Any,
                  ) -> dict[str, dict[str, list[int] | None]]:
    """For every module the plan touches: the output and input channels it keeps
    (None where that side keeps all), from the same dependency groups the rewrite used."""
    from edgeai.pruning.torch_engine.pruner import _is_out_fn, _pruning_group, trace

    graph = trace(model, example)
    names = {module: name for name, module in model.named_modules()}
    removed: dict[str, dict[str, set[int]]] = {}
    for key, idxs in plan.removal.items():
        for item in _pruning_group(graph, model, key, idxs):
            name = names.get(item.dep.target.module)
            if name is not None:
                side = "out" if _is_out_fn(item.dep) else "in"
                removed.setdefault(name, {"out": set(), "in": set()})[side].update(item.idxs)
    kept: dict[str, dict[str, list[int] | None]] = {}
    for name, sides in removed.items():
        module = model.get_submodule(name)
        widths = {"out": getattr(module, "out_features", getattr(module, "out_channels", 0)),
                  "in": getattr(module, "in_features", getattr(module, "in_channels", 0))}
        kept[name] = {side: ([i for i in range(widths[side]) if i not in sides[side]]
                             if sides[side] else None) for side in ("out", "in")}
    return kept


def _capture(model: nn.Module, names: list[str], data: Data, inputs: bool,
             ) -> dict[str, torch.Tensor]:
    """The inputs (or outputs) of the named modules over ``data``, concatenated."""
    found: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    handles = []
    for name in names:
        def hook(_module, args, output, name=name):
            found[name].append((args[0] if inputs else output).detach())
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()
            for x, _ in data.chunks():
                model(torch.as_tensor(x))
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in found.items() if parts}


def _rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as the rows its weight multiplies (im2col for a convolution)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, stride = (1, module.kernel_size[0]), (1, module.stride[0])
        padding, dilation = (0, module.padding[0]), (1, module.dilation[0])
    else:
        kernel, stride, padding, dilation = (module.kernel_size, module.stride,
                                             module.padding, module.dilation)
    patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def _targets(module: nn.Module, y: torch.Tensor, keep_out: list[int]) -> torch.Tensor:
    """The original layer's outputs at the kept channels, one row per position."""
    if isinstance(module, nn.Linear):
        return y.reshape(-1, y.shape[-1])[:, keep_out]
    return y[:, keep_out].reshape(y.shape[0], len(keep_out), -1).transpose(1, 2) \
        .reshape(-1, len(keep_out))


def refittable(module: nn.Module) -> bool:
    """Layers whose weight is a plain matrix over their (patched) input."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1 \
        and isinstance(module.padding, tuple)


def _solve(rows: torch.Tensor, targets: torch.Tensor, bias: bool) -> torch.Tensor:
    """Ridge least squares: [rows 1] @ W ~= targets."""
    a = rows.double()
    if bias:
        a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], dim=1)
    gram = a.T @ a
    gram += torch.eye(len(gram), dtype=a.dtype) * RIDGE * gram.diagonal().mean().clamp_min(1e-12)
    return torch.linalg.solve(gram, a.T @ targets.double())


def refit_layers(pruned: nn.Module, original: nn.Module, kept: dict[str, dict[str, list[int]]],
                 fit: Data, check: Data, measured_statistics: bool = False,
                 ) -> dict[str, list[str]]:
    """Refit every layer that lost input channels (see the module docstring). With
    ``measured_statistics``, BatchNorm statistics are measured on ``fit`` first — the
    pruned model's, and the original's for the targets (a copy: training leaves running
    statistics that lag behind the weights) — and again after each refit, so that every
    layer is fitted to the statistics it will run with."""
    names = [name for name, entry in kept.items()
             if entry["in"] is not None and refittable(pruned.get_submodule(name))]
    if not names or len(fit) < 4 or len(check) < 1:
        return {"refit": [], "refit_rejected": []}
    if measured_statistics:
        original = copy.deepcopy(original)
        reestimate_batchnorm(original, fit)
        reestimate_batchnorm(pruned, fit)
    report: dict[str, list[str]] = {"refit": [], "refit_rejected": []}
    originals_out = _capture(original, names, fit, inputs=False)
    originals_check = _capture(original, names, check, inputs=False)
    for name in names:  # in module order: each refit sees the earlier ones
        module = pruned.get_submodule(name)
        keep_out = kept[name]["out"] or list(range(_out_width(module)))
        x_fit = _capture(pruned, [name], fit, inputs=True)[name]
        x_check = _capture(pruned, [name], check, inputs=True)[name]
        rows, targets = _rows(module, x_fit), _targets(module, originals_out[name], keep_out)
        if len(rows) > MAX_ROWS:
            pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
            rows, targets = rows[pick[:MAX_ROWS]], targets[pick[:MAX_ROWS]]
        solution = _solve(rows, targets, module.bias is not None).float()
        weight = solution[:rows.shape[1]].T.reshape(module.weight.shape)
        check_rows = _rows(module, x_check)
        check_targets = _targets(module, originals_check[name], keep_out)
        current = _error(check_rows, check_targets, module.weight, module.bias)
        candidate = _error(check_rows, check_targets, weight,
                           solution[-1] if module.bias is not None else None)
        if candidate < current:
            with torch.no_grad():
                module.weight.copy_(weight)
                if module.bias is not None:
                    module.bias.copy_(solution[-1])
            report["refit"].append(name)
            if measured_statistics:
                reestimate_batchnorm(pruned, fit)
        else:
            report["refit_rejected"].append(name)
    return report


def _out_width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _error(rows: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
           bias: torch.Tensor | None) -> float:
    with torch.no_grad():
        predicted = rows @ weight.reshape(weight.shape[0], -1).T
        if bias is not None:
            predicted = predicted + bias
        return float(((predicted - targets) ** 2).mean())


def reestimate_batchnorm(model: nn.Module, data: Data) -> int:
    """Recompute every BatchNorm's running statistics on ``data``; return how many."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    model.eval()
    saved = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
        norm.train()
    try:
        with torch.no_grad():
            for x, _ in data.chunks(BATCH):
                if len(x) > 1:
                    model(torch.as_tensor(x))
    finally:
        for norm, momentum in zip(norms, saved, strict=True):
            norm.momentum = momentum
        model.eval()
    return len(norms)


def _loss(output: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == MSE:
        return F.mse_loss(output, target.float())
    log_probs = output if bool((output <= 0).all()) else F.log_softmax(output, dim=1)
    if target.ndim == output.ndim:  # one-hot
        target = target.argmax(dim=1)
    return F.nll_loss(log_probs, target.long())


def train_epoch(model: nn.Module, data: Data, kind: str, epoch: int,
                optimizers: dict[int, Any]) -> None:
    """One epoch of Adam over shuffled mini-batches of ``data``."""
    optimizer = optimizers.setdefault(id(model), torch.optim.Adam(model.parameters(),
                                                                  lr=LEARNING_RATE))
    order = np.random.default_rng(epoch).permutation(len(data))
    model.train()
    try:
        for start in range(0, len(order), BATCH):
            batch = data.take(order[start:start + BATCH])
            if len(batch) < 2:
                continue
            optimizer.zero_grad()
            loss = _loss(model(torch.as_tensor(batch.x)), torch.as_tensor(batch.y), kind)
            loss.backward()
            optimizer.step()
    finally:
        model.eval()
