"""Phase, progress and cancel through a real gunicorn, on the guide's PyTorch model.

One server (one worker process, one job at a time) for the module: a job's status
passes through the pipeline's phases to "done"; a queued job cancelled fails at
once; a running job cancelled while it fine-tunes is stopped by its worker within
seconds; cancelling a finished job is a 409.
"""
from __future__ import annotations

import time

import pytest
import requests

from edgeai.pruning.progress import JOB_PHASES
from tests.e2e.guide import write_guide_pytorch_files
from tests.e2e.server import LiveServer

pytestmark = pytest.mark.e2e

CANCELLED = "cancelled by the client"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A gunicorn that runs one job at a time and notices a cancel within half a second."""
    base = tmp_path_factory.mktemp("progress")
    live = LiveServer(base / "var", workers=1, EDGEAI_WORKER_THREADS=1,
                      EDGEAI_HEARTBEAT_SECONDS=0.5, EDGEAI_WARM_SPARES="off").start()
    live.files = write_guide_pytorch_files(base / "guide", samples=256)
    live.headers = live.create_key("progress")
    yield live
    live.stop()


def submit(server, query, dataset=False):
    """POST the guide's files to pt_prune; return the txid."""
    roles = ["weights", "class_def", *(["dataset"] if dataset else [])]
    handles = {role: open(server.files[role], "rb") for role in roles}
    try:
        response = requests.post(f"{server.url}/api/pt_prune?input_size=1,28,28&{query}",
                                 headers=server.headers, files=handles, timeout=60)
    finally:
        for handle in handles.values():
            handle.close()
    assert response.status_code == 200, response.text
    return response.json()["txid"]


def cancel(server, txid):
    return requests.post(f"{server.url}/api/cancel", params={"txid": txid},
                         headers=server.headers, timeout=30)


def follow(server, txid, until, timeout=180.0):
    """Poll status every 0.1 s until ``until(body)``; return every body seen."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.append(server.status(txid, server.headers))
        if until(seen[-1]):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"status never got there: {seen[-3:]}")


def test_a_job_shows_its_phases_then_done_and_cannot_be_cancelled(server):
    # With data and two epochs of fine-tuning: seconds of steps, seen at one write a second.
    txid = submit(server, "percent=0.5&ommitted=fc1,fc2&finetune_epochs=2", dataset=True)
    seen = follow(server, txid, lambda body: body["status"] in ("0", "-1"))
    final = seen[-1]
    assert (final["status"], final["phase"], final["progress"]) == ("0", "done", 1.0), final
    running = [body for body in seen if body["status"] == "2"]
    phases = list(dict.fromkeys(body["phase"] for body in running))
    assert len(phases) >= 3 and set(phases) <= set(JOB_PHASES), phases
    fractions = [body["progress"] for body in running]
    assert fractions == sorted(fractions) and all(0 <= f < 1 for f in fractions), fractions
    masked = requests.get(f"{server.url}/api/status", params={"txid": txid}, timeout=30,
                          headers=dict(server.headers, **{"X-Fields": "status,phase"}))
    assert masked.json() == {"status": "0", "phase": "done"}
    response = cancel(server, txid)
    assert response.status_code == 409
    assert response.json() == {"status": "0", "message": "The transaction is done "
                               "(download it); nothing to cancel."}


def test_cancel_a_queued_and_a_running_job(server):
    slow = submit(server, "percent=0.5&finetune_epochs=50&recover=false&measure=false",
                  dataset=True)
    queued = submit(server, "percent=0.5")
    response = cancel(server, queued)  # one job at a time: it waits behind the slow one
    assert response.status_code == 200, response.text
    assert response.json()["message"] == CANCELLED
    body = server.status(queued, server.headers)
    assert (body["status"], body["phase"], body["message"]) == ("-1", "queued", CANCELLED)

    tuning = follow(server, slow, lambda body: body["phase"] == "fine-tuning"
                    or body["status"] in ("0", "-1"))[-1]
    assert tuning["status"] == "2" and 0 < tuning["progress"] < 1, tuning
    asked = time.monotonic()
    response = cancel(server, slow)
    assert response.status_code == 202 and response.json()["status"] == "2", response.text
    final = follow(server, slow, lambda body: body["status"] != "2", timeout=30)[-1]
    assert (final["status"], final["message"]) == ("-1", CANCELLED), final
    assert final["phase"] == "fine-tuning"  # where it stopped
    assert time.monotonic() - asked < 10
    assert cancel(server, slow).status_code == 409
