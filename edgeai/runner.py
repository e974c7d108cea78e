"""Runs queued jobs: a thread pool that claims rows and runs each in the sandbox.

In every server process a :class:`JobRunner` polls the queue (:mod:`edgeai.queue`),
claims rows, runs each claimed job in the sandbox (:mod:`edgeai.sandbox`) on a
``ThreadPoolExecutor`` thread, heartbeats while it runs, and always writes a
terminal state. No database session is held open across a prune.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgeai.config import Settings
from edgeai.db import Database, Transaction
from edgeai.pruning import FRAMEWORKS, get_engine
from edgeai.queue import (
    build_job,
    claim_next_job,
    expire_artifacts,
    finish_job,
    heartbeat,
    recover_stale_jobs,
    release,
    worker_id,
)
from edgeai.sandbox import JobFailed, Sandbox, limits_from_settings
from edgeai.storage import Storage

log = logging.getLogger(__name__)


def sandbox_for(settings: Settings) -> Sandbox:
    """The sandbox the settings describe; the data dir is what its children must not see."""
    hidden = [Path(settings.data_dir)]
    if settings.database_url.startswith("sqlite:///"):
        hidden.append(Path(settings.database_url.removeprefix("sqlite:///")))
    return Sandbox(Path(settings.data_dir) / "sandbox", limits_from_settings(settings),
                   warm_spares=settings.warm_spares, mode=settings.sandbox,
                   skip=settings.sandbox_skip, hidden=tuple(str(p) for p in hidden))


class JobRunner:
    """Claims and runs jobs for one server process; see the module docstring."""

    def __init__(self, settings: Settings, database: Database, storage: Storage,
                 sandbox: Sandbox | None = None):
        self.settings = settings
        self.database = database
        self.storage = storage
        self.sandbox = sandbox or sandbox_for(settings)
        self.claimer = worker_id()
        self._executor = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="prune")
        self._held: set[str] = set()
        self._held_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        """Recover stale rows, start the spares, the dispatcher and the heartbeat."""
        recover_stale_jobs(self.database, self.settings.stale_seconds, self.settings.max_attempts)
        self.sandbox.probe()
        self.sandbox.prepare_spares(FRAMEWORKS)
        for target, name in ((self._dispatch_loop, "edgeai-dispatch"),
                             (self._heartbeat_loop, "edgeai-heartbeat")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        """Look for work now instead of at the next poll (a row was just queued)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming, kill running children, hand their rows back to the queue."""
        self._stop.set()
        self._wake.set()
        self.sandbox.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        for thread in self._threads:
            thread.join(timeout)
        with self._held_lock:
            held = list(self._held)
        self._release(held)

    def _release(self, txids: list[str]) -> None:
        release(self.database, txids, self.claimer)

    # -- loops -------------------------------------------------------------
    def _free_slots(self) -> int:
        with self._held_lock:
            return self.settings.worker_threads - len(self._held)

    def _dispatch_loop(self) -> None:
        maintenance_every = max(1.0, self.settings.stale_seconds / 2)
        next_maintenance = time.monotonic() + maintenance_every
        while not self._stop.is_set():
            try:
                while self._free_slots() > 0 and not self._stop.is_set():
                    row = claim_next_job(self.database, self.claimer,
                                         self.settings.max_running_jobs)
                    if row is None:
                        break
                    with self._held_lock:
                        self._held.add(row.txid)
                    self._executor.submit(self._run, row)
                if time.monotonic() >= next_maintenance:
                    next_maintenance = time.monotonic() + maintenance_every
                    recover_stale_jobs(self.database, self.settings.stale_seconds,
                                       self.settings.max_attempts)
                    expire_artifacts(self.database, self.storage, self.settings.retention_hours)
            except Exception:  # a locked database must not kill the loop
                log.exception("job dispatcher")
            self._wake.wait(self.settings.poll_seconds)
            self._wake.clear()

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            with self._held_lock:
                held = list(self._held)
            try:
                heartbeat(self.database, held, self.claimer)
            except Exception:  # a missed beat is not fatal; the next one may pass
                log.exception("heartbeat")

    # -- one job -----------------------------------------------------------
    def _run(self, row: Transaction) -> None:
        txid = row.txid
        try:
            values = self._execute(row)
        except JobFailed as error:
            values = {"state": "failed", "message": str(error)}
        except Exception as error:  # every job ends in a terminal state
            log.exception("job %s", txid)
            values = {"state": "failed",
                      "message": f"Internal error while pruning: {type(error).__name__}: {error}"}
        try:
            if self._stop.is_set() and values.get("state") != "done":
                self._release([txid])
            elif finish_job(self.database, txid, self.claimer, **values):
                self.storage.remove_inputs(txid)
        finally:
            self.storage.remove_work(txid)
            with self._held_lock:
                self._held.discard(txid)
            self._wake.set()

    def _execute(self, row: Transaction) -> dict:
        job = build_job(row, self.storage)
        staging = self.storage.work_dir(row.txid)
        result = self.sandbox.run(job, staging, cancel=self._stop,
                                  brings_code=get_engine(row.framework).untrusted_code(job))
        report = dict(result.report)
        artifacts = dict(report.get("artifacts") or {})
        # Extra artifacts (PyTorch state_dict / torch.export) are published too,
        # before the main one, so that "done" implies every listed file exists.
        for name in artifacts.values():
            if name and name != result.artifact:
                self.storage.publish(row.txid, staging / name, name)
        self.storage.publish(row.txid, staging / result.artifact, result.artifact)
        artifacts["model"] = result.artifact
        report["artifacts"] = artifacts
        return {"state": "done", "message": result.message, "filename": result.artifact,
                "report": report}
