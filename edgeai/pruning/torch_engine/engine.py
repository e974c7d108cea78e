"""``TorchPruner``: the PyTorch steps of the pipeline (the guide's four inputs).

torch is imported inside the methods, so the server can read :data:`SPEC` and call
:meth:`TorchPruner.untrusted_code` without importing it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgeai.pruning.base import PruneJob, PruningError
from edgeai.pruning.metric import Data
from edgeai.pruning.pipeline import Analysis, Engine, Loaded, Plan
from edgeai.pruning.report import JobReport
from edgeai.pruning.spec import (
    COMMON_PARAMS,
    INPUT_SIZE_EXAMPLE,
    PLAN_FILE_HELP,
    EngineSpec,
    FileRole,
    Param,
    ParameterError,
    check_percent_or_target,
    formats_param,
    parse_class_name,
    parse_input_size,
    runtime_param,
)
from edgeai.pruning.structure import LayerCost

MAX_EVAL_SAMPLES = 2048

PROGRAM_HELP = ("A torch.export program saved with torch.export.save (.pt2), instead of "
                "weights, class_def and model_name: it carries its layers, weights and input "
                "shape")


def check_torch_files(values: dict[str, Any], files: set[str]) -> None:
    """Either a program (``model``, a .pt2) or the guide's ``weights`` and ``class_def``
    (with ``input_size``); ``model_name`` only with a class file."""
    if "model" in files:
        given = [name for name in ("weights", "class_def") if name in files]
        if values.get("model_name") is not None:
            given.append("model_name")
        if given:
            raise ParameterError(
                f"Send either model (a .pt2 program) or weights and class_def with "
                f"model_name, not both: got model and {' and '.join(given)}. A .pt2 carries "
                "its layers, weights and input shape.")
        return
    for name, other in (("weights", "class_def"), ("class_def", "weights")):
        if name not in files:
            extensions = ", ".join(next(role.extensions for role in SPEC.files
                                        if role.name == name))
            raise ParameterError(
                f"The form file '{name}' is required ({extensions})"
                + (f" with '{other}'" if other in files else "")
                + "; or send one torch.export program as the form file 'model' (.pt2) "
                "instead of weights and class_def.")
    if values.get("input_size") is None:
        raise ParameterError(f"input_size is required with weights and class_def: "
                             f"{INPUT_SIZE_EXAMPLE} (a .pt2 program carries its own).")


def inspect_program(values: dict[str, Any], uploads: Mapping[str, IO[bytes]]) -> None:
    """Read the .pt2's input shape from the archive (zip and JSON, no torch); refuse a
    file that is not a program, and an ``input_size`` that disagrees with it; fill
    ``input_size`` in when absent."""
    if "model" not in uploads:
        return
    from edgeai.pruning.torch_engine.archive import ArchiveError, read_facts

    try:
        facts = read_facts(uploads["model"])
    except ArchiveError as error:
        raise ParameterError(f"model: {error}") from None
    given = values.get("input_size")
    if given is not None and list(given) != facts.input_size:
        raise ParameterError(
            f"input_size={','.join(map(str, given))} does not match the program: its input "
            f"{facts.input_name!r} is {','.join(map(str, facts.input_size))} without the "
            "batch dimension. Leave input_size out (the program carries it) or send "
            f"input_size={','.join(map(str, facts.input_size))}.")
    values["input_size"] = facts.input_size


PROGRAM_IS_CODE = ("a torch.export program (.pt2): loading one can run code from it "
                   "(torch.export.load unpickles parts marked as pickles and evaluates its "
                   "shape expressions; ExportedProgram.module() executes its guard code)")

SPEC = EngineSpec(
    name="pytorch", endpoint="pt_prune",
    # Swagger's summary ends at the first dot: none before the end.
    summary="Submit a PyTorch model for pruning: an exported program (model, a pt2 file "
            "saved with torch export) or the guide's state_dict with its class file",
    params=(*COMMON_PARAMS, formats_param(("onnx",)),
            runtime_param(("torch", "onnxruntime"), {"onnxruntime": "onnx"}),
            Param("input_size", "Shape of one input without the batch dimension, e.g. "
                  "1,28,28: required with weights and class_def; a .pt2 program carries its "
                  "own (if given, it must agree)", parse_input_size, example="1,28,28"),
            Param("model_name", "The class in class_def to build with no arguments (not with "
                  "a .pt2 model)", parse_class_name, default="Net", example="Net")),
    files=(FileRole("model", (".pt2",), PROGRAM_HELP, required=False),
           FileRole("weights", (".pth", ".pt", ".bin", ".safetensors"),
                    "state_dict saved with torch.save (.pth/.pt) or .safetensors; with "
                    "class_def, instead of a .pt2 model", required=False),
           FileRole("class_def", (".py",), "Standalone .py file defining the model class "
                                           "(torch only); with weights", required=False),
           FileRole("dataset", (".pth", ".pt", ".npz"),
                    "Optional sample data: torch.save(DataLoader of a TensorDataset), a "
                    "tensor, an (x, y) tuple, or .npz; used to report accuracy",
                    required=False),
           FileRole("plan", (".json",), PLAN_FILE_HELP, required=False)),
    check=check_percent_or_target,
    check_files=check_torch_files,
    inspect=inspect_program,
    analyze_endpoint="pt_analyze",
    downloads=("model", "state_dict", "pt2", "onnx"),
    download_help="model (default: torch.save((model, info)); for a .pt2 upload, the pruned "
                  "program), state_dict (weights and the new layer sizes, loads with "
                  "weights_only=True), pt2 (a torch.export program with a dynamic batch, no "
                  "class file needed) or onnx (when the job was asked for it with "
                  "formats=onnx)")


@dataclass
class TorchModel:
    """What the engine keeps beside the loaded ``nn.Module``."""

    input_size: list[int]
    model_name: str
    example: Any  # a torch.Tensor of one sample
    program: bool = False  # uploaded as a torch.export program (.pt2)


class TorchPruner(Engine):
    """L1-norm filter pruning of an ``nn.Module`` built from the user's class file, or
    rebuilt from a torch.export program (:mod:`.program`)."""

    def __init__(self) -> None:
        self._optimizers: dict[int, Any] = {}

    spec = SPEC
    separator = "."
    channel_axis = 1
    export_formats = ("onnx",)
    timing_runtimes = ("torch", "onnxruntime")

    def warm_up(self) -> None:
        """Import torch, torch-pruning and torchsummary before a job arrives."""
        import torch
        import torch_pruning as tp
        import torchsummary  # noqa: F401

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        # The first torch.export and dependency-graph trace in a process are slow;
        # pay for them here, on a tiny model, instead of in the first job.
        import tempfile

        tiny = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
                                   torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2)).eval()
        example = torch.randn(1, 1, 8, 8)
        tp.DependencyGraph().build_dependency(tiny, example_inputs=example)
        with tempfile.TemporaryDirectory() as folder:
            torch.export.save(torch.export.export(tiny, (example,)),
                              os.path.join(folder, "warm.pt2"))

    def preload(self) -> bool:
        """Everything :meth:`warm_up` does, on one thread: torch starts no thread then
        (not even to trace and export), so a zygote can do it all before it forks."""
        wanted = os.environ.get("OMP_NUM_THREADS", "1")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            self.warm_up()
        finally:
            os.environ["OMP_NUM_THREADS"] = wanted
        from edgeai.pruning import accuracy, sensitivity, speed, verify  # noqa: F401
        from edgeai.pruning.torch_engine import (  # noqa: F401
            classfile,
            dataset,
            loading,
            pruner,
            recovery,
            report,
            saving,
        )
        return True

    def untrusted_code(self, job: PruneJob) -> str | None:
        """The class file is Python that runs to build the model; a .pt2 is code too:
        loading one can unpickle and evaluate parts of it (:mod:`.archive`)."""
        if "model" in job.inputs:
            return PROGRAM_IS_CODE
        return "a class file (Python code)"

    # -- load ----------------------------------------------------------------
    def load(self, job: PruneJob, workdir: Path) -> Loaded:
        """Check and import the class file, build the model, load the weights; or check,
        load and rebuild a .pt2 program."""
        import torch

        from edgeai.pruning.torch_engine import classfile, loading

        if "model" in job.inputs:
            return self._load_program(job)

        model_name = job.options.get("model_name") or "Net"
        input_size = _input_size(job.options.get("input_size"))
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
                model(example)
        except Exception as error:  # noqa: BLE001
            raise PruningError(f"input_size={','.join(map(str, input_size))} does not fit "
                               f"{model_name}: {type(error).__name__}: {error}") from None
        return Loaded(model, TorchModel(input_size, model_name, example))

    def _load_program(self, job: PruneJob) -> Loaded:
        from edgeai.pruning.torch_engine.program import load_program

        given = job.options.get("input_size")
        rebuilt = load_program(job.inputs["model"],
                               _input_size(given) if given is not None else None)
        example = rebuilt.example
        return Loaded(rebuilt.module, TorchModel(rebuilt.input_size, "program", example,
                                                 program=True))

    def primary_input(self, job: PruneJob) -> str:
        return job.inputs.get("model") or job.inputs["weights"]

    def layer_names(self, loaded: Loaded) -> list[str]:
        return [name for name, _ in loaded.model.named_modules() if name]

    def channel_layers(self, loaded: Loaded) -> list[str]:
        from edgeai.pruning.torch_engine.pruner import PRODUCERS

        return [name for name, module in loaded.model.named_modules()
                if isinstance(module, PRODUCERS)]

    def load_data(self, job: PruneJob, loaded: Loaded, report: JobReport) -> Data | None:
        """The optional dataset, as NumPy samples and labels (at most 2048); None without
        one or without labels (a warning says so)."""
        if "dataset" not in job.inputs:
            return None
        from edgeai.pruning.torch_engine.dataset import load_dataset

        samples, labels = load_dataset(job.inputs["dataset"],
                                       job.input_names.get("dataset", "dataset.pth"))
        samples = samples[:MAX_EVAL_SAMPLES].float()
        if list(samples.shape[1:]) != loaded.extra.input_size:
            raise PruningError(f"dataset samples have shape {list(samples.shape[1:])}, but "
                               f"input_size is {loaded.extra.input_size}.")
        if labels is None:
            report.warnings.append("the dataset has samples but no labels; accuracy not "
                                   "measured (send (x, y) pairs to get it)")
            return None
        return Data(samples.numpy(), labels[:MAX_EVAL_SAMPLES].numpy())

    # -- analyse, rewrite, mask ------------------------------------------------
    def analyse(self, loaded: Loaded) -> Analysis:
        from edgeai.pruning.torch_engine import pruner

        try:
            return pruner.analyse(loaded.model, loaded.extra.example)
        except PruningError:
            raise
        except Exception as error:  # noqa: BLE001 - tracing failed
            raise PruningError(f"The model could not be traced for pruning: "
                               f"{type(error).__name__}: {error}") from None

    def rewrite(self, loaded: Loaded, analysis: Analysis, plan: Plan,
                ) -> tuple[Any, dict[str, str]]:
        from edgeai.pruning.torch_engine import pruner

        pruned, failed = pruner.rewrite(loaded.model, loaded.extra.example, plan)
        return pruned.eval(), failed

    def mask(self, loaded: Loaded, analysis: Analysis, plan: Plan) -> Any:
        from edgeai.pruning.torch_engine import pruner

        return pruner.mask(loaded.model, loaded.extra.example, plan)

    def widths(self, model: Any) -> dict[str, int]:
        from edgeai.pruning.torch_engine import pruner

        return pruner.widths(model)

    def measure(self, model: Any, loaded: Loaded) -> tuple[int, int]:
        from edgeai.pruning.torch_engine.report import count_params_macs

        return count_params_macs(model, loaded.extra.example)

    def cost_terms(self, loaded: Loaded, analysis: Analysis) -> list[LayerCost]:
        from edgeai.pruning.torch_engine.report import cost_terms

        return cost_terms(loaded.model, loaded.extra.example, analysis)

    # -- running ---------------------------------------------------------------
    def example_batch(self, loaded: Loaded, seed: int) -> Any:
        import torch

        generator = torch.Generator().manual_seed(seed)
        return torch.randn(2, *loaded.extra.input_size, generator=generator)

    def run_batch(self, model: Any, batch: Any) -> list[np.ndarray]:
        import torch

        try:
            model.eval()
        except NotImplementedError:  # a torch.export program runs as exported
            pass
        with torch.no_grad():
            return [tensor.detach().numpy() for tensor in _tensors(model(torch.as_tensor(batch)))]

    # -- accuracy ----------------------------------------------------------------
    def copy(self, model: Any) -> Any:
        import copy

        return copy.deepcopy(model)

    def refit(self, pruned: Any, loaded: Loaded, analysis: Analysis, plan: Plan, fit: Data,
              check: Data) -> dict[str, list[str]]:
        from edgeai.pruning.torch_engine import recovery

        kept = recovery.kept_channels(loaded.model, loaded.extra.example, plan)
        return recovery.refit_layers(pruned, loaded.model, kept, fit, check)

    def refit_measured(self, pruned: Any, loaded: Loaded, analysis: Analysis, plan: Plan,
                       fit: Data, check: Data) -> dict[str, list[str]]:
        from edgeai.pruning.torch_engine import recovery

        kept = recovery.kept_channels(loaded.model, loaded.extra.example, plan)
        return recovery.refit_layers(pruned, loaded.model, kept, fit, check,
                                     measured_statistics=True)

    def reestimate(self, model: Any, data: Data) -> int:
        from edgeai.pruning.torch_engine import recovery

        return recovery.reestimate_batchnorm(model, data)

    def train_epoch(self, model: Any, data: Data, kind: str | None, epoch: int) -> None:
        from edgeai.pruning.torch_engine import recovery

        recovery.train_epoch(model, data, kind or "", epoch, self._optimizers)

    def layer_outputs(self, model: Any, batch: Any, names: list[str]) -> dict[str, np.ndarray]:
        from edgeai.pruning.torch_engine import pruner

        return pruner.layer_outputs(model, batch, names)

    # -- save ------------------------------------------------------------------
    def save(self, pruned: Any, loaded: Loaded, job: PruneJob, report: JobReport,
             ) -> dict[str, str | None]:
        """The guide's ``(model, info)`` file, a state_dict with the layer sizes, and a
        torch.export program where the model exports."""
        from edgeai.pruning.torch_engine.saving import save_artifacts, save_program_artifacts

        if loaded.extra.program:
            return save_program_artifacts(pruned, loaded.extra.example, job.output_dir,
                                          job.output_stem, report)
        return save_artifacts(pruned, loaded.extra.example, job.output_dir, job.output_stem,
                              report)

    def load_saved(self, job: PruneJob, artifacts: dict[str, str | None], pruned: Any,
                   ) -> dict[str, Any]:
        from edgeai.pruning.torch_engine.saving import load_back

        return load_back(job.output_dir, artifacts, pruned)

    # -- deploy formats and timing ---------------------------------------------
    def export(self, pruned: Any, loaded: Loaded, job: PruneJob, fmt: str) -> str:
        from edgeai.pruning.torch_engine import deploy

        return deploy.export(pruned, loaded.extra.example, job.output_dir, job.output_stem)

    def run_exported(self, path: str, fmt: str, batch: Any) -> list[np.ndarray]:
        from edgeai.pruning.speed import job_threads
        from edgeai.pruning.torch_engine import deploy

        return deploy.onnx_runner(path, batch, job_threads())()

    def runtime_of(self, fmt: str) -> str:
        return "ONNX Runtime"

    def timer(self, model: Any, runtime: str, batch: int, loaded: Loaded, threads: int,
              path: str | None = None) -> Any:
        import torch

        from edgeai.pruning.torch_engine import deploy

        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(batch, *loaded.extra.input_size, generator=generator)
        return deploy.timer(model, runtime, inputs, threads, path)

    def runtime_formats(self) -> dict[str, str]:
        return {"onnxruntime": "onnx"}

    def summary(self, pruned: Any, loaded: Loaded, job: PruneJob) -> str:
        from edgeai.pruning.torch_engine.report import summary_text

        return summary_text(pruned, loaded.extra.input_size)


def _tensors(output: Any) -> list[Any]:
    """Every tensor in a model's output (tuples, lists and dicts flattened in order)."""
    import torch

    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _tensors(item)]
    if isinstance(output, dict):
        return [t for key in sorted(output) for t in _tensors(output[key])]
    return []


def _input_size(value: Any) -> list[int]:
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


__all__ = ["SPEC", "TorchPruner"]
