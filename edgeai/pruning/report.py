"""The job report, defined once: what pruning did, measured, and checked.

Dataclasses with enums, serialised by :meth:`JobReport.to_dict` only. The status
message, the report file, the API's Swagger model (built from these fields'
``doc`` metadata) and every later reader use this one shape.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import operator
import re
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any

RULE = "remove round(n * percent) channels per group, keep at least one"
# Bounds of the report's text (see check_report): a name (a layer, a file, a runtime) and
# any other text; the summary message and a failed job's reason have their own.
NAME_CHARS = 512
TEXT_CHARS = 2000


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

    name: str = doc("Layer (Keras path) or module (PyTorch) name", max_chars=NAME_CHARS)
    type: str = doc("Layer class", max_chars=NAME_CHARS)
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
                            "pruned model in memory; where the pruned model was itself loaded "
                            "from the file it was written to (Keras 3 .keras models), every "
                            "check ran on the file's model and the detail says so",
                            default_factory=Check)


@dataclass
class ExportCheck:
    """One deploy-format file: made in the sandbox, run in its own runtime, compared."""

    file: str | None = doc("The file's name (download it with format=...); None if not made",
                           bare_name=True)
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
                       "(eager) or onnxruntime", max_chars=NAME_CHARS)
    batch: int = doc("Samples per forward pass")
    before_ms: float | None = doc("Original model, median milliseconds")
    after_ms: float | None = doc("Pruned model, median milliseconds")
    ratio: float | None = doc("after / before", minimum=0.0)
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
                             "maps) or mse (float targets); None if not measured",
                             max_chars=NAME_CHARS)
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

    framework: str = doc("tensorflow, pytorch or onnx", max_chars=NAME_CHARS)
    percent: float = doc("The requested fraction of channels to remove", minimum=0.0,
                         below=1.0)
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
    params_ratio: float | None = doc("params_after / params_before", minimum=0.0)
    macs_ratio: float | None = doc("macs_after / macs_before", minimum=0.0)
    file_size_ratio: float | None = doc("file_size_after / file_size_before", minimum=0.0)
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
                                           default_factory=dict, bare_name=True)
    brings_code: str | None = doc("What in the uploaded files runs as code once loaded (a "
                                  "class file, a zipped SavedModel, a .pt2 program): such a "
                                  "job runs only inside the full sandbox (or where the server "
                                  "runs with EDGEAI_SANDBOX=weak); absent when nothing does",
                                  omit_none=True)
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


# -- the report as data: checked before it is stored, and again when it is shown ------------
#
# A job's report comes from its sandbox child, whose code is assumed to run whatever it
# is: every value in it is hostile until checked. check_report parses it into the typed
# JobReport, driven by the dataclasses' own field types (a field added to them is
# covered without touching the checker) and their metadata: ``max_chars`` (a name's
# bound; other text gets TEXT_CHARS), ``minimum``/``below`` (a number's range) and
# ``bare_name`` (a file name the server will look up).

MESSAGE_CHARS = 64 * 1024   # the status message of a done job (the model summary)
ERROR_CHARS = 2000          # the status message of a failed job (its reason)
MAX_ITEMS = 20_000          # entries in any one list or object
MAX_DEPTH = 24              # nesting of the free-form fields (target, sensitivity, ...)
MAX_NODES = 250_000         # values in the whole report
MAX_REPORT_BYTES = 4 << 20  # the whole report as stored (JSON, UTF-8)
MAX_COUNT = 2 ** 53         # counts stay exact in every JSON reader
FILE_NAME_BYTES = 255

# C0 controls but tab and newline, DEL, C1 controls, the bidirectional overrides that
# make text display in another order than it reads, and lone surrogates (not text:
# neither UTF-8 nor PostgreSQL can hold them).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


class ReportRejected(ValueError):
    """A report (or a text) a job handed back is not what the server stores; ``str()``
    names the field and says what was expected, e.g. ``report.percent: expected a
    finite number in [0, 1), got a list``."""


def _kind(value: Any) -> str:
    """What a JSON value is, in words (for a refusal)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return str(value) if abs(value) < 10 ** 15 else f"a number of {len(str(value))} digits"
    if isinstance(value, float):
        return repr(value) if not math.isfinite(value) else f"{value:g}"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _shown(text: str, limit: int = 40) -> str:
    """A hostile key or name as it may appear in a refusal: cleaned, cut, quoted."""
    cleaned = _CONTROL.sub("?", text[:limit])
    return repr(cleaned + ("..." if len(text) > limit else ""))


