"""The durable job queue: the ``transactions`` table is the queue.

Every operation on it is here: :func:`submit` (store the uploads, insert a
queued row, under the client's quota), :func:`claim_next_job` (atomically, under
``BEGIN IMMEDIATE``: count running rows, take the oldest queued one, so the
service-wide cap ``EDGEAI_MAX_RUNNING_JOBS`` holds across all gunicorn workers),
:func:`heartbeat`, :func:`finish_job`, :func:`release`, :func:`recover_stale_jobs`
(rows whose worker died are re-queued, at most ``EDGEAI_MAX_ATTEMPTS`` times in
all, then failed with a reason) and :func:`expire_artifacts`. The runner
(:mod:`edgeai.runner`) drives them; the API only submits.
"""
from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Mapping
from typing import IO, Any, cast

from sqlalchemy import func, select, update
from sqlalchemy.engine import CursorResult

from edgeai.config import Settings
from edgeai.db import Database, Transaction
from edgeai.errors import TooManyJobs
from edgeai.pruning import PruneJob, spec_for
from edgeai.storage import Storage, artifact_stem


def submit(database: Database, storage: Storage, settings: Settings, owner: str,
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
                created_at=time.time()))
    except BaseException:
        storage.remove_transaction(txid)
        raise
    return txid


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
            select(func.count()).select_from(Transaction).where(
                Transaction.state == "running")) or 0
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
        result = cast(CursorResult, session.execute(
            update(Transaction)
            .where(Transaction.txid == txid, Transaction.claimed_by == claimer,
                   Transaction.state == "running")
            .values(**values)))
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


def heartbeat(database: Database, txids: list[str], claimer: str) -> None:
    """Touch the rows ``claimer`` holds, so that nobody takes them for stale."""
    if not txids:
        return
    with database.session() as session:
        session.execute(update(Transaction).where(
            Transaction.txid.in_(txids), Transaction.claimed_by == claimer,
            Transaction.state == "running").values(heartbeat_at=time.time()))


def release(database: Database, txids: list[str], claimer: str) -> None:
    """Hand rows ``claimer`` holds back to the queue, giving the attempt back: a
    shutdown is not the job's fault, and a live worker takes it at once."""
    if not txids:
        return
    with database.immediate() as session:
        session.execute(update(Transaction).where(
            Transaction.txid.in_(txids), Transaction.claimed_by == claimer,
            Transaction.state == "running").values(
            state="queued", claimed_by=None, attempts=Transaction.attempts - 1,
            message="Re-queued: the server worker running it shut down."))


def build_job(row: Transaction, storage: Storage) -> PruneJob:
    """Turn a claimed row into the engine's :class:`PruneJob`: its stored uploads for
    the roles its engine declares (the sandbox links them into the child's slot and
    sets ``output_dir``), its parameters, a fresh artifact name."""
    inputs = {}
    for role in spec_for(row.framework).files:
        source = storage.input_path(row.txid, role.name)
        if source.exists():
            inputs[role.name] = str(source)
    params = dict(row.params or {})
    percent = float(params.pop("percent"))
    omitted = tuple(params.pop("omitted", None) or ())
    return PruneJob(framework=row.framework, percent=percent, omitted=omitted, inputs=inputs,
                    input_names=dict(row.input_names or {}), output_dir="",
                    output_stem=artifact_stem(), options=params)
