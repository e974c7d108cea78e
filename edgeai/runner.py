"""Runs queued jobs: a thread pool that claims rows and runs each in the sandbox.

A :class:`JobRunner` polls the queue (:mod:`edgeai.queue`), leases rows, runs each
claimed job in the sandbox (:mod:`edgeai.sandbox`) on a ``ThreadPoolExecutor``
thread, renews its leases while they run, and always writes a terminal state. No
database session is held open across a prune. It lives in every server process
(``edgeai serve``, gunicorn, the default) or on its own in ``edgeai worker``
(:func:`run_worker`), on any host that shares the database and the store.

A job whose lease is lost (this process stalled longer than
``EDGEAI_STALE_SECONDS`` and another worker took the job) is stopped: its result
would be discarded anyway, and its artifacts are deleted if it got that far. So is
a job its client cancelled (``POST /api/cancel``): the heartbeat sees the request
on the row and the job ends failed, "cancelled by the client". While a job runs,
the phase and fraction its child reports are written to its row, at most once a
second.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeai import metrics
from edgeai.config import Settings
from edgeai.db import Database, Transaction
from edgeai.pruning import FRAMEWORKS, get_engine, spec_for
from edgeai.pruning.report import (
    ERROR_CHARS,
    MESSAGE_CHARS,
    ReportRejected,
    check_report,
    clean_text,
)
from edgeai.queue import (
    CANCELLED,
    build_job,
    cancels_requested,
    claim_next_job,
    deregister_worker,
    expire_artifacts,
    finish_job,
    heartbeat,
    record_progress,
    recover_stale_jobs,
    register_worker,
    release,
    touch_worker,
    worker_id,
)
from edgeai.sandbox import JobFailed, Sandbox, limits_from_settings
from edgeai.storage import FileStore

log = logging.getLogger(__name__)

# A running job's progress is written to its row at most this often.
PROGRESS_WRITE_SECONDS = 1.0


def sandbox_for(settings: Settings) -> Sandbox:
    """The sandbox the settings describe; the data dir is what its children must not see."""
    hidden = [Path(settings.data_dir)]
    if settings.database_url.startswith("sqlite:///"):
        hidden.append(Path(settings.database_url.removeprefix("sqlite:///")))
    return Sandbox(Path(settings.data_dir) / "sandbox", limits_from_settings(settings),
                   warm_spares=settings.warm_spares, mode=settings.sandbox,
                   skip=settings.sandbox_skip, hidden=tuple(str(p) for p in hidden),
                   uids=settings.sandbox_uids,
                   quarantine=Path(settings.data_dir) / "quarantine")


@dataclass
class _Lease:
    """One claimed row while this process runs it."""

    txid: str
    token: str
    claimed_at: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    cancelled_by_client: bool = False
    exited_at: float | None = None  # when the job's process ended (time.monotonic())


class _ProgressWriter:
    """Writes what a running job reports (phase, fraction) to its row: only changes,
    and at most once per :data:`PROGRESS_WRITE_SECONDS`. The sandbox calls it
    several times a second with the latest report, so the last one is written too."""

    def __init__(self, database: Database, lease: str):
        self.database = database
        self.lease = lease
        self.written: tuple[str, float | None] | None = None
        self.at = float("-inf")

    def __call__(self, phase: str, fraction: float | None) -> None:
        """Record ``phase`` and ``fraction`` unless just written, or written under a
        second ago; a database error is logged, never raised into the job."""
        now = time.monotonic()
        if (phase, fraction) == self.written or now - self.at < PROGRESS_WRITE_SECONDS:
            return
        self.at = now
        try:
            record_progress(self.database, self.lease, phase, fraction)
            self.written = (phase, fraction)
        except Exception:  # progress is news, not the job
            log.exception("recording progress (lease %s)", self.lease)


class JobRunner:
    """Claims and runs jobs for one process; see the module docstring.

    ``role`` is what the ``workers`` table calls this process: ``serve`` (jobs run
    beside the API) or ``worker`` (``edgeai worker``).
    """

    def __init__(self, settings: Settings, database: Database, storage: FileStore,
                 sandbox: Sandbox | None = None, role: str = "serve"):
        self.settings = settings
        self.database = database
        self.storage = storage
        self.sandbox = sandbox or sandbox_for(settings)
        self.role = role
        self.claimer = worker_id()
        self._executor = ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="prune")
        self._held: dict[str, _Lease] = {}
        self._held_lock = threading.Lock()
        self._wake = threading.Event()
        self._draining = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ended = threading.Condition()  # notified after a job's final write (long-polls)

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        """Remove what dead runs left on disk, recover stale rows, start the zygotes, the
        dispatcher and the heartbeat."""
        try:
            self.storage.remove_leftovers()
        except Exception:  # clean-up must never stop a server or a worker from starting
            log.exception("removing leftovers of dead runs")
        recover_stale_jobs(self.database, self.settings.stale_seconds, self.settings.max_attempts)
        self.sandbox.probe()
        self.sandbox.prepare(FRAMEWORKS)
        register_worker(self.database, self.claimer, self.role, self.settings.worker_threads)
        metrics.watch_sandbox(self.sandbox)
        for target, name in ((self._dispatch_loop, "edgeai-dispatch"),
                             (self._heartbeat_loop, "edgeai-heartbeat")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        """Look for work now instead of at the next poll (a row was just queued)."""
        self._wake.set()

    def running(self) -> int:
        """How many jobs this process runs now."""
        with self._held_lock:
            return len(self._held)

    def drain(self, timeout: float, abort: threading.Event | None = None) -> bool:
        """Stop claiming and let running jobs finish, for up to ``timeout`` seconds (or
        until ``abort`` is set).

        Returns True when none is left running (:meth:`stop` then hands back nothing).
        """
        self._draining.set()
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            if abort is not None and abort.wait(0.1):
                break
            if abort is None:
                time.sleep(0.1)
        return not self.running()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming, kill running children, hand their rows back to the queue."""
        self._stop.set()
        self._wake.set()
        # The dispatcher first: a claim it is making now must be held (and so handed
        # back below) or handed back by the dispatcher itself, never left running.
        deadline = time.monotonic() + timeout / 2  # gunicorn's graceful timeout is short
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._held_lock:
            held = list(self._held.values())
        for lease in held:
            lease.cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        release(self.database, [lease.token for lease in held])
        self.sandbox.close()  # after the hand-back: stopping zygotes takes seconds
        try:
            deregister_worker(self.database, self.claimer)
        except Exception:  # the database may be what is going away
            log.exception("deregistering %s", self.claimer)

    # -- loops -------------------------------------------------------------
    def _free_slots(self) -> int:
        with self._held_lock:
            return self.settings.worker_threads - len(self._held)

    def _dispatch_loop(self) -> None:
        maintenance_every = max(1.0, self.settings.stale_seconds / 2)
        next_maintenance = time.monotonic() + maintenance_every
        while not self._stop.is_set():
            try:
                while (self._free_slots() > 0 and not self._stop.is_set()
                       and not self._draining.is_set()):
                    row = claim_next_job(self.database, self.claimer,
                                         self.settings.max_running_jobs)
                    if row is None:
                        break
                    lease = _Lease(row.txid, str(row.lease_token))
                    if not self._start_job(row, lease):
                        break
                if time.monotonic() >= next_maintenance:
                    next_maintenance = time.monotonic() + maintenance_every
                    recover_stale_jobs(self.database, self.settings.stale_seconds,
                                       self.settings.max_attempts)
                    expire_artifacts(self.database, self.storage, self.settings.retention_hours)
            except Exception:  # a locked or restarting database must not kill the loop
                log.exception("job dispatcher")
            self._wake.wait(self.settings.poll_seconds)
            self._wake.clear()

    def _start_job(self, row: Transaction, lease: _Lease) -> bool:
        """Run a claimed row on the pool; if this process is stopping (the claim raced
        the stop), hand the row straight back instead. Returns whether it started."""
        with self._held_lock:
            self._held[lease.token] = lease
        try:
            if self._stop.is_set() or self._draining.is_set():
                raise RuntimeError("stopping")
            self._executor.submit(self._run, row, lease)
            return True
        except RuntimeError:  # stopping, or the pool was shut down
            with self._held_lock:
                self._held.pop(lease.token, None)
            release(self.database, [lease.token])
            return False

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            with self._held_lock:
                held = dict(self._held)
            try:
                kept = heartbeat(self.database, list(held))
                asked = cancels_requested(self.database, list(kept))
                if not touch_worker(self.database, self.claimer):
                    register_worker(self.database, self.claimer, self.role,
                                    self.settings.worker_threads)
            except Exception:  # a missed beat is not fatal; the next one may pass
                log.exception("heartbeat")
                continue
            for token, lease in held.items():
                if token in asked and not lease.cancel.is_set():
                    log.info("job %s: cancelled by the client; stopping it", lease.txid)
                    lease.cancelled_by_client = True
                    lease.cancel.set()
                elif token not in kept and not lease.cancel.is_set():
                    log.warning("job %s: lease lost (re-queued after %.0f s without a "
                                "heartbeat); stopping this run", lease.txid,
                                self.settings.stale_seconds)
                    lease.cancel.set()

    # -- one job -----------------------------------------------------------
    def _run(self, row: Transaction, lease: _Lease) -> None:
        txid = row.txid
        metrics.job_started(row.framework)
        reason: str | None = None  # why the sandbox stopped it, in the server's own word
        try:
            values = self._execute(row, lease)
        except JobFailed as error:
            values = {"state": "failed", "message": str(error)}
            reason = error.reason
        except ReportRejected as error:
            values = {"state": "failed", "message": f"The job's report was refused: {error}"}
            reason = "report"
        except Exception as error:  # every job ends in a terminal state
            log.exception("job %s", txid)
            values = {"state": "failed",
                      "message": f"Internal error while pruning: {type(error).__name__}: {error}"}
        if lease.cancelled_by_client and values.get("state") != "done":  # done: too late
            values = {"state": "failed", "message": CANCELLED}
        values["message"] = clean_text(str(values.get("message") or ""), MESSAGE_CHARS
                                       if values.get("state") == "done" else ERROR_CHARS)
        # The sandbox's own reason where it stopped the job; a job that failed on its own
        # (a limit refused inside it, say) is classified from its message, best effort.
        metrics.job_ended(row.framework, values, lease.claimed_at, self._stop.is_set(),
                          **({"reason": reason} if reason else {}))
        try:
            if self._stop.is_set() and values.get("state") != "done":
                release(self.database, [lease.token])
                log.info("job %s handed back (lease %s)", txid, lease.token)
            elif (written := self._finish(txid, lease, values)) == "unwritten":
                pass  # logged; the lease expires and recovery re-queues or fails the row
            elif written == "finished":
                after = (f", written {(time.monotonic() - lease.exited_at) * 1000:.0f} ms "
                         "after its process ended" if lease.exited_at else "")
                self.storage.remove_inputs(txid)
                log.info("job %s %s (lease %s%s)", txid, values.get("state"), lease.token, after)
            else:
                published = (values.get("report") or {}).get("artifacts") or {}
                self.storage.remove_artifacts(txid, {n for n in published.values() if n})
                log.warning("job %s: result discarded, lease %s was lost", txid, lease.token)
        finally:
            self.storage.remove_work(txid, lease.token)
            with self._held_lock:
                self._held.pop(lease.token, None)
            self._wake.set()
            with self.ended:
                self.ended.notify_all()

    def _finish(self, txid: str, lease: _Lease, values: dict[str, Any]) -> str:
        """Write the job's end under its lease: "finished", or "lost" when the lease was.

        A write the database refuses (a value it cannot hold, a constraint, the
        database going away) must not leave the job running until its attempts are
        spent with its files published: the artifacts are removed and the job is
        failed with the reason instead. Returns "unwritten" when even that fails (the
        row's lease then expires and recovery takes it); never raises.
        """
        try:
            return "finished" if finish_job(self.database, txid, self.claimer,
                                            lease=lease.token, **values) else "lost"
        except Exception as error:  # the database's refusal, whatever it is
            log.exception("job %s: storing its %s state failed", txid, values.get("state"))
            cause = getattr(error, "orig", None) or error
            reason = clean_text(
                f"The server could not store this job's result ({type(cause).__name__}: "
                f"{str(cause).strip().splitlines()[0] if str(cause).strip() else 'no detail'})"
                "; nothing of it was kept. Submit the model again; if it fails the same way, "
                "tell the server's operator.", ERROR_CHARS)
        published = (values.get("report") or {}).get("artifacts") or {}
        try:
            self.storage.remove_artifacts(txid, {name for name in published.values() if name})
        except Exception:  # still fail the job below
            log.exception("job %s: removing its published files", txid)
        try:
            return "finished" if finish_job(self.database, txid, self.claimer,
                                            lease=lease.token, state="failed",
                                            message=reason) else "lost"
        except Exception:  # the database is gone: nothing more to do here
            log.exception("job %s: failing it failed too; its lease will expire", txid)
            return "unwritten"

    def _execute(self, row: Transaction, lease: _Lease) -> dict[str, Any]:
        staging = self.storage.work_dir(row.txid, lease.token)
        roles = [role.name for role in spec_for(row.framework).files]
        job = build_job(row, self.storage.fetch_inputs(row.txid, roles, staging / "fetched"))
        result = self.sandbox.run(job, staging, cancel=lease.cancel,
                                  brings_code=get_engine(row.framework).untrusted_code(job),
                                  progress=_ProgressWriter(self.database, lease.token))
        lease.exited_at = result.exited_at
        # The report is the job's word: data, checked (raises ReportRejected) before
        # anything of the job is published or stored; the model's name with it.
        raw = result.report
        if isinstance(raw, dict) and isinstance(raw.get("artifacts") or {}, dict):
            raw = {**raw, "artifacts": {**(raw.get("artifacts") or {}),
                                        "model": result.artifact}}
        report = check_report(raw)
        artifacts = dict(report.get("artifacts") or {})
        if lease.cancel.is_set():
            raise JobFailed("The job's lease was lost; another worker runs it.")
        # Extra artifacts (PyTorch state_dict / torch.export) are published too,
        # before the main one, so that "done" implies every listed file exists; if one
        # cannot be, none stays published.
        published: list[str] = []
        try:
            for name in dict.fromkeys([*(n for n in artifacts.values()
                                         if n and n != result.artifact), result.artifact]):
                self.storage.publish(row.txid, staging / name, name)
                published.append(name)
        except BaseException:
            self.storage.remove_artifacts(row.txid, published)
            raise
        artifacts["model"] = result.artifact
        report["artifacts"] = artifacts
        return {"state": "done", "message": result.message, "filename": result.artifact,
                "report": report}


def run_worker(settings: Settings, database: Database, storage: FileStore,
               grace_seconds: float) -> int:
    """``edgeai worker``: claim and run jobs until SIGTERM or SIGINT; no HTTP.

    A first signal stops claiming and lets running jobs finish for up to
    ``grace_seconds``, then hands back what is still running (the attempt is not
    counted) and exits 0. A second signal hands back at once. A worker killed
    outright loses its leases, and other workers re-claim its jobs when they expire.
    """
    runner = JobRunner(settings, database, storage, role="worker")
    stopping, hurry = threading.Event(), threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        (hurry if stopping.is_set() else stopping).set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runner.start()
    log.info("worker %s: %d job(s) at a time, database %s, store %s", runner.claimer,
             settings.worker_threads, database.engine.url.render_as_string(hide_password=True),
             storage.describe())
    while not stopping.wait(1.0):  # a bare wait() would not wake for signals
        pass
    log.info("worker %s: stopping; running jobs get %.0f s to finish", runner.claimer,
             grace_seconds)
    runner.drain(grace_seconds, abort=hurry)
    left = runner.running()
    runner.stop()
    log.info("worker %s: stopped%s", runner.claimer,
             f"; handed back {left} job(s)" if left else "")
    return 0
