"""The split deployment, for real: ``edgeai serve --api-only`` and two ``edgeai worker``
processes (each with its own data dir, as on separate hosts) on PostgreSQL and SeaweedFS.

The guide's walk-throughs pass unchanged against it; 20 jobs spread over both workers
survive the API being killed and restarted and a worker being killed mid-job (a new
worker joins once its job is taken over), with every job finished exactly once; a
worker stopped with SIGTERM finishes its job first.
"""
from __future__ import annotations

import re
import signal
import time
from collections import Counter

import pytest
import requests
from sqlalchemy import select

from edgeai.db import Database, Transaction
from tests.e2e.guide import write_guide_pytorch_files
from tests.e2e.test_guide import (  # noqa: F401 - collected here, on this cluster
    test_pytorch_walkthrough,
    test_tensorflow_walkthrough,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def live_server(cluster):
    """What the guide's tests call to get a server: here, the running cluster."""
    return lambda *_args, **_env: cluster


@pytest.fixture
def database(cluster):
    db = Database(cluster.database_url)
    yield db
    db.dispose()


def rows(database, txids):
    with database.session() as session:
        found = session.scalars(select(Transaction).where(Transaction.txid.in_(txids))).all()
        return {row.txid: (row.state, row.claimed_by, row.attempts) for row in found}


def submit(cluster, headers, files):
    with open(files["weights"], "rb") as w, open(files["class_def"], "rb") as c:
        response = requests.post(
            f"{cluster.url}/api/pt_prune?percent=0.5&ommitted=fc2&input_size=1,28,28"
            "&measure=false",
            headers=headers, files={"weights": ("mnist_cnn.pth", w), "class_def": ("model.py", c)},
            timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["txid"]


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def finished_runs(cluster):
    """txid -> how many times a worker wrote its outcome (from the workers' logs)."""
    done = Counter()
    for name in cluster.workers:
        done.update(re.findall(r"job ([0-9a-f-]{36}) (?:done|failed) \(lease",
                               cluster.log_text(name)))
    return done


def test_twenty_jobs_survive_an_api_restart_and_a_killed_worker(cluster, database, tmp_path):
    headers = cluster.create_key("scale")
    files = write_guide_pytorch_files(tmp_path / "user")
    workers = {proc.pid: name for name, proc in cluster.workers.items()}
    ids = {workers[pid]: wid for pid, wid in cluster.worker_ids().items()}
    txids = [submit(cluster, headers, files) for _ in range(20)]

    # Both workers take jobs.
    wait_until(lambda: {c for s, c, _ in rows(database, txids).values() if s == "done"}
               >= set(ids.values()), 300, "a job done by each worker")

    # The API dies with everything in flight; a new one (another "host") takes over.
    cluster.kill_api()
    cluster.start_api()

    # worker-0 dies in the middle of a job: its lease expires, worker-1 finishes it.
    victim = wait_until(lambda: [t for t, (s, c, _) in rows(database, txids).items()
                                 if s == "running" and c == ids["worker-0"]], 300,
                        "worker-0 running a job")[0]
    cluster.stop_worker("worker-0", signal.SIGKILL)
    assert rows(database, [victim])[victim][0] == "running"  # killed mid-job, not after it
    # Its lease expires and worker-1 takes the job over; then a new host joins.
    wait_until(lambda: rows(database, [victim])[victim][1] == ids["worker-1"], 60,
               "worker-1 to re-claim the killed worker's job")
    cluster.start_worker("worker-2")

    finals = {txid: cluster.wait(txid, headers, timeout=300) for txid in txids}
    assert [body["status"] for body in finals.values()] == ["0"] * 20, finals
    state, claimer, attempts = rows(database, [victim])[victim]
    assert (state, claimer) == ("done", ids["worker-1"]) and attempts >= 2
    assert finals[victim]["txid"] == victim
    # A worker logs a job's outcome after writing its row (and removing its inputs from
    # the store): the status can say done a few ms before the line is in the log.
    def logged():
        counted = finished_runs(cluster)
        return counted if all(counted[txid] for txid in txids) else None

    runs = wait_until(logged, 30, "every outcome in the workers' logs")
    assert {txid: runs[txid] for txid in txids} == dict.fromkeys(txids, 1)  # exactly once
    for txid, body in finals.items():
        response = requests.get(f"{cluster.url}/api/download", params={"txid": txid},
                                headers=headers, timeout=60)
        assert response.status_code == 200 and len(response.content) > 1000, txid
        assert body["filename"] in response.headers["Content-Disposition"]


def test_sigterm_lets_a_worker_finish_its_job_then_exit(cluster, database, tmp_path):
    headers = cluster.create_key("graceful")
    names = {cluster.worker_ids()[proc.pid]: name for name, proc in cluster.workers.items()
             if proc.poll() is None}
    txid = submit(cluster, headers, write_guide_pytorch_files(tmp_path / "user"))
    claimer = wait_until(lambda: rows(database, [txid])[txid][0] == "running"
                         and rows(database, [txid])[txid][1], 120, "the job to start")
    name = names[claimer]
    assert cluster.stop_worker(name, signal.SIGTERM, timeout=120) == 0
    assert rows(database, [txid])[txid] == ("done", claimer, 1)
    assert claimer not in cluster.worker_ids().values()  # it said goodbye
    assert "stopping; running jobs get" in cluster.log_text(name)