def clean_text(value: Any, limit: int) -> str:
    """``value`` as text the server can store and show: control characters removed (tab
    and newline kept; see ``_CONTROL``), then cut to ``limit`` characters with a note
    saying how many more there were. Raises :class:`ReportRejected` unless ``value``
    is a str."""
    if not isinstance(value, str):
        raise ReportRejected(f"expected text, got {_kind(value)}")
    # Cut before cleaning too, so that a huge text costs no more than a long one.
    extra = max(0, len(value) - 2 * limit - 64)
    text = _CONTROL.sub("", value[:len(value) - extra] if extra else value)
    if len(text) <= limit and not extra:
        return text
    # The note counts in the limit, so a text cut once is not cut again when read back
    # (its room is reserved for the largest count it could say).
    total = len(text) + extra
    keep = limit - len(f" ... [{total} more characters]")
    if keep <= 0:
        return text[:limit]
    return text[:keep] + f" ... [{total - keep} more characters]"


class _Budget:
    """Values left to visit in one report: a report of millions of values is refused
    before it costs the server more than a bounded walk."""

    def __init__(self) -> None:
        self.nodes = MAX_NODES

    def take(self, where: str) -> None:
        self.nodes -= 1
        if self.nodes < 0:
            raise ReportRejected(f"{where}: the report holds more than {MAX_NODES} values")


@dataclass(frozen=True)
class _Rules:
    """What one field's metadata asks of its values."""

    max_chars: int = TEXT_CHARS
    minimum: float | None = None
    below: float | None = None
    bare_name: bool = False

    @classmethod
    def of(cls, metadata: Any) -> _Rules:
        return cls(max_chars=metadata.get("max_chars", TEXT_CHARS),
                   minimum=metadata.get("minimum"), below=metadata.get("below"),
                   bare_name=bool(metadata.get("bare_name")))


_PLAIN = _Rules()


def _number_range(rules: _Rules) -> str:
    if rules.minimum is not None and rules.below is not None:
        return f" in [{rules.minimum:g}, {rules.below:g})"
    if rules.minimum is not None:
        return f" >= {rules.minimum:g}"
    return ""


def _check_float(value: Any, where: str, rules: _Rules) -> float:
    wanted = f"expected a finite number{_number_range(rules)}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportRejected(f"{where}: {wanted}, got {_kind(value)}")
    if isinstance(value, int) and abs(value) >= MAX_COUNT:
        raise ReportRejected(f"{where}: {wanted}, got {_kind(value)}")
    number = float(value)
    if not math.isfinite(number) or (rules.minimum is not None and number < rules.minimum) \
            or (rules.below is not None and number >= rules.below):
        raise ReportRejected(f"{where}: {wanted}, got {_kind(value)}")
    return number


def _check_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_COUNT:
        raise ReportRejected(f"{where}: expected a whole number in [0, 2**53), "
                             f"got {_kind(value)}")
    return value


def _check_str(value: Any, where: str, rules: _Rules) -> str:
    if not isinstance(value, str):
        raise ReportRejected(f"{where}: expected text, got {_kind(value)}")
    if rules.bare_name:
        return _check_bare_name(value, where)
    # Cut, not refused: a long layer name or warning is no reason to fail a job.
    return clean_text(value, rules.max_chars)


