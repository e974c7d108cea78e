"""The durable job queue: the ``transactions`` table is the queue.

Every operation on it is here: :func:`submit` (store the uploads, insert a
queued row, under the client's quota), :func:`claim_next_job`, :func:`heartbeat`,
:func:`finish_job`, :func:`release`, :func:`recover_stale_jobs` (rows whose
worker died are re-queued, at most ``EDGEAI_MAX_ATTEMPTS`` times in all, then
failed with a reason), :func:`expire_artifacts`, :func:`record_progress`, the
client's :func:`cancel_job` (with :func:`cancels_requested`, which the holder of a
running job's lease polls), and the ``workers`` registry. The runner
(:mod:`edgeai.runner`) drives them; the API only submits and cancels.

The same statements run on SQLite and PostgreSQL. A claim takes the oldest
queued row with ``SELECT ... FOR UPDATE SKIP LOCKED`` (on SQLite, under ``BEGIN
IMMEDIATE``, which needs no skipping): claimers on many hosts never wait for one
another and never take the same row. A claim is a **lease**: it writes a fresh
``lease_token`` and a heartbeat time from the database's clock; the holder
renews it with every heartbeat, and a lease not renewed for
``EDGEAI_STALE_SECONDS`` expires, and the row is queued again for anyone. Only
the holder of the current lease can write the outcome (``finish_job`` matches
the token), so a job is finished exactly once even when a worker that lost its
lease comes back and completes its run.
"""
from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, cast

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import CursorResult

from edgeai.config import Settings
from edgeai.db import Database, Transaction, Worker, db_now
from edgeai.errors import TooManyJobs
from edgeai.pruning import PruneJob
from edgeai.storage import FileStore, artifact_stem

# The message of a job the client cancelled (queued or running); clients may match it.
CANCELLED = "cancelled by the client"


def submit(database: Database, storage: FileStore, settings: Settings, owner: str,
           framework: str, params: dict[str, Any], uploads: Mapping[str, IO[bytes]],
           input_names: dict[str, str]) -> str:
    """Store ``uploads`` (role -> stream) and queue a transaction for ``owner``.

    Returns its txid. Raises :class:`TooManyJobs` when the client already has
    ``EDGEAI_MAX_JOBS_PER_CLIENT`` jobs queued or running; nothing stays on disk then.
    """
    txid = str(uuid.uuid4())
    try:
        for role, stream in uploads.items():
            storage.store_upload(txid, role, stream)
        with database.immediate() as session:
            database.lock(session, f"owner:{owner}")  # two submits must not both pass
            active = session.scalar(select(func.count()).select_from(Transaction).where(
                Transaction.owner == owner, Transaction.state.in_(("queued", "running")))) or 0
            if active >= settings.max_jobs_per_client:
                raise TooManyJobs(
                    f"You already have {active} jobs queued or running; the limit is "
                    f"{settings.max_jobs_per_client} (EDGEAI_MAX_JOBS_PER_CLIENT). Retry when "
                    "one has finished.", headers={"Retry-After": "30"})
            session.add(Transaction(
                txid=txid, owner=owner, framework=framework, params=params,
                input_names=input_names, state="queued", message="Queued.", attempts=0,
                created_at=time.time(), phase="queued"))
    except BaseException:
        storage.remove_transaction(txid)
        raise
    return txid


