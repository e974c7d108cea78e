"""Entry point of a sandbox child: ``python -m edgeai.sandbox.child SETTINGS [--probe]``.

Protocol with :mod:`edgeai.sandbox.supervisor`: ``SETTINGS`` is JSON with the
framework, the confinement spec and an optional ``entry``. The child confines
itself first (:func:`edgeai.sandbox.confine.confine`), then imports its framework
(so that a job handed to it later starts warm) and writes ``ready <confinement
report as JSON>`` on stdout. It reads exactly one job as a JSON line on stdin,
runs it in its slot and writes ``result.json`` there, then exits: a child never
serves two jobs. While the job runs, its phase and fraction done
(:mod:`edgeai.pruning.progress`) are rewritten into ``progress.json`` in the slot.
With ``--probe`` it stops after writing ``ready``.
"""
from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
import traceback


def _write_result(workdir: str, payload: dict) -> None:
    tmp = os.path.join(workdir, ".result.json.tmp")
    with open(tmp, "w") as handle:
        json.dump(payload, handle)
    os.replace(tmp, os.path.join(workdir, "result.json"))


def _progress_writer(workdir: str):
    """A :mod:`edgeai.pruning.progress` listener that atomically rewrites
    ``progress.json`` in the slot, where the supervisor reads it (bounded, validated)."""
    tmp, target = os.path.join(workdir, ".progress.json.tmp"), os.path.join(workdir,
                                                                            "progress.json")

    def write(phase: str, fraction: float | None) -> None:
        try:
            with open(tmp, "w") as handle:
                json.dump({"phase": phase, "progress": fraction}, handle)
            os.replace(tmp, target)
        except OSError:  # news of progress is not worth failing the job for
            pass

    return write


def _ready(confinement: dict) -> None:
    sys.stdout.write("ready " + json.dumps(confinement) + "\n")
    sys.stdout.flush()


def _runner(settings: dict):
    """The engine's ``prune`` (warmed up), or the ``module:function`` in ``entry``."""
    if settings.get("entry"):
        module, _, name = settings["entry"].partition(":")
        return getattr(importlib.import_module(module), name)
    from edgeai.pruning import get_engine

    engine = get_engine(settings["framework"])
    engine.warm_up()
    return engine.prune


def main() -> int:
    """Confine, warm up, run one job; exit 0 when a result or error was written."""
    settings = json.loads(sys.argv[1])
    started = time.perf_counter()
    from edgeai.sandbox.confine import confine

    confinement = confine(settings["confine"])
    confinement["confine_ms"] = round((time.perf_counter() - started) * 1000, 1)
    slot = confinement["workdir"]
    os.chdir(slot)
    if not confinement["layers"]["view"]:
        # No private /tmp: temporary files go to the slot, never to the host's /tmp.
        os.makedirs(os.path.join(slot, ".tmp"), exist_ok=True)
        os.environ["HOME"] = os.environ["TMPDIR"] = os.path.join(slot, ".tmp")
    if "--probe" in sys.argv[2:]:
        _ready(confinement)
        return 0

    warm_started = time.perf_counter()
    run = _runner(settings)
    warm_up_seconds = time.perf_counter() - warm_started
    _ready(confinement)

    line = sys.stdin.readline()
    if not line:
        return 0  # the server shut down before giving this spare a job
    from edgeai.pruning import PruneJob, PruningError

    job = PruneJob.from_dict(json.loads(line)["job"])
    from edgeai.pruning import progress

    progress.track(_progress_writer(slot))
    job_started = time.perf_counter()
    try:
        result = run(job)
    except PruningError as error:
        _write_result(slot, {"ok": False, "error": str(error), "kind": type(error).__name__})
        return 0
    except MemoryError:
        limit = settings["confine"]["limits"]["memory_mb"]
        _write_result(slot, {"ok": False, "kind": "MemoryError",
                             "error": f"The job ran out of memory (limit {limit} MB)."})
        return 0
    except Exception as error:  # noqa: BLE001 - any engine bug fails this job only
        traceback.print_exc()
        _write_result(slot, {"ok": False, "kind": type(error).__name__,
                             "error": f"Pruning failed: {type(error).__name__}: {error}"})
        return 0
    report = dict(result.report)
    report["sandbox"] = {
        **confinement,
        "warm_up_seconds": round(warm_up_seconds, 3),
        "job_seconds": round(time.perf_counter() - job_started, 3),
        # ru_maxrss is in KiB on Linux; it includes the framework import.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    _write_result(slot, {"ok": True, "artifact": result.artifact, "message": result.message,
                         "report": report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