def _check_bare_name(value: str, where: str) -> str:
    """A file name the server will look up in a job's result: bare, visible, plain."""
    wanted = (f"{where}: expected a bare file name (no folder, not hidden, at most "
              f"{FILE_NAME_BYTES} bytes, no control characters)")
    if not value or value in (".", "..") or value.startswith(".") or "/" in value \
            or "\\" in value or _CONTROL.search(value) or "\n" in value or "\t" in value \
            or len(value.encode("utf-8", "surrogatepass")) > FILE_NAME_BYTES:
        raise ReportRejected(f"{wanted}, got {_shown(value)}")
    return value


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str):
        raise ReportRejected(f"{where}: expected text keys, got {_kind(key)}")
    if len(key) > NAME_CHARS:
        raise ReportRejected(f"{where}: a key of {len(key)} characters (at most {NAME_CHARS})")
    return _CONTROL.sub("", key)


def _check_free(value: Any, where: str, budget: _Budget, depth: int = 0) -> Any:
    """A free-form JSON value (``Any``): bounded in depth, size, key and text length;
    numbers finite (whole numbers below 2**53 in size); text cleaned."""
    budget.take(where)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) >= MAX_COUNT:
            raise ReportRejected(f"{where}: expected a number below 2**53 in size, got "
                                 f"{_kind(value)}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ReportRejected(f"{where}: expected a finite number, got {_kind(value)}")
        return value
    if isinstance(value, str):
        return clean_text(value, TEXT_CHARS)
    if depth >= MAX_DEPTH and isinstance(value, (list, tuple, dict)):
        raise ReportRejected(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, (list, tuple)):  # a tuple: what server code adds, stored as a list
        _check_length(value, where)
        return [_check_free(item, f"{where}[{index}]", budget, depth + 1)
                for index, item in enumerate(value)]
    if isinstance(value, dict):
        _check_length(value, where)
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = _check_key(key, where)
            if name in out:
                raise ReportRejected(f"{where}: key {_shown(name)} twice")
            out[name] = _check_free(item, f"{where}[{_shown(name)}]", budget, depth + 1)
        return out
    raise ReportRejected(f"{where}: expected JSON, got {_kind(value)}")


def _check_length(value: list[Any] | tuple[Any, ...] | dict[str, Any], where: str) -> None:
    if len(value) > MAX_ITEMS:
        raise ReportRejected(f"{where}: {len(value)} entries (at most {MAX_ITEMS})")


def _optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) < len(typing.get_args(hint)):
            return functools.reduce(operator.or_, args), True
    return hint, False


