"""What each engine accepts, declared once: its submit call, parameters and input files.

The API builds its endpoints, its Swagger documentation and its validation from
these declarations, the queue knows which uploads a job has from them, and
downloads list their formats from them; nothing outside an engine's own package
names a framework. Parsers here are plain functions that raise
:class:`ParameterError` with a message saying what is allowed.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

LAYER_NAME = re.compile(r"^[A-Za-z0-9_.\-/:]{1,256}$")
MAX_OMITTED = 1000
MAX_INPUT_ELEMENTS = 1 << 26


class ParameterError(ValueError):
    """A parameter's value is not allowed; ``str()`` says what is."""


@dataclass(frozen=True)
class Param:
    """A query parameter of a submit call.

    ``parse`` turns the raw text (None when absent) into the stored value or raises
    :class:`ParameterError`. ``aliases`` are other accepted spellings. ``schema`` is
    the Swagger type and the bounds documented for it.
    """

    name: str
    help: str
    parse: Callable[[str | None], Any]
    required: bool = False
    default: Any = None
    aliases: tuple[str, ...] = ()
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})
    example: str | None = None
    store_as: str | None = None

    @property
    def key(self) -> str:
        """The name the parsed value is stored under (the parameter's name by default)."""
        return self.store_as or self.name


@dataclass(frozen=True)
class FileRole:
    """A form file of a submit call: its field name, extensions, and what it holds."""

    name: str
    extensions: tuple[str, ...]
    help: str
    required: bool = True


@dataclass(frozen=True)
class EngineSpec:
    """One framework's submit call, parameters, files and download formats.

    ``check`` sees every parsed value at once (``{key: value}``) and the names of the
    files given, for rules that involve several parameters; it raises
    :class:`ParameterError`. ``check_files`` does the same for the rules on which files
    go together, for the prune and the analysis call alike. ``inspect`` looks inside the
    uploads (cheaply, without the framework: the server calls it) with the parsed values;
    it may fill in values a file carries (a program's input shape) and raises
    :class:`ParameterError` for a file that is not what its name says.
    """

    name: str
    endpoint: str
    summary: str
    params: tuple[Param, ...]
    files: tuple[FileRole, ...]
    downloads: tuple[str, ...] = ("model",)
    download_help: str = "model: the pruned model, in the format uploaded"
    check: Callable[[dict[str, Any], set[str]], None] = field(
        default=lambda values, files: None)
    analyze_endpoint: str | None = None
    check_files: Callable[[dict[str, Any], set[str]], None] = field(
        default=lambda values, files: None)
    inspect: Callable[[dict[str, Any], Mapping[str, IO[bytes]]], None] = field(
        default=lambda values, uploads: None)

    def checker(self, analyze: bool = False) -> Callable[[dict[str, Any], set[str]], None]:
        """Every rule a call checks on its values at once: ``check_files``, then ``check``
        (the prune call) or :func:`check_analysis` (the analysis call)."""

        def run(values: dict[str, Any], files: set[str]) -> None:
            self.check_files(values, files)
            (check_analysis if analyze else self.check)(values, files)

        return run

    def analyze_params(self) -> tuple[Param, ...]:
        """What an analysis takes: the prune call's parameters but those that only
        shape a shipped model (a percent, formats, the measure step, recovery,
        fine-tuning); how to time (runtime, threads, batch_size) serves a latency target."""
        skipped = ("percent", "formats", "measure", "recover", "finetune_epochs")
        return tuple(param for param in self.params if param.name not in skipped)

    def analyze_files(self) -> tuple[FileRole, ...]:
        """The prune call's files, with the dataset required and no plan."""
        return tuple(FileRole(role.name, role.extensions, role.help, required=True)
                     if role.name == "dataset" else role
                     for role in self.files if role.name != "plan")

    def param(self, name: str) -> Param:
        """The parameter called ``name`` (or one of its aliases)."""
        for param in self.params:
            if name == param.name or name in param.aliases:
                return param
        raise KeyError(name)


# -- parsers ---------------------------------------------------------------------
PERCENT_ALLOWED = "percent must be a fraction in [0, 1): 0.4 removes 40% of the channels"


