"""``TorchPruner``: the guide's four PyTorch inputs in, a pruned model out."""
from __future__ import annotations

import os
import time

from edgeai.pruning.base import Engine, PruneJob, PruneResult, PruningError, empty_report

MAX_EVAL_SAMPLES = 256


class TorchPruner(Engine):
    """L1-norm filter pruning of an ``nn.Module`` built from the user's class file."""

    framework = "pytorch"

    def warm_up(self) -> None:
        """Import torch, torch-pruning and torchsummary before a job arrives."""
        import torch
        import torch_pruning  # noqa: F401
        import torchsummary  # noqa: F401

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        # The first torch.export and dependency-graph trace in a process are slow;
        # pay for them here, on a tiny model, instead of in the first job.
        import tempfile

        import torch_pruning as tp

        tiny = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
                                   torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2)).eval()
        example = torch.randn(1, 1, 8, 8)
        tp.DependencyGraph().build_dependency(tiny, example_inputs=example)
        with tempfile.TemporaryDirectory() as folder:
            torch.export.save(torch.export.export(tiny, (example,)),
                              os.path.join(folder, "warm.pt2"))

    def untrusted_code(self, job: PruneJob) -> str | None:
        """The class file is Python that runs to build the model."""
        return "a class file (Python code)"

    def prune(self, job: PruneJob) -> PruneResult:
        """Load, prune, verify, save and report; raises PruningError with the reason."""
        import torch

        from edgeai.pruning.torch_engine import classfile, loading
        from edgeai.pruning.torch_engine.dataset import load_dataset
        from edgeai.pruning.torch_engine.pruner import PRODUCERS, prune_model
        from edgeai.pruning.torch_engine.report import (
            count_params_macs,
            evaluate,
            export_program,
            summary_text,
        )

        report = empty_report("pytorch", job.percent)
        timings = report["timings"]
        started = time.perf_counter()
        options = job.options
        model_name = options.get("model_name") or "Net"
        input_size = _input_size(options.get("input_size"))
        module_name = classfile.module_name_for(job.input_names.get("class_def", "model.py"))
        module = classfile.import_class_file(job.inputs["class_def"], module_name)
        model = loading.build_model(module, model_name)
        state = loading.load_state_dict_file(job.inputs["weights"],
                                             job.input_names.get("weights", "weights.pth"))
        loading.apply_weights(model, state, model_name)
        model.eval()
        example = torch.randn(1, *input_size)
        try:
            with torch.no_grad():
                reference = model(example)
        except Exception as error:  # noqa: BLE001
            raise PruningError(f"input_size={','.join(map(str, input_size))} does not fit "
                               f"{model_name}: {type(error).__name__}: {error}") from None
        valid = [name for name, m in model.named_modules() if name]
        unknown = [name for name in job.omitted if name not in valid]
        if unknown:
            prunable = [n for n, m in model.named_modules() if isinstance(m, PRODUCERS)]
            raise PruningError(f"ommitted names layers that {model_name} does not have: "
                               f"{', '.join(unknown)}. Layers with channels: "
                               f"{', '.join(prunable[:60])}" + (" ..." if len(prunable) > 60
                                                                 else "") + ".")
        samples = labels = None
        if "dataset" in job.inputs:
            samples, labels = load_dataset(job.inputs["dataset"],
                                           job.input_names.get("dataset", "dataset.pth"))
            samples = samples[:MAX_EVAL_SAMPLES].float()
            labels = labels[:MAX_EVAL_SAMPLES] if labels is not None else None
            if labels is not None and labels.dim() == 2 and labels.shape[1] > 1:
                labels = labels.argmax(dim=1)  # one-hot labels
            if labels is not None and labels.shape != (len(samples),):
                report["warnings"].append(f"dataset labels have shape {list(labels.shape)}, "
                                          "not one class per sample; accuracy not measured")
                labels = None
            if list(samples.shape[1:]) != input_size:
                raise PruningError(f"dataset samples have shape {list(samples.shape[1:])}, but "
                                   f"input_size is {input_size}.")
            report["accuracy_before"] = evaluate(model, samples, labels)
        report["params_before"], report["macs_before"] = count_params_macs(model, example)
        report["file_size_before"] = os.path.getsize(job.inputs["weights"])
        timings["load"] = round(time.perf_counter() - started, 4)

        started = time.perf_counter()
        try:
            outcome = prune_model(model, example, job.percent, _with_children(model, job.omitted))
        except PruningError:
            raise
        except Exception as error:  # noqa: BLE001 - tracing failed
            raise PruningError(f"The model could not be traced for pruning: "
                               f"{type(error).__name__}: {error}") from None
        timings["analyse"] = round(outcome.analyse_seconds, 4)
        timings["rewrite"] = round(time.perf_counter() - started - outcome.analyse_seconds, 4)
        report["layers"] = [vars(layer) for layer in outcome.layers.values()]
        report["warnings"].extend(outcome.warnings)
        layers = list(outcome.layers.values())
        if job.percent > 0 and not any(layer.status == "pruned" for layer in layers):
            reasons = sorted({f"{layer.name}: {layer.reason}" for layer in layers
                              if layer.reason})
            raise PruningError("Nothing prunable in this model at this percent: "
                               + ("; ".join(reasons[:12]) or "no convolution or linear layer"))
        with torch.no_grad():
            try:
                pruned_out = model(example)
            except Exception as error:  # noqa: BLE001
                raise PruningError(f"The pruned model no longer runs ({error}); nothing was "
                                   "returned.") from None
        if _shapes(pruned_out) != _shapes(reference):
            raise PruningError("Pruning changed the model's output shape; nothing was returned.")
        report["params_after"], report["macs_after"] = count_params_macs(model, example)
        if samples is not None:
            report["accuracy_after"] = evaluate(model, samples, labels)

        started = time.perf_counter()
        info = dict(report)
        main = job.output_stem + ".pt"
        torch.save((model, info), os.path.join(job.output_dir, main))
        state_name = job.output_stem + ".state_dict.pt"
        sizes = {name: {"in": getattr(m, "in_channels", getattr(m, "in_features", None)),
                        "out": getattr(m, "out_channels", getattr(m, "out_features", None))}
                 for name, m in model.named_modules() if isinstance(m, PRODUCERS)}
        torch.save({"state_dict": model.state_dict(), "layer_sizes": sizes},
                   os.path.join(job.output_dir, state_name))
        pt2_name, why = export_program(model, example, job.output_dir, job.output_stem)
        if why:
            report["warnings"].append(f"torch.export failed, no pt2 download: {why}")
        report["artifacts"] = {"model": main, "state_dict": state_name, "pt2": pt2_name}
        report["file_size_after"] = os.path.getsize(os.path.join(job.output_dir, main))
        timings["save"] = round(time.perf_counter() - started, 4)
        message = summary_text(model, input_size)
        return PruneResult(artifact=main, message=message, report=report)


def _with_children(model, omitted) -> set[str]:  # noqa: ANN001
    """Omitting a container (``layer1``) omits every layer inside it."""
    names = [name for name, _ in model.named_modules() if name]
    return {name for name in names
            if any(name == prefix or name.startswith(prefix + ".") for prefix in omitted)}


def _input_size(value) -> list[int]:  # noqa: ANN001 - a list or "1,28,28"
    """``input_size`` as a list of positive ints (batch dimension excluded).

    Raises :class:`PruningError` when it is missing or malformed.
    """
    if isinstance(value, str):
        value = [part for part in value.replace(" ", "").split(",") if part]
    try:
        size = [int(d) for d in value or []]
    except (TypeError, ValueError):
        size = []
    if not size or any(d <= 0 for d in size):
        raise PruningError(f"input_size must be positive integers without the batch "
                           f"dimension, e.g. 1,28,28; got {value!r}.")
    return size


def _shapes(output) -> list:  # noqa: ANN001
    import torch

    if isinstance(output, torch.Tensor):
        return [tuple(output.shape)]
    if isinstance(output, (list, tuple)):
        return [s for item in output for s in _shapes(item)]
    if isinstance(output, dict):
        return [s for key in sorted(output) for s in _shapes(output[key])]
    return []
