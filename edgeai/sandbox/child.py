"""Entry point of a sandbox child: ``python -m edgeai.sandbox.child``.

Protocol with :mod:`edgeai.sandbox`: the parent passes the confinement settings
as JSON in ``argv[1]``. The child confines itself, imports its framework (so
that a job handed to it later starts warm), writes ``ready`` on stdout, then
reads exactly one job as a JSON line on stdin, runs it in the given folder and
writes ``result.json`` there. It then exits: a child never serves two jobs.
"""
from __future__ import annotations

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


def main() -> int:
    """Run one job under confinement; exit 0 when a result or error was written."""
    settings = json.loads(sys.argv[1])
    from edgeai.sandbox import confine

    confine.die_with_parent(settings["parent_pid"])
    network_isolated = settings.get("isolate_network") and confine.isolate_network()
    confine.set_limits(settings["limits"])
    # Below the server's priority: status calls stay fast while a job computes.
    os.nice(10)
    if settings.get("uid") is not None:
        confine.drop_privileges(settings["uid"], settings["gid"])
    os.chdir(settings["idle_dir"])

    warm_started = time.perf_counter()
    from edgeai.pruning import PruneJob, PruningError, get_engine

    engine = get_engine(settings["framework"])
    engine.warm_up()
    warm_up_seconds = time.perf_counter() - warm_started
    sys.stdout.write("ready\n")
    sys.stdout.flush()

    line = sys.stdin.readline()
    if not line:
        return 0  # the server shut down before giving this spare a job
    request = json.loads(line)
    workdir = request["workdir"]
    os.chdir(workdir)
    os.environ["HOME"] = workdir
    os.environ["TMPDIR"] = workdir
    job = PruneJob.from_dict(request["job"])
    job_started = time.perf_counter()
    try:
        result = engine.prune(job)
    except PruningError as error:
        _write_result(workdir, {"ok": False, "error": str(error), "kind": type(error).__name__})
        return 0
    except MemoryError:
        limit = settings["limits"]["memory_mb"]
        _write_result(workdir, {"ok": False, "kind": "MemoryError",
                                "error": f"The job ran out of memory (limit {limit} MB)."})
        return 0
    except Exception as error:  # noqa: BLE001 - any engine bug fails this job only
        traceback.print_exc()
        _write_result(workdir, {"ok": False, "kind": type(error).__name__,
                                "error": f"Pruning failed: {type(error).__name__}: {error}"})
        return 0
    report = dict(result.report)
    report["sandbox"] = {
        "network_isolated": bool(network_isolated),
        "dropped_privileges": os.getuid() != 0,
        "privilege_note": settings.get("privilege_note"),
        "warm_up_seconds": round(warm_up_seconds, 3),
        "job_seconds": round(time.perf_counter() - job_started, 3),
        # ru_maxrss is in KiB on Linux; it includes the framework import.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    _write_result(workdir, {"ok": True, "artifact": result.artifact, "message": result.message,
                            "report": report})
    return 0


if __name__ == "__main__":
    sys.exit(main())
