"""The queue on the database: atomic claims under a service-wide cap, stale recovery."""
from __future__ import annotations

import multiprocessing
import time
import uuid

from sqlalchemy import select

from edgeai.db import Database, Transaction
from edgeai.queue import claim_next_job, finish_job, recover_stale_jobs


def queue(database, n, owner="c"):
    txids = []
    with database.session() as session:
        for i in range(n):
            txid = str(uuid.uuid4())
            txids.append(txid)
            session.add(Transaction(txid=txid, owner=owner, framework="tensorflow",
                                    params={"percent": 0.4}, input_names={}, state="queued",
                                    message="Queued.", attempts=0, created_at=time.time() + i))
    return txids


def test_claims_oldest_first_and_respects_cap(database):
    txids = queue(database, 3)
    first = claim_next_job(database, "w1", max_running=2)
    second = claim_next_job(database, "w2", max_running=2)
    assert [first.txid, second.txid] == txids[:2]
    assert first.state == "running" and first.attempts == 1
    assert claim_next_job(database, "w3", max_running=2) is None
    assert finish_job(database, first.txid, "w1", state="done", message="ok")
    assert claim_next_job(database, "w3", max_running=2).txid == txids[2]


def test_finish_only_by_current_claimer(database):
    queue(database, 1)
    row = claim_next_job(database, "w1", 5)
    assert not finish_job(database, row.txid, "someone-else", state="done", message="x")
    assert finish_job(database, row.txid, "w1", state="failed", message="why")


def _claim_many(url, name, max_running, results):
    database = Database(url)
    claimed = []
    for _ in range(40):
        row = claim_next_job(database, name, max_running)
        if row is not None:
            claimed.append(row.txid)
    database.dispose()
    results.put((name, claimed))


def test_concurrent_claims_from_processes_never_exceed_cap(database, tmp_path):
    queue(database, 30)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_claim_many, args=(database.url, f"p{i}", 3, results))
             for i in range(4)]
    for proc in procs:
        proc.start()
    claimed = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(60)
    all_claims = [txid for _, txids in claimed for txid in txids]
    assert len(all_claims) == 3  # the cap, service-wide
    assert len(set(all_claims)) == len(all_claims)  # never the same row twice
    with database.session() as session:
        running = session.scalars(select(Transaction).where(Transaction.state == "running")).all()
        assert len(running) == 3


def test_stale_rows_are_requeued_then_failed_after_max_attempts(database):
    [txid] = queue(database, 1)
    for attempt in range(1, 4):
        row = claim_next_job(database, f"w{attempt}", 5)
        assert row.txid == txid and row.attempts == attempt
        with database.session() as session:
            session.get(Transaction, txid).heartbeat_at = time.time() - 100
        assert recover_stale_jobs(database, stale_seconds=10, max_attempts=3) == 1
    with database.session() as session:
        row = session.get(Transaction, txid)
        assert row.state == "failed"
        assert "3 times" in row.message
        assert claim_next_job(database, "w9", 5) is None


def test_fresh_heartbeat_is_left_alone(database):
    queue(database, 1)
    claim_next_job(database, "w1", 5)
    assert recover_stale_jobs(database, stale_seconds=10, max_attempts=3) == 0
