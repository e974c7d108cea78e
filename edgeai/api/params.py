"""Validation of the submit calls' query parameters and files.

Every check runs before anything is stored, and every message says what is
allowed. Functions raise :class:`edgeai.errors.BadRequest` with the guide's
refused-upload body.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import PurePosixPath, PureWindowsPath

from werkzeug.datastructures import FileStorage

from edgeai.errors import BadRequest, submit_error

OMITTED_ALIASES = ("ommitted", "omitted", "unprunable")
LAYER_NAME = re.compile(r"^[A-Za-z0-9_.\-/:]{1,256}$")
MAX_OMITTED = 1000
MAX_INPUT_ELEMENTS = 1 << 26

TF_MODEL_EXTENSIONS = (".h5", ".hdf5", ".keras", ".zip")
PT_WEIGHTS_EXTENSIONS = (".pth", ".pt", ".bin", ".safetensors")
PT_CLASS_EXTENSIONS = (".py",)
PT_DATASET_EXTENSIONS = (".pth", ".pt", ".npz")


def _bad(message: str) -> BadRequest:
    return submit_error(BadRequest, message)


def parse_percent(raw: str | None) -> float:
    """Parse ``percent``: a fraction in [0, 1), e.g. ``0.4`` removes 40% of channels."""
    allowed = "percent must be a fraction in [0, 1): 0.4 removes 40% of the channels"
    if raw is None or raw.strip() == "":
        raise _bad(f"percent is required; {allowed}.")
    try:
        value = float(raw)
    except ValueError:
        raise _bad(f"percent={raw!r} is not a number; {allowed}.") from None
    if not math.isfinite(value):
        raise _bad(f"percent={raw!r} is not a finite number; {allowed}.")
    if 1 <= value <= 100:
        raise _bad(f"percent={raw!r} is out of range; {allowed} "
                   f"(for {value:g}% send percent={value / 100:g}).")
    if not 0 <= value < 1:
        raise _bad(f"percent={raw!r} is out of range; {allowed}.")
    return value


def parse_omitted(args: Mapping[str, str]) -> tuple[str, ...]:
    """Parse the layers kept whole from ``ommitted`` (or its aliases ``omitted``, ``unprunable``).

    Layer names are checked for shape here; whether they exist in the model is
    known only once it is loaded, and an unknown name then fails the job with
    the list of valid names.
    """
    given = {name: args[name] for name in OMITTED_ALIASES if args.get(name) not in (None, "")}
    if len(set(given.values())) > 1:
        raise _bad("Send the layers to keep whole in one parameter: ommitted (or its aliases "
                   f"omitted, unprunable); got {', '.join(sorted(given))} with different values.")
    raw = next(iter(given.values()), "")
    names = []
    for part in raw.split(","):
        name = part.strip()
        if not name:
            continue
        if not LAYER_NAME.match(name):
            raise _bad(f"ommitted: {name[:80]!r} is not a layer name; names are 1-256 characters "
                       "of letters, digits and _ . - / :, separated by commas (e.g. fc1,fc2).")
        if name not in names:
            names.append(name)
    if len(names) > MAX_OMITTED:
        raise _bad(f"ommitted lists {len(names)} layers; at most {MAX_OMITTED} are allowed.")
    return tuple(names)


def parse_input_size(raw: str | None) -> list[int]:
    """Parse ``input_size``: the shape of one input without the batch dimension, e.g. 1,28,28."""
    example = "the shape of one input without the batch dimension, e.g. input_size=1,28,28"
    if raw is None or raw.strip() == "":
        raise _bad(f"input_size is required: {example}.")
    parts = [p.strip() for p in raw.strip("()[] ").split(",") if p.strip()]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise _bad(f"input_size={raw!r} must be whole numbers separated by commas: {example}.") \
            from None
    if not 1 <= len(dims) <= 4 or any(d < 1 for d in dims):
        raise _bad(f"input_size={raw!r} must have 1 to 4 positive dimensions: {example}.")
    if math.prod(dims) > MAX_INPUT_ELEMENTS:
        raise _bad(f"input_size={raw!r} has more than {MAX_INPUT_ELEMENTS} elements.")
    return dims


def parse_model_name(raw: str | None) -> str:
    """Parse ``model_name``: the class to build with no arguments (default ``Net``)."""
    name = (raw or "Net").strip()
    if not name.isidentifier() or name.startswith("_"):
        raise _bad(f"model_name={name[:80]!r} must be the name of a class in class_def, "
                   "e.g. model_name=Net.")
    return name


def client_file_name(upload: FileStorage) -> str:
    """The bare name the client gave a file (kept as data, never used as a path)."""
    raw = upload.filename or ""
    # Strip any directory part a client sends, Windows or POSIX, and control
    # characters (a NUL has no business in a name, even one kept only as text).
    name = PurePosixPath(PureWindowsPath(raw).name).name
    return "".join(ch for ch in name if ch.isprintable())[:255]


def check_file(files: Mapping[str, FileStorage], field: str, extensions: tuple[str, ...],
               required: bool = True) -> FileStorage | None:
    """Return the upload in form field ``field`` after checking it is present,
    has one of ``extensions`` and is not empty."""
    upload = files.get(field)
    allowed = ", ".join(extensions)
    if upload is None or not upload.filename:
        if required:
            raise _bad(f"The form file '{field}' is required ({allowed}).")
        return None
    name = client_file_name(upload)
    suffix = PurePosixPath(name.lower()).suffix
    if suffix not in extensions:
        raise _bad(f"'{field}' must be a {allowed} file; got {name[:100]!r}.")
    stream = upload.stream
    position = stream.tell()
    stream.seek(0, 2)
    size = stream.tell()
    stream.seek(position)
    if size == 0:
        raise _bad(f"'{field}' ({name[:100]!r}) is empty.")
    return upload