def parse_percent(raw: str | None) -> float | None:
    """``percent``: a fraction in [0, 1), e.g. ``0.4`` removes 40% of channels; None
    when absent (then ``target`` must be given; see :func:`check_percent_or_target`)."""
    allowed = PERCENT_ALLOWED
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ParameterError(f"percent={raw!r} is not a number; {allowed}.") from None
    if not math.isfinite(value):
        raise ParameterError(f"percent={raw!r} is not a finite number; {allowed}.")
    if 1 <= value <= 100:
        raise ParameterError(f"percent={raw!r} is out of range; {allowed} "
                             f"(for {value:g}% send percent={value / 100:g}).")
    if not 0 <= value < 1:
        raise ParameterError(f"percent={raw!r} is out of range; {allowed}.")
    return value


def parse_layer_names(raw: str | None) -> list[str]:
    """``ommitted``: comma-separated layer names to keep whole.

    Names are checked for shape here; whether they exist in the model is known only
    once it is loaded (an unknown name then fails the job, listing the valid ones).
    """
    names: list[str] = []
    for part in (raw or "").split(","):
        name = part.strip()
        if not name:
            continue
        if not LAYER_NAME.match(name):
            raise ParameterError(
                f"ommitted: {name[:80]!r} is not a layer name; names are 1-256 characters "
                "of letters, digits and _ . - / :, separated by commas (e.g. fc1,fc2).")
        if name not in names:
            names.append(name)
    if len(names) > MAX_OMITTED:
        raise ParameterError(f"ommitted lists {len(names)} layers; at most {MAX_OMITTED} "
                             "are allowed.")
    return names


INPUT_SIZE_EXAMPLE = ("the shape of one input without the batch dimension, e.g. "
                      "input_size=1,28,28")


def parse_input_size(raw: str | None) -> list[int] | None:
    """``input_size``: one input's shape without the batch dimension, e.g. 1,28,28; None
    when absent (an engine's ``check_files`` says when it is required)."""
    example = INPUT_SIZE_EXAMPLE
    if raw is None or raw.strip() == "":
        return None
    parts = [p.strip() for p in raw.strip("()[] ").split(",") if p.strip()]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise ParameterError(f"input_size={raw!r} must be whole numbers separated by commas: "
                             f"{example}.") from None
    if not 1 <= len(dims) <= 4 or any(d < 1 for d in dims):
        raise ParameterError(f"input_size={raw!r} must have 1 to 4 positive dimensions: "
                             f"{example}.")
    if math.prod(dims) > MAX_INPUT_ELEMENTS:
        raise ParameterError(f"input_size={raw!r} has more than {MAX_INPUT_ELEMENTS} elements.")
    return dims


def parse_class_name(raw: str | None) -> str | None:
    """``model_name``: the class to build with no arguments (None when absent: the
    engine builds ``Net``)."""
    if raw is None or raw.strip() == "":
        return None
    name = raw.strip()
    if not name.isidentifier() or name.startswith("_"):
        raise ParameterError(f"model_name={name[:80]!r} must be the name of a class in "
                             "class_def, e.g. model_name=Net.")
    return name


def parse_round_to(raw: str | None) -> int:
    """``round_to``: every pruned group keeps a multiple of this many channels."""
    if raw is None or raw.strip() == "":
        return 1
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= 1024:
        raise ParameterError(f"round_to={raw[:20]!r} must be a whole number from 1 to 1024: "
                             "every pruned group keeps a multiple of it (8 suits most CPUs).")
    return value


TARGET_METRICS = ("params", "macs", "latency")


def parse_target(raw: str | None) -> dict[str, Any] | None:
    """``target``: ``params:0.5``, ``macs:0.5`` or ``latency:0.5``, the fraction of the
    original's parameters, MACs or measured latency to keep."""
    if raw is None or raw.strip() == "":
        return None
    allowed = ("target must be params:F, macs:F or latency:F with F the fraction of the "
               "original to keep, in (0, 1), e.g. target=macs:0.5 or target=latency:0.5 "
               "(half the original's time, measured in the job's runtime)")
    metric, _, fraction = raw.strip().partition(":")
    try:
        value = float(fraction)
    except ValueError:
        raise ParameterError(f"target={raw[:40]!r}: {allowed}.") from None
    if metric not in TARGET_METRICS or not 0 < value < 1:
        raise ParameterError(f"target={raw[:40]!r}: {allowed}.")
    return {"metric": metric, "keep": value}