def worker_id() -> str:
    """Identify this process in ``claimed_by``: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def claim_next_job(database: Database, claimer: str, max_running: int) -> Transaction | None:
    """Lease the oldest queued row to ``claimer``: state running, a new ``lease_token``.

    ``max_running`` caps the rows running service-wide (0: no cap; each process then
    runs at most its own threads). Returns the claimed row (detached; its
    ``lease_token`` names the lease), or None when nothing is queued or the cap is
    reached.
    """
    with database.session() as session:
        # A plain read first: polling workers take a write lock (SQLite) or open a
        # locking transaction (PostgreSQL) only when there is something to claim.
        if session.scalar(select(Transaction.txid).where(Transaction.state == "queued")
                          .limit(1)) is None:
            return None
    with database.immediate() as session:
        if max_running > 0:
            # Count, then claim, as one step for every claimer on every host.
            database.lock(session, "claim")
            running = session.scalar(
                select(func.count()).select_from(Transaction).where(
                    Transaction.state == "running")) or 0
            if running >= max_running:
                return None
        row = session.scalars(
            select(Transaction).where(Transaction.state == "queued")
            .order_by(Transaction.created_at).limit(1)
            .with_for_update(skip_locked=True)).first()
        if row is None:
            return None
        row.state = "running"
        row.claimed_by = claimer
        row.lease_token = uuid.uuid4().hex
        row.started_at = db_now()
        row.heartbeat_at = db_now()
        row.attempts += 1
        row.message = "Pruning in progress."
        row.phase, row.progress = "loading", 0.0
        session.flush()
        session.refresh(row)
        session.expunge(row)
        return row


def finish_job(database: Database, txid: str, claimer: str, lease: str | None = None,
               **values: Any) -> bool:
    """Write a terminal state, only if this claimer still holds the row (and, given
    ``lease``, this very lease).

    Returns False when the lease expired meanwhile (the row was re-queued, maybe
    claimed and finished by another worker): that worker owns the outcome and this
    one's result is discarded. A job done gets phase "done"; a failed one keeps the
    phase it failed in.
    """
    if values.get("state") == "done":
        values.setdefault("phase", "done")
        values.setdefault("progress", 1.0)
    values.setdefault("finished_at", db_now())
    values.setdefault("lease_token", None)
    conditions = [Transaction.txid == txid, Transaction.claimed_by == claimer,
                  Transaction.state == "running"]
    if lease is not None:
        conditions.append(Transaction.lease_token == lease)
    with database.immediate() as session:
        result = cast(CursorResult, session.execute(
            update(Transaction).where(*conditions).values(**values)))
        return result.rowcount == 1


def recover_stale_jobs(database: Database, stale_seconds: float, max_attempts: int) -> int:
    """Re-queue (or, past ``max_attempts``, fail) running rows whose lease expired: no
    heartbeat for ``stale_seconds`` on the database's clock; one the client asked to
    cancel is failed as cancelled. Also forgets workers silent for as long.

    Returns how many job rows it changed.
    """
    cutoff = db_now() - stale_seconds
    with database.immediate() as session:
        rows = session.execute(
            select(Transaction.txid, Transaction.attempts, Transaction.cancel_requested_at)
            .where(Transaction.state == "running", Transaction.heartbeat_at < cutoff)
            .with_for_update(skip_locked=True)).all()
        cancelled = [txid for txid, _, cancel in rows if cancel is not None]
        spent = [txid for txid, attempts, cancel in rows
                 if cancel is None and attempts >= max_attempts]
        retry = [txid for txid, attempts, cancel in rows
                 if cancel is None and attempts < max_attempts]
        if cancelled:
            session.execute(update(Transaction).where(Transaction.txid.in_(cancelled))
                            .values(**_cancelled_values()))
        if spent:
            session.execute(update(Transaction).where(Transaction.txid.in_(spent)).values(
                state="failed", claimed_by=None, lease_token=None, finished_at=db_now(),
                message=(f"The server stopped while pruning this model, {max_attempts} "
                         "times; giving up. Submit it again, or with a smaller model.")))
        if retry:
            session.execute(update(Transaction).where(Transaction.txid.in_(retry)).values(
                state="queued", claimed_by=None, lease_token=None, phase="queued",
                progress=None, message="Re-queued after the server stopped while pruning it."))
        session.execute(delete(Worker).where(Worker.heartbeat_at < cutoff))
    return len(rows)


def expire_artifacts(database: Database, storage: FileStore, retention_hours: float) -> int:
    """Delete artifacts of jobs done more than ``retention_hours`` ago and mark them expired.

    Returns how many transactions expired. (Inputs are deleted as soon as a job
    ends, so only done rows still hold files.)
    """
    if retention_hours <= 0:
        return 0
    cutoff = db_now() - retention_hours * 3600
    with database.immediate() as session:
        expired = list(session.scalars(
            select(Transaction.txid)
            .where(Transaction.state == "done", Transaction.finished_at < cutoff)
            .with_for_update(skip_locked=True)))
        if expired:
            session.execute(update(Transaction).where(Transaction.txid.in_(expired)).values(
                state="expired",
                message=(f"The pruned model was deleted {retention_hours:g} hours after it "
                         "was made (EDGEAI_RETENTION_HOURS). Submit the model again.")))
    for txid in expired:
        storage.remove_results(txid)
    return len(expired)


def heartbeat(database: Database, leases: list[str]) -> set[str]:
    """Renew the leases a process holds; return those still held. A lease missing
    from the answer expired (its row was re-queued or finished elsewhere): the job
    running under it should stop, since its result would be discarded."""
    if not leases:
        return set()
    with database.session() as session:
        renewed = session.scalars(
            update(Transaction)
            .where(Transaction.lease_token.in_(leases), Transaction.state == "running")
            .values(heartbeat_at=db_now())
            .returning(Transaction.lease_token))
        return {lease for lease in renewed if lease}


def release(database: Database, leases: list[str]) -> None:
    """Hand rows back to the queue under the leases given, giving the attempt back: a
    shutdown is not the job's fault, and a live worker takes it at once. A row the
    client asked to cancel is failed as cancelled instead."""
    if not leases:
        return
    held = (Transaction.lease_token.in_(leases), Transaction.state == "running")
    with database.immediate() as session:
        session.execute(update(Transaction).where(
            *held, Transaction.cancel_requested_at.is_not(None)).values(**_cancelled_values()))
        session.execute(update(Transaction).where(*held).values(
            state="queued", claimed_by=None, lease_token=None, phase="queued", progress=None,
            attempts=Transaction.attempts - 1,
            message="Re-queued: the server worker running it shut down."))


def record_progress(database: Database, lease: str, phase: str,
                    progress: float | None) -> None:
    """Write the phase and fraction a running job reported, under its lease (a lost
    lease writes nothing)."""
    with database.session() as session:
        session.execute(update(Transaction).where(
            Transaction.lease_token == lease, Transaction.state == "running").values(
            phase=phase, progress=progress))


def cancels_requested(database: Database, leases: list[str]) -> set[str]:
    """Of the leases given, those whose running row the client asked to cancel."""
    if not leases:
        return set()
    with database.session() as session:
        return {lease for lease in session.scalars(select(Transaction.lease_token).where(
            Transaction.lease_token.in_(leases), Transaction.state == "running",
            Transaction.cancel_requested_at.is_not(None))) if lease}


def cancel_job(database: Database, storage: FileStore, txid: str) -> tuple[Transaction, bool]:
    """Cancel transaction ``txid`` as its client asked, in one write transaction.

    A queued row is failed at once with :data:`CANCELLED` (its uploads are deleted);
    a running one is marked (``cancel_requested_at``) for the worker holding its
    lease, which kills its child and fails it with :data:`CANCELLED` within a
    heartbeat or two (asking again changes nothing). A finished row is left as it is.
    Returns the row as it is now (detached) and whether it was queued or running.
    Raises LookupError when no such row exists.
    """
    with database.immediate() as session:
        row = session.scalars(select(Transaction).where(Transaction.txid == txid)
                              .with_for_update()).first()
        if row is None:
            raise LookupError(txid)
        was_queued = row.state == "queued"
        if was_queued:
            for key, value in _cancelled_values().items():
                setattr(row, key, value)
        elif row.state == "running" and row.cancel_requested_at is None:
            row.cancel_requested_at = db_now()
        session.flush()
        session.refresh(row)
        session.expunge(row)
    if was_queued:
        storage.remove_inputs(txid)
    return row, was_queued or row.state == "running"


def _cancelled_values() -> dict[str, Any]:
    """The columns of a row failed because its client cancelled it."""
    return {"state": "failed", "message": CANCELLED, "claimed_by": None, "lease_token": None,
            "finished_at": db_now()}


def register_worker(database: Database, worker: str, role: str, concurrency: int) -> None:
    """Record a claiming process in ``workers`` (see :class:`edgeai.db.Worker`)."""
    host, pid, _ = worker.split(":", 2)
    # A write transaction from its BEGIN: on SQLite, a read that later wants to write
    # fails at once ("database is locked") when another process wrote meanwhile.
    with database.immediate() as session:
        session.merge(Worker(worker_id=worker, host=host, pid=int(pid), role=role,
                             concurrency=concurrency, started_at=db_now(),
                             heartbeat_at=db_now()))


def touch_worker(database: Database, worker: str) -> bool:
    """Renew a worker's own heartbeat; False if it is not registered (any more)."""
    with database.immediate() as session:
        result = cast(CursorResult, session.execute(
            update(Worker).where(Worker.worker_id == worker).values(heartbeat_at=db_now())))
        return result.rowcount == 1


