"""The job report, defined once: what pruning did, measured, and checked.

Dataclasses with enums, serialised by :meth:`JobReport.to_dict` only. The status
message, the report file, the API's Swagger model (built from these fields'
``doc`` metadata) and every later reader use this one shape.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any

RULE = "remove round(n * percent) channels per group, keep at least one"


def doc(text: str, **extra: Any) -> Any:
    """A dataclass field documented for the API (``field(metadata={"doc": ...})``)."""
    default = extra.pop("default", None)
    factory = extra.pop("default_factory", None)
    metadata = {"doc": text, **extra}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


class LayerStatus(enum.StrEnum):
    """What happened to a layer's output channels."""

    PRUNED = "pruned"
    UNCHANGED = "unchanged"
    OUTPUT = "output"
    OMITTED = "omitted"
    UNSUPPORTED = "unsupported"


@dataclass
class LayerChange:
    """One layer with output channels, before and after."""

    name: str = doc("Layer (Keras path) or module (PyTorch) name")
    type: str = doc("Layer class")
    channels_before: int = doc("Output channels before pruning")
    channels_after: int | None = doc("Output channels after pruning")
    status: LayerStatus = doc("pruned, unchanged, output (a model output, never pruned), "
                              "omitted (named in ommitted) or unsupported (left whole)",
                              default=LayerStatus.UNCHANGED)
    reason: str | None = doc("Why the layer kept its channels, or how it followed others")


@dataclass
class Check:
    """One verification of the pruned model, run on every job."""

    passed: bool | None = doc("True: within tolerance; False: the job failed; None: not run")
    max_abs_diff: float | None = doc("Largest absolute difference between the outputs")
    max_rel_diff: float | None = doc("Largest difference relative to the outputs' range")
    tolerance: float | None = doc("Relative tolerance the difference must stay under")
    detail: str | None = doc("What was compared, or why the check did not run")
    seconds: float | None = doc("Time the check took")


@dataclass
class Verification:
    """Proof, per job, that the pruned model is right."""

    exactness: Check = doc("The original with the removed channels masked (their consumers' "
                           "input weights zeroed) against the pruned model, on a seeded "
                           "random batch", default_factory=Check)
    round_trip: Check = doc("Each saved file, loaded back as a user loads it, against the "
                            "pruned model in memory", default_factory=Check)


@dataclass
class ExportCheck:
    """One deploy-format file: made in the sandbox, run in its own runtime, compared."""

    file: str | None = doc("The file's name (download it with format=...); None if not made")
    passed: bool | None = doc("True: within tolerance; False: not made or differs (the "
                              "download answers 409 with the detail); None: quantized, "
                              "difference reported only")
    max_abs_diff: float | None = doc("Largest absolute difference from the pruned model")
    max_rel_diff: float | None = doc("That difference relative to the outputs' range")
    tolerance: float | None = doc("Relative tolerance (None for quantized formats)")
    size: int | None = doc("File size, bytes")
    detail: str | None = doc("How it was made and checked, or why it failed")
    seconds: float | None = doc("Time to make and check it")


@dataclass
class Latency:
    """Median time of one forward pass, original against pruned, in one runtime."""

    runtime: str = doc("keras (TensorFlow, compiled), tflite (LiteRT interpreter), torch "
                       "(eager) or onnxruntime")
    batch: int = doc("Samples per forward pass")
    before_ms: float | None = doc("Original model, median milliseconds")
    after_ms: float | None = doc("Pruned model, median milliseconds")
    ratio: float | None = doc("after / before")
    runs: int | None = doc("Timed runs of the pruned model (after one warm-up run; until "
                           "the median is stable)")


@dataclass
class Speed:
    """Latency measured on the server's CPU."""

    threads: int = doc("Compute threads each runtime was given")
    latencies: list[Latency] = doc("One row per runtime and batch size", default_factory=list)
    detail: str | None = doc("How it was measured, or why a runtime was skipped")
    seconds: float | None = doc("Time the measurement took")


@dataclass
class Evaluation:
    """The metric on the user's held-out data, at each stage of the job."""

    metric: str | None = doc("top1_accuracy (class scores), element_accuracy (dense class "
                             "maps) or mse (float targets); None if not measured")
    higher_is_better: bool | None = doc("Whether a larger value is better")
    samples: int | None = doc("Held-out samples the metric is measured on")
    calibration_samples: int | None = doc("Samples recovery and fine-tuning learn from")
    before: float | None = doc("The original model")
    after_prune: float | None = doc("The pruned model, as rewritten")
    after_recovery: float | None = doc("After recovery (BatchNorm statistics re-estimated, "
                                       "layers that lost inputs refit by least squares)")
    after_finetune: float | None = doc("After fine-tuning (the last epoch)")
    epochs: list[float] = doc("Held-out metric after each fine-tuning epoch",
                              default_factory=list)
    recovery: dict[str, Any] | None = doc("What recovery did: layers refit (and kept), "
                                          "BatchNorm layers re-estimated, seconds")
    detail: str | None = doc("How the data was split, or 'not measured: <reason>'")
    seconds: float | None = doc("Time evaluation, recovery and fine-tuning took")


