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
from typing import Any

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
    """One framework's submit call, parameters, files and download formats."""

    name: str
    endpoint: str
    summary: str
    params: tuple[Param, ...]
    files: tuple[FileRole, ...]
    downloads: tuple[str, ...] = ("model",)
    download_help: str = "model: the pruned model, in the format uploaded"

    def param(self, name: str) -> Param:
        """The parameter called ``name`` (or one of its aliases)."""
        for param in self.params:
            if name == param.name or name in param.aliases:
                return param
        raise KeyError(name)


# -- parsers ---------------------------------------------------------------------
def parse_percent(raw: str | None) -> float:
    """``percent``: a fraction in [0, 1), e.g. ``0.4`` removes 40% of channels."""
    allowed = "percent must be a fraction in [0, 1): 0.4 removes 40% of the channels"
    if raw is None or raw.strip() == "":
        raise ParameterError(f"percent is required; {allowed}.")
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


def parse_input_size(raw: str | None) -> list[int]:
    """``input_size``: one input's shape without the batch dimension, e.g. 1,28,28."""
    example = "the shape of one input without the batch dimension, e.g. input_size=1,28,28"
    if raw is None or raw.strip() == "":
        raise ParameterError(f"input_size is required: {example}.")
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


def parse_class_name(raw: str | None) -> str:
    """``model_name``: the class to build with no arguments (default ``Net``)."""
    name = (raw or "Net").strip()
    if not name.isidentifier() or name.startswith("_"):
        raise ParameterError(f"model_name={name[:80]!r} must be the name of a class in "
                             "class_def, e.g. model_name=Net.")
    return name


# -- what every engine takes ------------------------------------------------------
PERCENT = Param(
    "percent", "Fraction of channels to remove from every prunable layer group, in [0, 1): "
    "0.4 removes 40%", parse_percent, required=True,
    schema={"type": "number", "minimum": 0, "maximum": 1, "exclusiveMaximum": True},
    example="0.4")
OMMITTED = Param(
    "ommitted", "Comma-separated layer names to keep whole, e.g. fc1,fc2 (the guide's "
    "spelling; omitted and unprunable are accepted too). Model outputs are never pruned.",
    parse_layer_names, aliases=("omitted", "unprunable"), example="fc1,fc2", store_as="omitted")
COMMON_PARAMS = (PERCENT, OMMITTED)
