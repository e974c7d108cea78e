"""Phase, progress and cancel on the queue's rows (real SQLite, migrated as in service).

A queued job cancelled fails at once; a running one is only marked, for the worker
holding its lease; a finished one is left alone. Progress is written under the
lease only, and the queue's own transitions set the phase ("queued", "loading",
"done"; a failed job keeps where it stopped).
"""
from __future__ import annotations

import io
import time
import uuid

import pytest
from sqlalchemy import text

from edgeai.db import Transaction
from edgeai.queue import (
    CANCELLED,
    cancel_job,
    cancels_requested,
    claim_next_job,
    finish_job,
    record_progress,
    recover_stale_jobs,
    release,
)
from edgeai.storage import LocalStorage


@pytest.fixture
def storage(tmp_path):
    return LocalStorage(tmp_path / "files")


def queue_one(database, storage=None) -> str:
    txid = str(uuid.uuid4())
    if storage is not None:
        storage.store_upload(txid, "model", io.BytesIO(b"weights"))
    with database.session() as session:
        session.add(Transaction(txid=txid, owner="c", framework="tensorflow", params={},
                                input_names={}, state="queued", message="Queued.",
                                attempts=0, created_at=time.time(), phase="queued"))
    return txid


def row(database, txid) -> Transaction:
    with database.session() as session:
        found = session.get(Transaction, txid)
        session.expunge(found)
        return found


def test_a_queued_job_is_failed_at_once_and_its_uploads_go(database, storage):
    txid = queue_one(database, storage)
    assert storage.input_path(txid, "model").exists()
    cancelled, acted = cancel_job(database, storage, txid)
    assert acted and cancelled.state == "failed" and cancelled.message == CANCELLED
    assert cancelled.finished_at is not None and cancelled.phase == "queued"
    assert claim_next_job(database, "w1", 0) is None
    assert not storage.input_path(txid, "model").exists()
    again, acted = cancel_job(database, storage, txid)
    assert not acted and again.message == CANCELLED


def test_a_running_job_is_marked_for_its_worker(database, storage):
    txid = queue_one(database)
    claimed = claim_next_job(database, "w1", 0)
    assert (claimed.phase, claimed.progress) == ("loading", 0.0)
    assert cancels_requested(database, [claimed.lease_token]) == set()
    marked, acted = cancel_job(database, storage, txid)
    assert acted and marked.state == "running" and marked.cancel_requested_at is not None
    assert cancel_job(database, storage, txid)[0].cancel_requested_at == \
        marked.cancel_requested_at  # asking twice changes nothing
    assert cancels_requested(database, [claimed.lease_token, "f" * 32]) == {
        claimed.lease_token}
    assert finish_job(database, txid, "w1", lease=claimed.lease_token, state="failed",
                      message=CANCELLED)
    assert cancels_requested(database, [claimed.lease_token]) == set()


def test_a_finished_job_is_left_alone(database, storage):
    txid = queue_one(database)
    claimed = claim_next_job(database, "w1", 0)
    assert finish_job(database, txid, "w1", lease=claimed.lease_token, state="done",
                      message="ok", filename="tmpx.h5")
    done, acted = cancel_job(database, storage, txid)
    assert not acted and done.state == "done"
    assert (done.phase, done.progress) == ("done", 1.0)


def test_a_cancel_request_survives_a_handback_and_a_dead_worker(database, storage):
    """A job handed back at shutdown, or whose worker died, is not re-queued once its
    client asked to cancel it: it fails as cancelled."""
    first, second = queue_one(database), queue_one(database)
    for txid in (first, second):
        lease = claim_next_job(database, "w1", 0).lease_token
        cancel_job(database, storage, txid)
        if txid == first:
            release(database, [lease])
    with database.session() as session:  # the second one's worker went silent
        session.execute(text("UPDATE transactions SET heartbeat_at = 0"))
    assert recover_stale_jobs(database, stale_seconds=30, max_attempts=3) == 1
    for txid in (first, second):
        assert (row(database, txid).state, row(database, txid).message) == ("failed", CANCELLED)


def test_progress_is_written_under_the_lease_only(database):
    txid = queue_one(database)
    claimed = claim_next_job(database, "w1", 0)
    record_progress(database, claimed.lease_token, "pruning", 0.5)
    assert (row(database, txid).phase, row(database, txid).progress) == ("pruning", 0.5)
    record_progress(database, "f" * 32, "saving", 0.9)  # a lost lease writes nothing
    assert row(database, txid).phase == "pruning"
    release(database, [claimed.lease_token])
    assert (row(database, txid).phase, row(database, txid).progress) == ("queued", None)
    claimed = claim_next_job(database, "w1", 0)
    record_progress(database, claimed.lease_token, "exporting", 0.8)
    assert finish_job(database, txid, "w1", lease=claimed.lease_token, state="failed",
                      message="export broke")
    assert (row(database, txid).phase, row(database, txid).progress) == ("exporting", 0.8)


def test_the_runner_writes_progress_at_most_once_a_second(database, monkeypatch):
    """The sandbox calls the writer several times a second; a change is written at once
    after a quiet spell, then not again until the interval passed, and then the latest."""
    from edgeai import runner

    monkeypatch.setattr(runner, "PROGRESS_WRITE_SECONDS", 0.3)
    txid = queue_one(database)
    writer = runner._ProgressWriter(database, claim_next_job(database, "w1", 0).lease_token)
    writer("analysing", 0.1)
    writer("pruning", 0.2)
    writer("verifying", 0.3)
    assert (row(database, txid).phase, row(database, txid).progress) == ("analysing", 0.1)
    time.sleep(0.35)
    writer("verifying", 0.3)
    assert (row(database, txid).phase, row(database, txid).progress) == ("verifying", 0.3)
