"""The hostile child on PostgreSQL (slow: a PostgreSQL cluster of its own).

What a job says must not make the server's final write fail: PostgreSQL refuses
``NaN`` in JSON and NUL in text where SQLite takes both. A job that hands back a
report (or message) holding them ends failed with a clear reason after its one
attempt — not re-run until its attempts are spent — and what it had published is
removed; the queue goes on (a guide job after it is done).
"""
from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest
import requests

from tests.e2e.guide import write_guide_pytorch_files
from tests.e2e.hostile_child import PT_QUERY, assert_no_control, class_file, create_keys, submit
from tests.e2e.server import LiveServer
from tests.scaleout.servers import PostgresServer, missing

pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox's per-job uids, "
                                 "disks and views need the server to run as root here")]

# Longer than a job, shorter than EDGEAI_STALE_SECONDS (30 s): a job whose final write
# failed is still "running" here, and a second attempt has not begun.
END_SECONDS = 25

# case: (trick, "refused": the job fails saying why; "clean": done with the control
# characters removed, or failed saying why)
CASES = {
    "nan-in-the-report": (
        "done('LIVE NaN', report={'framework': 'pytorch', 'percent': float('nan'), "
        "'params_before': float('inf'), 'artifacts': {'state_dict': 'x'}}, "
        "files=[('state_dict', '.sd', b'state')])", "refused"),
    "nul-in-the-report-and-the-message": (
        "done('LIVE \\x00 NUL', report={'framework': 'pytorch', 'percent': 0.5, "
        "'rule': 'a\\x00b', 'warnings': ['\\x00'], 'artifacts': {'state_dict': 'x'}, "
        "'layers': [{'name': 'conv1\\x00', 'type': 'Conv2d', 'channels_before': 32, "
        "'channels_after': 16, 'status': 'pruned'}]}, files=[('state_dict', '.sd', b'sd')])",
        "clean"),
}


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory) -> Iterator[tuple[LiveServer, dict, dict]]:
    """A gunicorn on a fresh PostgreSQL database (files in its data dir), a client key,
    and the guide's files."""
    if "postgresql" in missing():
        pytest.skip(missing()["postgresql"])
    base = tmp_path_factory.mktemp("hostile-child-pg")
    postgres = PostgresServer().start()
    try:
        url = postgres.create_database("hostile" + uuid.uuid4().hex[:8])
        server = LiveServer(base / "var", EDGEAI_DATABASE_URL=url,
                            EDGEAI_JOB_MEMORY_MB=1024)
        server.start(timeout=180)
        try:
            (headers,) = create_keys(url, "attacker")
            yield server, headers, write_guide_pytorch_files(base / "guide")
        finally:
            server.stop()
    finally:
        postgres.stop()


def wait_for_end(server: LiveServer, txid: str, headers: dict, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = requests.get(f"{server.url}/api/status", params={"txid": txid},
                                headers=headers, timeout=30)
        assert response.status_code == 200, response.text[:300]
        status = response.json()
        if status["status"] in ("0", "-1") or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


@pytest.mark.parametrize("case", list(CASES))
def test_what_postgresql_refuses_fails_the_job_once_and_publishes_nothing(pg_server, tmp_path,
                                                                           case):
    """NaN in the report fails the job once, with its reason, its files unpublished; NUL
    characters are removed or fail it the same way; a guide job then runs."""
    server, headers, guide = pg_server
    context = {"TOKEN": uuid.uuid4().hex[:8], "DATA_DIR": str(server.data_dir)}
    txid = submit(server, headers, class_file(CASES[case][0], context), guide["weights"],
                  tmp_path)
    status = wait_for_end(server, txid, headers, END_SECONDS)
    assert status["status"] in ("0", "-1"), f"not ended after {END_SECONDS} s: {status}"
    assert status["attempts"] == 1, status
    result = server.data_dir / "jobs" / txid / "result"
    if CASES[case][1] == "refused" or status["status"] == "-1":
        assert status["status"] == "-1", status
        assert "report" in status["message"] and not status["message"].startswith(
            "Internal"), status["message"]
        assert not result.exists() or not list(result.iterdir()), list(result.iterdir())
    else:
        assert_no_control(status, "the status")
    with open(guide["weights"], "rb") as weights, open(guide["class_def"], "rb") as net:
        response = requests.post(f"{server.url}/api/pt_prune", params=PT_QUERY, timeout=60,
                                 headers=headers, files={"weights": ("w.pth", weights),
                                                         "class_def": ("model.py", net)})
    after = wait_for_end(server, response.json()["txid"], headers, 120)
    assert after["status"] == "0", after
