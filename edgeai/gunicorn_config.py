"""gunicorn's hooks for edgeai: ``gunicorn -c python:edgeai.gunicorn_config wsgi:app``.

``make run``, ``edgeai serve`` and the tests' servers load it. Before the master forks
its workers, it starts one zygote per framework (:func:`edgeai.sandbox.zygote.
start_shared`): every worker forks its jobs' children from those, so a server keeps
one set of zygotes however many workers it has, and their imports start before the
workers even boot (the first job after start-up waits the less for them). Without
this file (a plain ``gunicorn wsgi:app``), each worker starts zygotes of its own.
"""
from __future__ import annotations

import subprocess
from typing import Any

_zygotes: list[subprocess.Popen] = []


def on_starting(server: Any) -> None:
    """In the master, before any worker: start the shared zygotes (where this server
    runs jobs with zygotes, ``EDGEAI_RUN_JOBS`` and ``EDGEAI_WARM_SPARES`` on)."""
    from edgeai.config import load_settings

    settings = load_settings()
    if not (settings.run_jobs and settings.warm_spares):
        return
    from edgeai.pruning import FRAMEWORKS
    from edgeai.sandbox.supervisor import child_env
    from edgeai.sandbox.zygote import start_shared

    _zygotes.extend(start_shared(FRAMEWORKS, child_env(settings.job_threads)))
    server.log.info("zygotes for %s started (pids %s), shared by every worker",
                    ", ".join(FRAMEWORKS), ", ".join(str(p.pid) for p in _zygotes))


def on_exit(server: Any) -> None:
    """The master stops: so do the zygotes (their children, the jobs, with them)."""
    for proc in _zygotes:
        if proc.poll() is None:
            proc.terminate()
    for proc in _zygotes:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
