"""The plain data a job travels as, its result, and the user-facing error.

The pruning engines run inside the sandboxed child process. They know nothing of
Flask, the database or HTTP: they receive a :class:`PruneJob` (plain data, JSON
serialisable), read the input files it names, write their artifacts into
``job.output_dir`` and return a :class:`PruneResult`. A problem that is the
user's to fix (unsupported format, unknown layer name, nothing prunable, unsafe
file) is raised as :class:`PruningError` and becomes the failed job's message.
The pipeline every job runs is :mod:`edgeai.pruning.pipeline`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


class PruningError(Exception):
    """A job cannot be pruned for a reason the user can act on.

    ``str(error)`` is shown to the user as the failed transaction's message, so
    it must say what was wrong and what is allowed instead.
    """


class UnsafeInputError(PruningError):
    """An uploaded file would run code or touch the system if loaded; it is refused."""


@dataclass(frozen=True)
class PruneJob:
    """Everything an engine needs to prune one uploaded model.

    ``inputs`` maps a role to an absolute path the server created:
    TensorFlow jobs have ``"model"``; PyTorch jobs have ``"weights"``,
    ``"class_def"`` and optionally ``"dataset"``.
    ``input_names`` maps the same roles to the client's original file name
    (data only, never used as a path; the engines use its extension to pick
    a loader and the PyTorch engine uses the class file's stem as module name).
    ``output_stem`` is the base name the artifact must get (``tmpab12cd34``);
    the engine adds the extension that fits the format it writes.
    """

    framework: str
    percent: float
    omitted: tuple[str, ...]
    inputs: dict[str, str]
    input_names: dict[str, str]
    output_dir: str
    output_stem: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the job as JSON-serialisable data (for the child process)."""
        data = asdict(self)
        data["omitted"] = list(self.omitted)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruneJob":
        """Rebuild a job from :meth:`to_dict` output."""
        data = dict(data)
        data["omitted"] = tuple(data.get("omitted") or ())
        return cls(**data)


@dataclass
class PruneResult:
    """What an engine produced.

    ``artifact`` is the file name (not a path) inside ``job.output_dir``;
    ``message`` is the plain-text summary of the pruned model shown by status
    (Keras ``summary()`` / torchsummary table); ``report`` is JSON-serialisable
    and follows :func:`empty_report`'s layout. ``exited_at`` (``time.monotonic()``)
    is when the sandbox saw the job's process end: the runner measures from there to
    the result being written (it is not part of the report).
    """

    artifact: str
    message: str
    report: dict[str, Any]
    exited_at: float | None = None


def channels_to_remove(n_channels: int, percent: float) -> int:
    """Return how many of ``n_channels`` a ``percent`` removes.

    The documented rule, the same in both engines: round ``n * percent`` to
    the nearest whole number (halves round up), and always keep at least one
    channel. Rounding to nearest rather than flooring makes ``k/n`` remove
    exactly ``k`` channels despite float error (``0.7 * 10 == 7.000000000000001``).
    """
    if n_channels <= 1 or percent <= 0:
        return 0
    remove = int(math.floor(n_channels * percent + 0.5))
    return max(0, min(remove, n_channels - 1))