def _check_value(value: Any, hint: Any, where: str, rules: _Rules, budget: _Budget) -> Any:
    """``value`` parsed as type ``hint`` (a dataclass, an enum, a list, a dict, a union,
    a scalar or ``Any``); raises ReportRejected naming ``where``."""
    hint, nullable = _optional(hint)
    if value is None and nullable:
        budget.take(where)
        return None
    if hint is Any:
        return _check_free(value, where, budget)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        refusals = []
        for arm in typing.get_args(hint):
            try:
                return _check_value(value, arm, where, rules, budget)
            except ReportRejected as error:
                refusals.append(str(error))
        raise ReportRejected(" or ".join(refusals))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _check_dataclass(value, hint, where, budget)
    budget.take(where)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        allowed = [member.value for member in hint]
        if not isinstance(value, str) or value not in allowed:
            raise ReportRejected(f"{where}: expected one of {', '.join(map(str, allowed))}, "
                                 f"got {_shown(value) if isinstance(value, str) else _kind(value)}")
        return hint(value)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ReportRejected(f"{where}: expected a list, got {_kind(value)}")
        _check_length(value, where)
        return [_check_value(entry, item, f"{where}[{index}]", rules, budget)
                for index, entry in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ReportRejected(f"{where}: expected an object, got {_kind(value)}")
        _check_length(value, where)
        out: dict[str, Any] = {}
        for key, entry in value.items():
            name = _check_key(key, where)
            if name in out:
                raise ReportRejected(f"{where}: key {_shown(name)} twice")
            out[name] = _check_value(entry, item, f"{where}[{_shown(name)}]", rules, budget)
        return out
    if hint is bool:
        if not isinstance(value, bool):
            raise ReportRejected(f"{where}: expected true or false, got {_kind(value)}")
        return value
    if hint is int:
        return _check_int(value, where)
    if hint is float:
        return _check_float(value, where, rules)
    if hint is str:
        return _check_str(value, where, rules)
    raise TypeError(f"{where}: the report checker has no rule for {hint!r}")


@functools.cache
def _fields_of(cls: type) -> dict[str, tuple[Any, _Rules, bool]]:
    """Per field of dataclass ``cls``: its type, its rules, and whether null is its
    default (a field the job did not fill is stored as null)."""
    hints = typing.get_type_hints(cls)
    return {item.name: (hints[item.name], _Rules.of(item.metadata),
                        item.default is None and item.default_factory is dataclasses.MISSING)
            for item in fields(cls)}


def _check_dataclass(value: Any, cls: type, where: str, budget: _Budget) -> Any:
    budget.take(where)
    if not isinstance(value, dict):
        raise ReportRejected(f"{where}: expected an object, got {_kind(value)}")
    known = _fields_of(cls)
    unknown = [key for key in value if key not in known]
    if unknown:
        raise ReportRejected(f"{where}: unknown field {_shown(str(unknown[0]))} (allowed: "
                             f"{', '.join(known)})")
    values: dict[str, Any] = {}
    for name, entry in value.items():
        hint, rules, null_default = known[name]
        if entry is None and null_default:
            values[name] = None
            continue
        values[name] = _check_value(entry, hint, f"{where}.{name}", rules, budget)
    return cls(**values)


def check_report(data: Any) -> dict[str, Any]:
    """Parse an untrusted report (what a job's child handed back, or what a row holds)
    into :class:`JobReport` and return its :meth:`~JobReport.to_dict`.

    Every field must have its declared type: numbers finite and in range (``percent``
    in [0, 1), counts whole and in [0, 2**53), ratios >= 0), text cleaned of control
    characters and cut to a bound (names :data:`NAME_CHARS`, other text :data:`TEXT_CHARS`),
    file names bare, lists and objects at most :data:`MAX_ITEMS` entries, the
    free-form fields bounded JSON (:data:`MAX_DEPTH` levels, finite numbers), no key
    the report does not declare, at most :data:`MAX_NODES` values and
    :data:`MAX_REPORT_BYTES` in all. Raises :class:`ReportRejected` naming the first
    field that is not.
    """
    try:
        report = _check_dataclass(data, JobReport, "report", _Budget())
    except RecursionError:  # only a typed field nested in itself could get here
        raise ReportRejected("report: nested too deeply") from None
    plain = report.to_dict()
    size = len(json.dumps(plain, allow_nan=False, ensure_ascii=False).encode("utf-8"))
    if size > MAX_REPORT_BYTES:
        raise ReportRejected(f"report: {size} bytes as JSON (at most {MAX_REPORT_BYTES})")
    return plain


def stored_report(data: Any) -> tuple[dict[str, Any] | None, str | None]:
    """A stored report as it may be shown: ``(report, None)`` when it passes
    :func:`check_report`, else ``(None, why it is withheld)``. Rows written before
    reports were checked (or by another version) go through here when read, so that
    no stored value can break a page or a response. Never raises."""
    if data is None:
        return None, None
    try:
        return check_report(data), None
    except ReportRejected as error:
        return None, f"The report is withheld: it is not a valid report ({error})."
    except Exception as error:  # noqa: BLE001 - a stored value must never break a read
        return None, f"The report is withheld: it could not be read ({type(error).__name__})."
