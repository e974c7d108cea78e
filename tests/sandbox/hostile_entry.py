"""A stand-in for the engine inside a sandbox child: runs the job's ``class_def`` as Python.

Only the confinement tests use it (``Sandbox(entry="tests.sandbox.hostile_entry:run")``);
the server never sets an entry. No check stands between this and the code, so what
the code achieves is exactly what the walls allow. Whatever the code gathered in
``loot`` is handed back through every channel the server returns to a client: the
model file (as JSON) and the status message.
"""
from __future__ import annotations

import json
import os

from edgeai.pruning import PruneResult


def run(job):
    """Execute the attack in ``job.inputs["class_def"]``; return what it gathered."""
    with open(job.inputs["class_def"]) as handle:
        source = handle.read()
    loot: dict = {}
    namespace = {"job": job, "loot": loot, "options": job.options, "__name__": "attack"}
    exec(compile(source, "attack.py", "exec"), namespace)
    artifact = namespace.get("artifact") or job.output_stem + ".bin"
    text = json.dumps(loot, default=repr)
    if not namespace.get("artifact"):
        with open(os.path.join(job.output_dir, artifact), "w") as handle:
            handle.write(text)
    return PruneResult(artifact=artifact, message=namespace.get("message", text),
                       report=namespace.get("report", {"artifacts": {"model": artifact}}))
