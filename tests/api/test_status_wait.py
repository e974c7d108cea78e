"""Status long-polls (``wait=S``): bounds, the end seen at once, the per-process cap.

The app has no job runner here: the test takes the row through the real queue
functions from another thread, as a worker in another process would, so the
waiting call can only learn of the end from the database.
"""
from __future__ import annotations

import io
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeai.api.waiting import CHECK_SECONDS
from edgeai.auth import create_key
from edgeai.queue import claim_next_job, finish_job

H5 = b"\x89HDF\r\n\x1a\n" + b"\0" * 64


@pytest.fixture
def txid(client, headers):
    response = client.post("/api/tf_prune?percent=0.4", headers=headers,
                           data={"model": (io.BytesIO(H5), "mnist_base.h5")})
    return response.get_json()["txid"]


def test_wait_out_of_range_is_a_400_naming_the_range(client, headers, txid):
    for wait in ("31", "-1", "abc", "nan", "inf", "1e9", "0x10"):
        response = client.get(f"/api/status?txid={txid}&wait={wait}", headers=headers)
        assert response.status_code == 400, wait
        body = response.get_json()
        assert body["status"] == "1"  # the transaction's, as download's format errors say
        assert body["message"].startswith("wait must be a number of seconds from 0 to 30")
        assert repr(wait) in body["message"]


def test_a_misspelt_wait_is_refused_with_a_suggestion(client, headers, txid):
    response = client.get(f"/api/status?txid={txid}&wiat=5", headers=headers)
    assert response.status_code == 400
    assert "did you mean 'wait'?" in response.get_json()["message"]


def test_swagger_documents_wait_with_its_bound(client):
    spec = client.get("/api/swagger.json").get_json()
    params = {p["name"]: p for p in spec["paths"]["/status"]["get"]["parameters"]}
    assert params["wait"]["type"] == "number"
    assert (params["wait"]["minimum"], params["wait"]["maximum"]) == (0, 30)
    assert "/metrics" not in spec["paths"]


def test_a_queued_job_is_answered_after_the_wait_with_its_status(client, headers, txid):
    started = time.monotonic()
    response = client.get(f"/api/status?txid={txid}&wait=0.4", headers=headers)
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.get_json()["status"] == "1"
    assert 0.4 <= elapsed < 1.5, elapsed
    started = time.monotonic()
    assert client.get(f"/api/status?txid={txid}&wait=0", headers=headers).status_code == 200
    assert time.monotonic() - started < 0.4


def test_the_end_is_seen_within_a_tenth_of_a_second_of_the_write(app, client, headers, txid):
    database = app.extensions["edgeai.db"]
    assert claim_next_job(database, "other-process", max_running=5).txid == txid
    written = []

    def finish_later():
        time.sleep(0.5)
        assert finish_job(database, txid, "other-process", state="failed", message="broke")
        written.append(time.monotonic())

    writer = threading.Thread(target=finish_later)
    writer.start()
    response = client.get(f"/api/status?txid={txid}&wait=10", headers=headers)
    seen = time.monotonic()
    writer.join()
    assert response.get_json()["status"] == "-1"
    assert response.get_json()["message"] == "broke"
    # One database check interval, plus the read and the answer (timings are noisy on a
    # shared machine: 0.1 s leaves 50 ms of slack over the interval).
    assert seen - written[0] < CHECK_SECONDS + 0.1, seen - written[0]


def refused_waits(client) -> float:
    """edgeai_status_waits_refused_total as /metrics says it now."""
    text = client.get("/metrics").get_data(as_text=True)
    (family,) = [f for f in text_string_to_metric_families(text)
                 if f.name == "edgeai_status_waits_refused"]
    return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))


def test_waits_beyond_the_cap_are_answered_at_once(make_app):
    app = make_app(status_waits=1)
    client = app.test_client()
    issued = create_key(app.extensions["edgeai.db"], "cap")
    key = {"X-IBM-Client-Id": issued.client_id, "X-IBM-Client-Secret": issued.client_secret}
    txid = client.post("/api/tf_prune?percent=0.4", headers=key,
                       data={"model": (io.BytesIO(H5), "m.h5")}).get_json()["txid"]
    held = []

    def hold():
        started = time.monotonic()
        app.test_client().get(f"/api/status?txid={txid}&wait=1.5", headers=key)
        held.append(time.monotonic() - started)

    refused_before = refused_waits(client)
    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.3)  # the first call holds the only place
    started = time.monotonic()
    response = client.get(f"/api/status?txid={txid}&wait=1.5", headers=key)
    assert response.status_code == 200 and response.get_json()["status"] == "1"
    assert time.monotonic() - started < 0.5
    holder.join()
    assert held[0] >= 1.5
    assert refused_waits(client) == refused_before + 1
