"""A sandbox child: confine, warm up, run one job, hand everything back on the channel.

A child is forked by its framework's zygote (:mod:`edgeai.sandbox.zygote`) or, where
no zygote can serve, started as ``python -m edgeai.sandbox.child`` with its settings
as the first line of its stdin. Either way it runs :func:`run_child`: it confines
itself first (:func:`edgeai.sandbox.confine.confine`), finishes warming up, and
reports ``ready`` with what the kernel says is in force on the channel
(:mod:`edgeai.sandbox.channel`, descriptor 3 or ``settings["channel_fd"]``). The
supervisor checks that report and only then sends the job, as one JSON line on
stdin. The child runs it, streams the files it made and its result on the channel,
and exits: a child never serves two jobs. Whatever the job prints goes to stderr,
which the supervisor keeps the tail of.
"""
from __future__ import annotations

import gc
import importlib
import json
import os
import resource
import sys
import time
import traceback
from typing import Any

from edgeai.sandbox.channel import CHANNEL_FD, ChannelWriter


def _runner(settings: dict[str, Any]):
    """The engine's ``prune`` (warmed up), or the ``module:function`` in ``entry``."""
    if settings.get("entry"):
        module, _, name = settings["entry"].partition(":")
        return getattr(importlib.import_module(module), name)
    from edgeai.pruning import get_engine

    engine = get_engine(settings["framework"])
    engine.warm_up()
    return engine.prune


def _read_line(fd: int, limit: int = 64 << 20) -> bytes:
    """One line from ``fd`` (unbuffered, so nothing past it is taken from the pipe)."""
    data = bytearray()
    while len(data) < limit:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
        if data.endswith(b"\n"):
            break
    return bytes(data)


def _suffix(name: str, stem: str) -> str:
    """What the engine added to the server's stem (``.h5``, ``.plan.json``, ...)."""
    if name.startswith(stem) and len(name) > len(stem):
        return name[len(stem):]
    return os.path.splitext(name)[1] or ".bin"


def run_child(settings: dict[str, Any], forked: bool = False) -> int:
    """Confine, warm up, report ready, run one job; return the exit code (0 when a
    result was sent). ``settings``: ``framework``, ``confine`` (the spec of
    :func:`edgeai.sandbox.confine.confine`), ``entry``, ``probe``, ``channel_fd``."""
    writer = ChannelWriter(int(settings.get("channel_fd", CHANNEL_FD)))
    confinement = _confined(settings, forked)
    if settings.get("probe"):
        writer.send({"type": "ready", "confinement": confinement})
        return 0

    warm_started = time.perf_counter()
    run = _runner(settings)
    # The framework's and the warm-up's objects outlive the job: a full collection
    # during the job no longer walks them (about 0.2 s of a ResNet50 job).
    gc.freeze()
    warm_up_seconds = time.perf_counter() - warm_started
    writer.send({"type": "ready", "confinement": confinement})

    line = _read_line(0)
    if not line:
        return 0  # the supervisor gave this child no job
    from edgeai.pruning import PruneJob, progress

    job = PruneJob.from_dict(json.loads(line)["job"])
    progress.track(writer.send_progress)
    job_started = time.perf_counter()
    try:
        result = run(job)
    except Exception as error:  # noqa: BLE001 - any engine bug fails this job only
        writer.send(_failure(error, settings["confine"]["limits"]["memory_mb"]))
        return 0
    report = _send_files(writer, result, job)
    stats = {"warm_up_seconds": round(warm_up_seconds, 3),
             "job_seconds": round(time.perf_counter() - job_started, 3),
             # ru_maxrss is in KiB on Linux; it includes the framework import.
             "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    writer.send({"type": "result", "ok": True, "message": result.message, "report": report,
                 "stats": stats})
    return 0


def _confined(settings: dict[str, Any], forked: bool) -> dict[str, Any]:
    """Confine this process (:func:`edgeai.sandbox.confine.confine`) and move into the
    job's folder; return what the kernel says is in force, with the time it took."""
    started = time.perf_counter()
    from edgeai.sandbox.confine import confine

    confinement = confine(settings["confine"])
    confinement["confine_ms"] = round((time.perf_counter() - started) * 1000, 1)
    confinement["forked"] = forked
    workdir = confinement["workdir"]
    os.chdir(workdir)
    if not confinement["layers"]["view"]:
        # No private /tmp: temporary files go to the job's folder, never the host's /tmp.
        os.makedirs(os.path.join(workdir, ".tmp"), exist_ok=True)
        os.environ["HOME"] = os.environ["TMPDIR"] = os.path.join(workdir, ".tmp")
    return confinement


def _failure(error: Exception, memory_mb: int) -> dict[str, Any]:
    """The result message for a job that raised ``error``."""
    from edgeai.pruning import PruningError

    if isinstance(error, PruningError):
        return {"type": "result", "ok": False, "error": str(error),
                "kind": type(error).__name__}
    if isinstance(error, MemoryError):
        return {"type": "result", "ok": False, "kind": "MemoryError",
                "error": f"The job ran out of memory (limit {memory_mb} MB)."}
    traceback.print_exc()
    return {"type": "result", "ok": False, "kind": type(error).__name__,
            "error": f"Pruning failed: {type(error).__name__}: {error}"}


def _send_files(writer: ChannelWriter, result: Any, job: Any) -> dict[str, Any]:
    """Stream every file the job made on the channel (each once, under the first key
    naming it); return the report with the artifacts' map, the model under ``model``."""
    report = dict(result.report)
    artifacts = {"model": result.artifact, **dict(report.get("artifacts") or {})}
    artifacts["model"] = result.artifact
    report["artifacts"] = artifacts
    sent = set()
    for key, name in artifacts.items():
        if name and name not in sent:
            sent.add(name)
            writer.send_file(key, _suffix(name, job.output_stem),
                             os.path.join(job.output_dir, name))
    return report


def main() -> int:
    """``python -m edgeai.sandbox.child``: settings on the first line of stdin."""
    settings = json.loads(_read_line(0))
    channel = int(settings.pop("channel_fd", CHANNEL_FD))
    if channel != CHANNEL_FD:  # the same descriptor as a forked child's
        os.dup2(channel, CHANNEL_FD, inheritable=False)
        os.close(channel)
    return run_child(settings)


if __name__ == "__main__":
    sys.exit(main())