def deregister_worker(database: Database, worker: str) -> None:
    """Remove a worker that stops."""
    with database.immediate() as session:
        session.execute(delete(Worker).where(Worker.worker_id == worker))


def live_workers(database: Database) -> list[dict[str, Any]]:
    """The registered workers, with the seconds since each one's last heartbeat."""
    with database.session() as session:
        rows = session.execute(select(Worker, db_now()).order_by(Worker.started_at)).all()
        return [{"worker": w.worker_id, "host": w.host, "pid": w.pid, "role": w.role,
                 "concurrency": w.concurrency, "started_at": w.started_at,
                 "seconds_since_heartbeat": round(now - w.heartbeat_at, 3)}
                for w, now in rows]


def build_job(row: Transaction, inputs: Mapping[str, Path]) -> PruneJob:
    """Turn a claimed row into the engine's :class:`PruneJob`: ``inputs`` are its
    uploads as local files, by role (the sandbox links them into the child's slot and
    sets ``output_dir``), then its parameters and a fresh artifact name."""
    params = dict(row.params or {})
    percent = params.pop("percent", None)
    percent = float(percent) if percent is not None else 0.0  # a cost target decides it
    omitted = tuple(params.pop("omitted", None) or ())
    return PruneJob(framework=row.framework, percent=percent, omitted=omitted,
                    inputs={role: str(path) for role, path in inputs.items()},
                    input_names=dict(row.input_names or {}), output_dir="",
                    output_stem=artifact_stem(), options=params)
