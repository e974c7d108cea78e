"""Shared fixtures: a temporary data dir (real SQLite file, real folders) per test,
an app factory, a client, API keys, and a migrated queue database."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from edgeai import create_app
from edgeai.auth import create_key
from edgeai.db import Database, upgrade_database

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One compute thread per framework, as the sandbox gives each job: on this 2-core
# machine, tests training or running models in-process beside a server's jobs
# otherwise oversubscribe the cores (a small torch CNN: 95 s instead of 3 s).
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
              "TF_NUM_INTEROP_THREADS"):
    os.environ.setdefault(_name, "1")


def reachable_tmp(tmp_path):
    """``tmp_path`` made traversable for the sandbox user (pytest makes its base 0700):
    for canary folders that code *could* write if it ever ran unconfined. Data dirs need
    no such thing: the sandbox never lets a job walk the host's folders."""
    for folder in [*tmp_path.parents][:3]:
        if str(folder).startswith(tempfile.gettempdir()) and folder != Path(tempfile.gettempdir()):
            folder.chmod(folder.stat().st_mode | 0o111)
    tmp_path.chmod(tmp_path.stat().st_mode | 0o111)
    return tmp_path


@pytest.fixture
def data_dir(tmp_path):
    """A fresh EDGEAI_DATA_DIR."""
    path = tmp_path / "var"
    path.mkdir()
    return path


@pytest.fixture
def make_app(data_dir):
    """Build apps on ``data_dir``; job runners started are stopped at teardown."""
    apps = []

    def factory(**overrides):
        settings = {"data_dir": data_dir, "run_jobs": False, "poll_seconds": 0.05}
        settings.update(overrides)
        app = create_app(settings)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        runner = app.extensions.get("edgeai.runner")
        if runner is not None:
            runner.stop()
        app.extensions["edgeai.db"].dispose()


@pytest.fixture
def app(make_app):
    """An app with auth on and no job runner (rows stay queued)."""
    return make_app()


@pytest.fixture
def client(app):
    """Flask test client for ``app``."""
    return app.test_client()


@pytest.fixture
def new_key(app):
    """Create API keys on ``app``'s database; returns headers for the new client."""

    def factory(name="tester"):
        key = create_key(app.extensions["edgeai.db"], name)
        return {"X-IBM-Client-Id": key.client_id, "X-IBM-Client-Secret": key.client_secret}

    return factory


@pytest.fixture
def headers(new_key):
    """Headers of one valid client."""
    return new_key()


def wait_for_status(client, txid, headers, timeout=300.0, done=("0", "-1")):
    """Poll status until it is one of ``done``; return the last body."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/api/status?txid={txid}", headers=headers).get_json()
        if body["status"] in done or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


@pytest.fixture
def database(tmp_path):
    """A real SQLite queue database, migrated as the service migrates it."""
    url = f"sqlite:///{tmp_path}/queue.sqlite3"
    upgrade_database(url, tmp_path)
    db = Database(url)
    yield db
    db.dispose()
