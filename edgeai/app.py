"""Assembles the Flask app from the subsystems; each one has its own ``init_app``."""
from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask, Request

from edgeai import api, db, metrics, report_page
from edgeai.api.waiting import StatusWaits
from edgeai.auth import Authenticator
from edgeai.config import load_settings
from edgeai.runner import JobRunner
from edgeai.storage import open_storage

log = logging.getLogger("edgeai")


class UploadRequest(Request):
    """Streams uploaded files straight to the data volume instead of memory or /tmp."""

    def _get_file_stream(self, total_content_length, content_type, filename=None,
                         content_length=None):
        from flask import current_app

        return current_app.extensions["edgeai.storage"].new_incoming_file()


def build_app(overrides: dict[str, Any] | None = None) -> Flask:
    """See :func:`edgeai.create_app`."""
    settings = load_settings()
    if overrides:
        settings = settings.replace(**overrides)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    app = Flask("edgeai")
    app.request_class = UploadRequest
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        # Form fields are tiny; only files are large, and those go to disk.
        MAX_FORM_MEMORY_SIZE=1024 * 1024,
        RESTX_MASK_SWAGGER=True,
        SWAGGER_UI_DOC_EXPANSION="list",
        ERROR_404_HELP=False,
        JSON_SORT_KEYS=False,
    )
    app.extensions["edgeai.settings"] = settings
    database = db.init_app(app, settings)
    storage = open_storage(settings)
    storage.check()
    app.extensions["edgeai.storage"] = storage
    app.extensions["edgeai.auth"] = Authenticator(
        database, settings.auth, settings.trusted_proxies, settings.gateway_client_header)
    if settings.auth == "off":
        log.warning("EDGEAI_AUTH=off: every request is served as one anonymous client. "
                    "Use this for local trials only.")
    # Set when this process stops: waiting status calls answer at once.
    app.extensions["edgeai.stopping"] = stopping = threading.Event()
    app.extensions["edgeai.waits"] = StatusWaits(settings.status_waits, stopping)
    metrics.init_app(app, settings)
    api.init_app(app)
    report_page.init_app(app)
    log.info("files: %s; jobs: %s", storage.describe(),
             "run by this process" if settings.run_jobs else "left to edgeai worker processes")
    on_stop: list[Callable[[], None]] = [stopping.set]
    if settings.run_jobs:
        runner = JobRunner(settings, database, storage)
        app.extensions["edgeai.runner"] = runner
        runner.start()  # which removes what dead processes left in the data dir
        stop_runner = once(runner.stop)
        atexit.register(stop_runner)
        on_stop.append(stop_runner)
    else:
        storage.remove_leftovers()  # uploads a killed API process was receiving
    if os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/") \
            and threading.current_thread() is threading.main_thread():
        stop_on_signals(on_stop)
    return app


def once(function: Callable[[], None]) -> Callable[[], None]:
    """``function`` made to run once: a later call waits for the first to finish."""
    lock = threading.Lock()
    done = []

    def run_once() -> None:
        with lock:
            if not done:
                done.append(True)
                function()

    return run_once


def stop_on_signals(steps: list[Callable[[], None]]) -> None:
    """In a gunicorn worker: on SIGTERM (and SIGINT, SIGQUIT) run ``steps`` at once, in
    a thread, then gunicorn's own handler.

    gunicorn stops a worker by letting its open requests finish and then exiting,
    within its graceful timeout, after which the master kills it. The exit would hand
    running jobs back (``atexit``), but only after the job pool's threads end, and
    they end when their jobs do: a job slower than the graceful timeout was killed with
    its row still running, so it ran again only once its lease expired, one attempt
    spent. Handing back as soon as the signal comes does not depend on how fast the
    jobs or the machine are; waiting status calls answer at once too.
    """
    def run_steps() -> None:
        for step in steps:
            try:
                step()
            except Exception:  # the next step must still run
                log.exception("stopping")

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        previous = signal.getsignal(signum)

        def handler(sig: int, frame: Any, previous: Any = previous) -> None:
            # Not a daemon: the process's exit waits for the hand-back to finish.
            threading.Thread(target=run_steps, name="edgeai-stop").start()
            if callable(previous):
                previous(sig, frame)

        signal.signal(signum, handler)
