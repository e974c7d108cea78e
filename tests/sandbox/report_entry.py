"""A stand-in for the engine inside a sandbox child whose job says what it likes: it runs
the job's ``class_def`` as Python (the code is assumed to run, whatever it is) and hands
back the ``report``, ``message`` and ``artifact`` that code set.

Tests of what the server does with a job's word use it
(``Sandbox(entry="tests.sandbox.report_entry:run")``); the server never sets an entry.
"""
from __future__ import annotations

import os

from edgeai.pruning import PruneResult


def run(job):
    """Execute ``job.inputs["class_def"]``; write the artifact it names (if it did not);
    return its report, message and artifact."""
    with open(job.inputs["class_def"]) as handle:
        source = handle.read()
    namespace = {"job": job, "__name__": "job"}
    exec(compile(source, "job.py", "exec"), namespace)
    artifact = namespace.get("artifact") or job.output_stem + ".bin"
    for name in {artifact, *(namespace.get("extra_files") or ())}:
        path = os.path.join(job.output_dir, name)
        if not os.path.exists(path):
            with open(path, "wb") as handle:
                handle.write(b"model bytes " + name.encode())
    report = namespace.get("report", {"framework": "pytorch", "percent": job.percent,
                                      "artifacts": {"model": artifact}})
    return PruneResult(artifact=artifact, message=namespace.get("message", "pruned"),
                       report=report)
