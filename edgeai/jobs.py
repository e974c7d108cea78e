"""The durable job queue: the ``transactions`` table is the queue.

Request handlers only insert queued rows. In every server process a
:class:`JobRunner` polls the table, claims rows atomically (``BEGIN IMMEDIATE``:
count running rows, then take the oldest queued one, so the service-wide cap
``EDGEAI_MAX_RUNNING_JOBS`` holds across all gunicorn workers), runs each claimed
job in the sandbox on a ``ThreadPoolExecutor`` thread, heartbeats while it runs,
and always writes a terminal state. Rows whose heartbeat went stale — their
worker was killed — are re-queued, at most ``EDGEAI_MAX_ATTEMPTS`` times in all,
then failed with a reason. No database session is held open across a prune.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import func, select, update

from edgeai.config import Settings
from edgeai.db import Database, Transaction
from edgeai.pruning import FRAMEWORKS, PruneJob, get_engine
from edgeai.sandbox import JobFailed, Sandbox, limits_from_settings
from edgeai.storage import Storage, artifact_stem

log = logging.getLogger(__name__)

INPUT_ROLES = {"tensorflow": ("model",), "pytorch": ("weights", "class_def", "dataset")}


def worker_id() -> str:
    """Identify this process in ``claimed_by``: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def claim_next_job(database: Database, claimer: str, max_running: int) -> Transaction | None:
    """Atomically move the oldest queued row to running, if the cap allows.

    Returns the claimed row (detached), or None when nothing is queued or
    ``max_running`` jobs already run service-wide.
    """
    with database.session() as session:
        # A plain read first: polling workers take SQLite's write lock only when
        # there is something to claim.
        if session.scalar(select(Transaction.txid).where(Transaction.state == "queued")
                          .limit(1)) is None:
            return None
    with database.immediate() as session:
        running = session.scalar(
            select(func.count()).select_from(Transaction).where(Transaction.state == "running"))
        if running >= max_running:
            return None
        row = session.scalars(select(Transaction).where(Transaction.state == "queued")
                              .order_by(Transaction.created_at).limit(1)).first()
        if row is None:
            return None
        now = time.time()
        row.state = "running"
        row.claimed_by = claimer
        row.started_at = now
        row.heartbeat_at = now
        row.attempts += 1
        row.message = "Pruning in progress."
        session.flush()
        session.expunge(row)
        return row


def finish_job(database: Database, txid: str, claimer: str, **values) -> bool:
    """Write a terminal state, only if this claimer still holds the row.

    Returns False when the row was re-queued meanwhile (then another worker
    owns the outcome and this one's result is discarded).
    """
    values.setdefault("finished_at", time.time())
    with database.immediate() as session:
        result = session.execute(
            update(Transaction)
            .where(Transaction.txid == txid, Transaction.claimed_by == claimer,
                   Transaction.state == "running")
            .values(**values))
        return result.rowcount == 1


def recover_stale_jobs(database: Database, stale_seconds: float, max_attempts: int) -> int:
    """Re-queue (or, past ``max_attempts``, fail) running rows with a stale heartbeat.

    Returns how many rows it changed.
    """
    cutoff = time.time() - stale_seconds
    changed = 0
    with database.immediate() as session:
        rows = session.scalars(select(Transaction).where(
            Transaction.state == "running", Transaction.heartbeat_at < cutoff)).all()
        for row in rows:
            changed += 1
            row.claimed_by = None
            if row.attempts >= max_attempts:
                row.state = "failed"
                row.finished_at = time.time()
                row.message = (f"The server stopped while pruning this model, {row.attempts} "
                               "times; giving up. Submit it again, or with a smaller model.")
            else:
                row.state = "queued"
                row.message = "Re-queued after the server stopped while pruning it."
    return changed


def expire_artifacts(database: Database, storage: Storage, retention_hours: float) -> int:
    """Delete artifacts of jobs done more than ``retention_hours`` ago and mark them expired.

    Returns how many transactions expired. (Inputs are deleted as soon as a job
    ends, so only done rows still hold files.)
    """
    if retention_hours <= 0:
        return 0
    cutoff = time.time() - retention_hours * 3600
    with database.immediate() as session:
        rows = session.scalars(select(Transaction).where(
            Transaction.state == "done", Transaction.finished_at < cutoff)).all()
        for row in rows:
            row.state = "expired"
            row.message = (f"The pruned model was deleted {retention_hours:g} hours after it was "
                           "made (EDGEAI_RETENTION_HOURS). Submit the model again.")
        expired = [row.txid for row in rows]
    for txid in expired:
        storage.remove_results(txid)
    return len(expired)


def build_job(row: Transaction, storage: Storage) -> PruneJob:
    """Turn a claimed row into the engine's :class:`PruneJob`; inputs are the stored
    uploads (the sandbox links them into the child's slot and sets ``output_dir``)."""
    inputs = {}
    for role in INPUT_ROLES[row.framework]:
        source = storage.input_path(row.txid, role)
        if source.exists():
            inputs[role] = str(source)
    params = row.params or {}
    options = {k: v for k, v in params.items() if k not in ("percent", "omitted")}
    return PruneJob(framework=row.framework, percent=float(params["percent"]),
                    omitted=tuple(params.get("omitted") or ()), inputs=inputs,
                    input_names=dict(row.input_names or {}), output_dir="",
                    output_stem=artifact_stem(), options=options)


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
        """Hand rows this worker holds back to the queue, giving the attempt back:
        a shutdown is not the job's fault, and a live worker takes it at once."""
        if not txids:
            return
        with self.database.immediate() as session:
            session.execute(update(Transaction).where(
                Transaction.txid.in_(txids), Transaction.claimed_by == self.claimer,
                Transaction.state == "running").values(
                state="queued", claimed_by=None, attempts=Transaction.attempts - 1,
                message="Re-queued: the server worker running it shut down."))

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
            except Exception:  # noqa: BLE001 - a locked database must not kill the loop
                log.exception("job dispatcher")
            self._wake.wait(self.settings.poll_seconds)
            self._wake.clear()

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            with self._held_lock:
                held = list(self._held)
            if not held:
                continue
            try:
                with self.database.session() as session:
                    session.execute(update(Transaction).where(
                        Transaction.txid.in_(held), Transaction.claimed_by == self.claimer,
                        Transaction.state == "running").values(heartbeat_at=time.time()))
            except Exception:  # noqa: BLE001
                log.exception("heartbeat")

    # -- one job -----------------------------------------------------------
    def _run(self, row: Transaction) -> None:
        txid = row.txid
        try:
            values = self._execute(row)
        except JobFailed as error:
            values = {"state": "failed", "message": str(error)}
        except Exception as error:  # noqa: BLE001 - every job ends in a terminal state
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