def parse_switch(name: str, default: bool) -> Callable[[str | None], bool]:
    """A parser for a yes/no parameter (true/false, 1/0, yes/no, on/off)."""

    def parse(raw: str | None) -> bool:
        if raw is None or raw.strip() == "":
            return default
        value = raw.strip().lower()
        if value in ("true", "1", "yes", "on"):
            return True
        if value in ("false", "0", "no", "off"):
            return False
        raise ParameterError(f"{name}={raw[:20]!r} must be true or false.")

    return parse


def parse_batch_size(raw: str | None) -> int | None:
    """``batch_size``: a batch size of your own to time the models at, besides 1 (and the
    batch a latency target is measured at)."""
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= 256:
        raise ParameterError(f"batch_size={raw[:20]!r} must be a whole number from 1 to 256.")
    return value


def formats_param(allowed: tuple[str, ...]) -> Param:
    """``formats``: deploy formats to make (and check) when the job runs."""

    def parse(raw: str | None) -> list[str]:
        chosen = []
        for part in (raw or "").split(","):
            name = part.strip().lower()
            if not name:
                continue
            if name not in allowed:
                raise ParameterError(f"formats: {name[:30]!r} is not a deploy format of this "
                                     f"call; allowed: {', '.join(allowed)}.")
            if name not in chosen:
                chosen.append(name)
        return chosen

    return Param("formats", "Deploy formats to make and check when the job runs, "
                 f"comma-separated: {', '.join(allowed)}. Each is run in its own runtime and "
                 "compared with the pruned model; download it with format=<name>",
                 parse, example=",".join(allowed))


MAX_THREADS = 64


def parse_threads(raw: str | None) -> int | None:
    """``threads``: the compute threads the device gives the model, for timing."""
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_THREADS:
        raise ParameterError(f"threads={raw[:20]!r} must be a whole number from 1 to "
                             f"{MAX_THREADS}: the threads the model runs with on your device.")
    return value


def runtime_param(allowed: tuple[str, ...], formats: dict[str, str]) -> Param:
    """``runtime``: where the models are timed (the latency target, the measure step).
    ``formats`` maps a runtime to the deploy format it runs (the default when that format
    is asked for)."""

    def parse(raw: str | None) -> str | None:
        if raw is None or raw.strip() == "":
            return None
        name = raw.strip().lower()
        if name not in allowed:
            raise ParameterError(f"runtime={raw[:30]!r} is not a runtime this call can time; "
                                 f"allowed: {', '.join(allowed)}.")
        return name

    by_format = ", ".join(f"{runtime} when formats has {fmt}" for runtime, fmt in
                          formats.items())
    return Param("runtime", f"Where to time the models (a latency target, the report's speed): "
                 f"{', '.join(allowed)}. Default: the deploy format asked for ({by_format}), "
                 f"else {allowed[0]}", parse, schema={"type": "string", "enum": list(allowed)},
                 example=allowed[-1])


MAX_FINETUNE_EPOCHS = 50


def parse_epochs(raw: str | None) -> int:
    """``finetune_epochs``: epochs of fine-tuning on the dataset (0, the default: none)."""
    if raw is None or raw.strip() == "":
        return 0
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_FINETUNE_EPOCHS:
        raise ParameterError(f"finetune_epochs={raw[:20]!r} must be a whole number from 0 to "
                             f"{MAX_FINETUNE_EPOCHS}; fine-tuning also stops before the "
                             "job's time limit.")
    return value


def check_percent_or_target(values: dict[str, Any], files: set[str]) -> None:
    """Exactly one of ``percent`` (the guide's), ``target`` and a ``plan`` file says how
    much to prune; fine-tuning needs a dataset."""
    given = [name for name, present in (("percent", values.get("percent") is not None),
                                        ("target", values.get("target") is not None),
                                        ("plan", "plan" in files)) if present]
    if not given:
        raise ParameterError(f"percent is required (or target, or a plan file instead); "
                             f"{PERCENT_ALLOWED}.")
    if len(given) > 1:
        raise ParameterError(f"Send one of percent, target or plan, not {' and '.join(given)}: "
                             "percent removes that fraction of every group's channels; target "
                             "searches the fraction that keeps that much of the parameters or "
                             "MACs; a plan gives each group its own fraction.")
    if values.get("finetune_epochs") and "dataset" not in files:
        raise ParameterError("finetune_epochs needs a dataset to fine-tune on.")
    check_timing(values, measured=values.get("measure", True))


