"""The queue on both engines: leases with tokens, expiry and re-claim, exactly-once finish;
on PostgreSQL, claims that skip locked rows and a cap that holds across processes."""
from __future__ import annotations

import multiprocessing
import threading
import time
import uuid

import pytest
from sqlalchemy import select, text

from edgeai.db import Database, Transaction, db_now, upgrade_database
from edgeai.queue import (
    claim_next_job,
    deregister_worker,
    finish_job,
    heartbeat,
    live_workers,
    recover_stale_jobs,
    register_worker,
    release,
    touch_worker,
)
from tests.test_jobs import queue


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path):
    """A migrated database of each engine."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/queue.sqlite3"
    else:
        url = request.getfixturevalue("pg_url")
    upgrade_database(url, tmp_path)
    db = Database(url)
    yield db
    db.dispose()


@pytest.fixture
def pg_database(pg_url, tmp_path):
    upgrade_database(pg_url, tmp_path)
    db = Database(pg_url)
    yield db
    db.dispose()


def row(database, txid):
    with database.session() as session:
        found = session.get(Transaction, txid)
        session.expunge(found)
        return found


def age_lease(database, txid, seconds=100):
    with database.session() as session:
        session.get(Transaction, txid).heartbeat_at = time.time() - seconds


def test_migrations_are_at_head_and_idempotent(database, tmp_path):
    upgrade_database(database.url, tmp_path)  # again: nothing to do
    with database.session() as session:
        assert session.scalar(text("SELECT version_num FROM alembic_version")) == "0003"
        assert session.scalar(select(db_now())) == pytest.approx(time.time(), abs=5)


def test_a_claim_is_a_lease_finished_exactly_once(database):
    [txid] = queue(database, 1)
    claimed = claim_next_job(database, "w1", max_running=0)
    assert claimed.state == "running" and len(claimed.lease_token) == 32
    assert claimed.heartbeat_at == pytest.approx(time.time(), abs=5)
    assert heartbeat(database, [claimed.lease_token, "f" * 32]) == {claimed.lease_token}
    assert not finish_job(database, txid, "w1", lease="0" * 32, state="done", message="x")
    assert finish_job(database, txid, "w1", lease=claimed.lease_token, state="done",
                      message="ok")
    assert not finish_job(database, txid, "w1", lease=claimed.lease_token, state="failed",
                          message="second write")
    final = row(database, txid)
    assert (final.state, final.message, final.lease_token) == ("done", "ok", None)
    assert heartbeat(database, [claimed.lease_token]) == set()


def test_expired_lease_is_reclaimed_and_the_old_holder_writes_nothing(database):
    [txid] = queue(database, 1)
    first = claim_next_job(database, "w1", max_running=0)
    age_lease(database, txid)
    assert recover_stale_jobs(database, stale_seconds=10, max_attempts=3) == 1
    # The same process may claim it again: only the token tells the two runs apart.
    second = claim_next_job(database, "w1", max_running=0)
    assert second.txid == txid and second.attempts == 2
    assert second.lease_token != first.lease_token
    assert heartbeat(database, [first.lease_token, second.lease_token]) == {second.lease_token}
    assert not finish_job(database, txid, "w1", lease=first.lease_token, state="done",
                          message="stale run")
    assert finish_job(database, txid, "w1", lease=second.lease_token, state="done",
                      message="current run")
    assert row(database, txid).message == "current run"


def test_release_hands_back_without_spending_an_attempt(database):
    [txid] = queue(database, 1)
    claimed = claim_next_job(database, "w1", max_running=0)
    release(database, ["0" * 32])  # someone else's lease: nothing happens
    assert row(database, txid).state == "running"
    release(database, [claimed.lease_token])
    back = row(database, txid)
    assert (back.state, back.attempts, back.lease_token) == ("queued", 0, None)


def test_workers_register_heartbeat_and_are_forgotten_when_silent(database):
    register_worker(database, "host-a:11:abc", "worker", 2)
    register_worker(database, "host-b:12:def", "serve", 1)
    assert touch_worker(database, "host-a:11:abc")
    assert not touch_worker(database, "host-c:13:ghi")
    seen = {w["worker"]: w for w in live_workers(database)}
    assert seen["host-a:11:abc"]["concurrency"] == 2 and seen["host-b:12:def"]["role"] == "serve"
    assert seen["host-a:11:abc"]["seconds_since_heartbeat"] < 5
    deregister_worker(database, "host-b:12:def")
    from edgeai.db import Worker
    with database.session() as session:
        session.get(Worker, "host-a:11:abc").heartbeat_at = time.time() - 100
    recover_stale_jobs(database, stale_seconds=10, max_attempts=3)
    assert live_workers(database) == []


def test_claims_skip_rows_another_transaction_holds(pg_database):
    """FOR UPDATE SKIP LOCKED: a claimer never waits for a row someone else is claiming."""
    first, second = queue(pg_database, 2)
    with pg_database.engine.connect() as holder:
        holder.execute(text("SELECT txid FROM transactions WHERE txid = :t FOR UPDATE"),
                       {"t": first})
        started = time.monotonic()
        claimed = claim_next_job(pg_database, "w2", max_running=0)
        assert time.monotonic() - started < 2
        assert claimed.txid == second
        holder.rollback()
    assert claim_next_job(pg_database, "w3", max_running=0).txid == first


def test_cap_holds_across_concurrent_claimers(pg_database):
    queue(pg_database, 20)
    claimed, barrier = [], threading.Barrier(6)

    def claimer(name):
        database = Database(pg_database.url)
        barrier.wait()
        for _ in range(5):
            found = claim_next_job(database, name, max_running=3)
            if found is not None:
                claimed.append(found.txid)
        database.dispose()

    threads = [threading.Thread(target=claimer, args=(f"t{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(claimed) == 3 and len(set(claimed)) == 3


def _claim_all(url, name, results):
    database = Database(url)
    claimed = []
    while (found := claim_next_job(database, name, max_running=0)) is not None:
        claimed.append(found.txid)
    database.dispose()
    results.put((name, claimed))


def test_processes_without_a_cap_claim_every_row_exactly_once(pg_database):
    txids = queue(pg_database, 40)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(pg_database.url, f"p{i}", results))
             for i in range(3)]
    for proc in procs:
        proc.start()
    claims = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(60)
    every = [txid for batch in claims.values() for txid in batch]
    assert sorted(every) == sorted(txids)  # all of them, none twice
    with pg_database.session() as session:
        owners = dict(session.execute(select(Transaction.txid, Transaction.claimed_by)).all())
    assert all(owners[t] == name for name, batch in claims.items() for t in batch)


def test_concurrent_migrations_on_postgresql_take_turns(pg_url, tmp_path):
    errors = []

    def migrate():
        try:
            upgrade_database(pg_url, tmp_path / uuid.uuid4().hex)
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    database = Database(pg_url)
    with database.session() as session:
        assert session.scalar(text("SELECT version_num FROM alembic_version")) == "0003"
    database.dispose()
