"""Session-wide PostgreSQL and SeaweedFS servers, started once, on free ports, in temp dirs.

Each test gets a fresh database (:func:`pg_url`) or a fresh key prefix in one bucket
(:func:`s3_storage`); the cluster tests share one API and two workers
(:func:`cluster`), each process with its own data dir.
"""
from __future__ import annotations

import uuid

import pytest

from tests.scaleout.servers import Cluster, PostgresServer, SeaweedServer, missing

BUCKET = "edgeai-tests"


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the whole session."""
    if "postgresql" in missing():
        pytest.skip(missing()["postgresql"])
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seaweed():
    """A SeaweedFS S3 store for the whole session, with the tests' bucket."""
    if "seaweedfs" in missing():
        pytest.skip(missing()["seaweedfs"])
    server = SeaweedServer().start()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres):
    """The URL of a new, empty PostgreSQL database."""
    return postgres.create_database("t" + uuid.uuid4().hex[:12])


@pytest.fixture
def s3_storage(seaweed, tmp_path):
    """An S3Storage on a fresh prefix of the tests' bucket, small parts to see multipart."""
    from edgeai.storage import LocalStorage
    from edgeai.storage.s3 import S3Storage

    return S3Storage(BUCKET, f"t-{uuid.uuid4().hex[:8]}", LocalStorage(tmp_path / "var"),
                     seaweed.client(), part_mb=5, concurrency=2)


@pytest.fixture(scope="session")
def cluster(postgres, seaweed, tmp_path_factory):
    """One API and two workers (``worker-0``, ``worker-1``) on PostgreSQL and S3, with short
    leases: 0.5 s heartbeats, 3 s to go stale. Workers keep no warm spares: on two cores
    a spare only moves a job's framework start-up off its critical path, and the ones
    still waiting at the end are start-ups paid for nothing."""
    url = postgres.create_database("cluster")
    server = Cluster(tmp_path_factory.mktemp("cluster"), url, f"s3://{BUCKET}/cluster",
                     seaweed.env, EDGEAI_STALE_SECONDS="3", EDGEAI_HEARTBEAT_SECONDS="0.5",
                     EDGEAI_POLL_SECONDS="0.1", EDGEAI_MAX_JOBS_PER_CLIENT="100",
                     EDGEAI_WORKER_GRACE_SECONDS="30", EDGEAI_WARM_SPARES="off")
    for name in ("worker-0", "worker-1"):
        server.start_worker(name)
    try:
        server.start_api()
        server.wait_for_workers()
        yield server
    finally:
        server.stop()