def check_timing(values: dict[str, Any], measured: bool) -> None:
    """``runtime`` and ``threads`` say how to time: they need a latency target or the
    measure step, or they would be silently ignored."""
    latency = (values.get("target") or {}).get("metric") == "latency"
    given = [name for name in ("runtime", "threads") if values.get(name) is not None]
    if given and not (latency or measured):
        raise ParameterError(f"{' and '.join(given)} {'say' if len(given) > 1 else 'says'} how "
                             "to time the models, but this job times nothing: send "
                             "target=latency:F, or measure=true.")


def check_analysis(values: dict[str, Any], files: set[str]) -> None:
    """An analysis measures on the user's data: the dataset is required; how to time
    only applies to a latency target."""
    if "dataset" not in files:
        raise ParameterError("An analysis needs the form file dataset: it measures each "
                             "group's pruning on your data.")
    latency = (values.get("target") or {}).get("metric") == "latency"
    given = [name for name in ("runtime", "threads", "batch_size")
             if values.get(name) is not None]
    if given and not latency:
        raise ParameterError(f"{' and '.join(given)} {'say' if len(given) > 1 else 'says'} how "
                             "to time the models; an analysis times them only for "
                             "target=latency:F.")


PLAN_FILE_HELP = ("Optional per-group plan instead of percent: JSON {group or layer name: "
                  "fraction to remove}, e.g. the plan an analysis (tf_analyze, pt_analyze) "
                  "recommends; groups not named are kept whole")


# -- what every engine takes ------------------------------------------------------
PERCENT = Param(
    "percent", "Fraction of channels to remove from every prunable layer group, in [0, 1): "
    "0.4 removes 40%. Required unless target is given.", parse_percent,
    schema={"type": "number", "minimum": 0, "maximum": 1, "exclusiveMaximum": True},
    example="0.4")
OMMITTED = Param(
    "ommitted", "Comma-separated layer names to keep whole, e.g. fc1,fc2 (the guide's "
    "spelling; omitted and unprunable are accepted too). Model outputs are never pruned.",
    parse_layer_names, aliases=("omitted", "unprunable"), example="fc1,fc2", store_as="omitted")
ROUND_TO = Param(
    "round_to", "Every pruned group keeps a multiple of this many channels (never fewer); "
    "8 or 16 suit the SIMD width of most CPUs", parse_round_to, default=1,
    schema={"type": "integer", "minimum": 1, "maximum": 1024}, example="8")
TARGET = Param(
    "target", "Instead of percent: the fraction of the original's params, MACs or latency to "
    "keep, e.g. macs:0.5 (the uniform percent that meets it is searched) or latency:0.5 (half "
    "the original's time in runtime, at threads and batch_size: the per-group plan is searched "
    "with real timings, guided by your dataset's held-out metric when you send one)",
    parse_target, schema={"type": "string", "pattern": "^(params|macs|latency):0?\\.[0-9]+$"},
    example="latency:0.5")
MEASURE = Param(
    "measure", "Time the original and the pruned model on the server's CPU (false skips it)",
    parse_switch("measure", True), default=True, schema={"type": "boolean"}, example="true")
BATCH_SIZE = Param(
    "batch_size", "A batch size to time the models at, besides 1; with target=latency:F, the "
    "batch the budget is measured at (default 1)", parse_batch_size,
    schema={"type": "integer", "minimum": 1, "maximum": 256}, example="8")
THREADS = Param(
    "threads", "Compute threads to time the models with, as your device runs them (default: "
    "the job's, EDGEAI_JOB_THREADS; at most the CPUs the job may use)", parse_threads,
    schema={"type": "integer", "minimum": 1, "maximum": MAX_THREADS}, example="1")
RECOVER = Param(
    "recover", "With a dataset: refit the layers that lost inputs by least squares and "
    "re-estimate BatchNorm statistics on your data, no training (false turns it off)",
    parse_switch("recover", True), default=True, schema={"type": "boolean"}, example="true")
FINETUNE_EPOCHS = Param(
    "finetune_epochs", "With a dataset: epochs of fine-tuning (Adam, CPU) after recovery, "
    "each measured on held-out data", parse_epochs, default=0,
    schema={"type": "integer", "minimum": 0, "maximum": MAX_FINETUNE_EPOCHS}, example="3")
COMMON_PARAMS = (PERCENT, OMMITTED, ROUND_TO, TARGET, MEASURE, BATCH_SIZE, THREADS, RECOVER,
                 FINETUNE_EPOCHS)
