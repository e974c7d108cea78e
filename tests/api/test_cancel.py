"""``POST /api/cancel`` and the status's ``phase``/``progress``, through the app.

The rows are taken through the real queue functions (the app runs no jobs here);
the end-to-end path with real jobs is in ``tests/e2e/test_progress_and_cancel.py``.
"""
from __future__ import annotations

import io

import pytest

from edgeai.queue import CANCELLED, claim_next_job, finish_job, record_progress

H5 = b"\x89HDF\r\n\x1a\n" + b"\0" * 64
NOT_FOUND = {"status": "-1", "message": "No transaction submitted for txid"}


@pytest.fixture
def txid(client, headers):
    response = client.post("/api/tf_prune?percent=0.4", headers=headers,
                           data={"model": (io.BytesIO(H5), "mnist_base.h5")})
    return response.get_json()["txid"]


def status(client, txid, headers, fields=None):
    extra = {"X-Fields": fields} if fields else {}
    return client.get(f"/api/status?txid={txid}", headers=dict(headers, **extra)).get_json()


def test_phase_and_progress_follow_the_job_and_masks_work_on_them(app, client, headers, txid):
    database = app.extensions["edgeai.db"]
    assert status(client, txid, headers, "status,phase") == {"status": "1", "phase": "queued"}
    lease = claim_next_job(database, "w1", 0).lease_token
    record_progress(database, lease, "pruning", 0.375)
    assert status(client, txid, headers, "phase,progress,message") == {
        "phase": "pruning", "progress": 0.375, "message": "Pruning in progress."}
    assert finish_job(database, txid, "w1", lease=lease, state="done", message="ok",
                      filename="tmpabcdefgh.h5")
    body = status(client, txid, headers)
    assert (body["status"], body["phase"], body["progress"]) == ("0", "done", 1.0)
    assert body["filename"] == "tmpabcdefgh.h5"


def test_cancel_a_queued_job(client, headers, txid):
    response = client.post(f"/api/cancel?txid={txid}", headers=headers)
    assert response.status_code == 200
    assert response.get_json() == {"status": "-1", "message": CANCELLED, "txid": txid,
                                   "state": "failed", "phase": "queued"}
    body = status(client, txid, headers)
    assert (body["status"], body["message"]) == ("-1", CANCELLED)
    again = client.post(f"/api/cancel/?txid={txid}", headers=headers)
    assert again.status_code == 409
    assert again.get_json() == {"status": "-1", "message": "The transaction already failed: "
                                f"{CANCELLED}; nothing to cancel."}


def test_cancel_a_running_job_marks_it_for_its_worker(app, client, headers, txid):
    claim_next_job(app.extensions["edgeai.db"], "w1", 0)
    for _ in range(2):  # asking again is the same answer
        response = client.post(f"/api/cancel?txid={txid}", headers=headers)
        assert response.status_code == 202
        body = response.get_json()
        assert body["status"] == "2" and body["message"].startswith("Cancelling")
    assert status(client, txid, headers)["state"] == "running"  # until its worker stops it


def test_cancel_a_done_job_is_409(app, client, headers, txid):
    database = app.extensions["edgeai.db"]
    claim_next_job(database, "w1", 0)
    assert finish_job(database, txid, "w1", state="done", message="ok", filename="tmpx.h5")
    response = client.post(f"/api/cancel?txid={txid}", headers=headers)
    assert response.status_code == 409
    assert response.get_json() == {"status": "0", "message": "The transaction is done "
                                   "(download it); nothing to cancel."}


def test_cancel_answers_like_status_for_others_and_for_bad_requests(client, headers, new_key,
                                                                    txid):
    other = new_key("someone else")
    for call in ("status", "cancel"):
        method = client.get if call == "status" else client.post
        response = method(f"/api/{call}?txid={txid}", headers=other)
        assert (response.status_code, response.get_json()) == (404, NOT_FOUND)
        assert method(f"/api/{call}?txid={txid}").status_code == 401
        missing = method(f"/api/{call}", headers=headers)
        assert missing.status_code == 400 and missing.get_json()["status"] == "-1"
        unknown = method(f"/api/{call}?txid={txid}&txdi=1", headers=headers)
        assert unknown.status_code == 400 and "did you mean 'txid'?" in \
            unknown.get_json()["message"]
    form = client.post(f"/api/cancel?txid={txid}", headers=headers, data={"force": "1"})
    assert form.status_code == 400 and "unknown form field 'force'" in form.get_json()["message"]
    assert status(client, txid, headers)["state"] == "queued"  # none of these cancelled it