@dataclass
class JobReport:
    """Everything a finished job reports."""

    framework: str = doc("tensorflow or pytorch")
    percent: float = doc("The requested fraction of channels to remove")
    rule: str = doc("How many channels a percent removes", default=RULE)
    round_to: int = doc("Every pruned group keeps a multiple of this many channels", default=1)
    target: dict[str, Any] | None = doc(
        "The target asked for (metric, keep) and what was reached. params/macs: the "
        "fraction reached and the uniform percent found. latency: runtime, batch, threads, "
        "the original's ms, reached (the median ratio of interleaved timing rounds) with its "
        "90% interval, met, within_noise, detail (in words), guided_by (your data's metric "
        "or the data-free estimate), fractions (the plan), every step of the search "
        "(steps, chosen_step) and, with a dataset, the search's and uniform pruning's "
        "latency/metric curves", omit_none=True)
    layers: list[LayerChange] = doc("Per-layer channels", default_factory=list)
    params_before: int | None = doc("Parameters before pruning")
    params_after: int | None = doc("Parameters after pruning")
    macs_before: int | None = doc("Multiply-accumulates per sample before")
    macs_after: int | None = doc("Multiply-accumulates per sample after")
    file_size_before: int | None = doc("Uploaded model file size, bytes")
    file_size_after: int | None = doc("Pruned model file size, bytes")
    params_ratio: float | None = doc("params_after / params_before")
    macs_ratio: float | None = doc("macs_after / macs_before")
    file_size_ratio: float | None = doc("file_size_after / file_size_before")
    accuracy_before: float | None = doc("Accuracy on the uploaded dataset, before",
                                        omit_none=True)
    accuracy_after: float | None = doc("Accuracy on the uploaded dataset, after",
                                       omit_none=True)
    timings: dict[str, float] = doc("Seconds spent in each step the job took: load, evaluate, "
                                    "analyse, rewrite, verify, finetune, save, export, measure",
                                    default_factory=dict)
    verification: Verification = doc("Exactness and round-trip checks",
                                     default_factory=Verification)
    plan: dict[str, float] | None = doc("The per-group ratios used, when a plan was sent or "
                                        "a latency target searched one (group key -> "
                                        "fraction removed)", omit_none=True)
    sensitivity: dict[str, Any] | None = doc(
        "An analysis (tf_analyze, pt_analyze): per group, the metric and cost when that "
        "group alone is pruned at 0.1..0.9; the recommended plan for the target with its "
        "measured cost and metric; the uniform percent for the same target", omit_none=True)
    evaluation: Evaluation | None = doc("The metric on your data before, after pruning, "
                                        "after recovery and fine-tuning (with a dataset)",
                                        omit_none=True)
    exports: dict[str, ExportCheck] = doc("Deploy formats asked for (formats=...), each "
                                          "checked in its runtime", default_factory=dict)
    speed: Speed | None = doc("Latency before and after (measure=false skips it)",
                              omit_none=True)
    warnings: list[str] = doc("Things worth knowing", default_factory=list)
    artifacts: dict[str, str | None] = doc("Downloadable formats and their file names",
                                           default_factory=dict)
    sandbox: dict[str, Any] | None = doc("How the job was confined (the sandbox's layers in "
                                         "force), its warm-up and job seconds, and its peak "
                                         "memory (MB); filled in by the sandbox",
                                         omit_none=True)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (enums as their values)."""
        return _plain(self)

    def fill_ratios(self) -> None:
        """params_ratio, macs_ratio and file_size_ratio from the before/after figures."""
        for name, before, after in (("params", self.params_before, self.params_after),
                                    ("macs", self.macs_before, self.macs_after),
                                    ("file_size", self.file_size_before, self.file_size_after)):
            if before and after is not None:
                setattr(self, f"{name}_ratio", round(after / before, 4))


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "__dataclass_fields__"):
        out = {}
        for item in fields(value):
            data = getattr(value, item.name)
            if data is None and item.metadata.get("omit_none"):
                continue
            out[item.name] = _plain(data)
        return out
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
