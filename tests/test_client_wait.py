"""``Job.wait()`` against servers that do not hold its status calls: an older edgeai
that refuses ``wait``, and one that answers at once (at its cap of waiting calls).

The servers are small WSGI apps on a real loopback socket, standing in for those
servers; the client under test is the real one (the e2e tests run it against the
real server, which holds the calls).
"""
from __future__ import annotations

import json
import threading
import time

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from edgeai.client import Client

TXID = "cf06e766-2d20-11ec-931e-0242ac170002"


@pytest.fixture
def status_server():
    """Serve ``/api/status`` from a function of the query (and the calls so far);
    yields (url, calls)."""
    calls: list[dict] = []
    answer = {}

    @Request.application
    def app(request):
        calls.append(dict(request.args))
        code, body = answer["fn"](dict(request.args), len(calls))
        return Response(json.dumps(body), code, content_type="application/json")

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", calls, answer
    server.shutdown()


def test_an_older_server_that_refuses_wait_is_polled_as_before(status_server):
    url, calls, answer = status_server

    def older(args, n):
        if "wait" in args:
            return 400, {"status": "-1", "message": "unknown parameter 'wait' This call "
                         "accepts the parameters: txid."}
        return 200, {"status": "0" if n >= 4 else "2", "message": "ok"}

    answer["fn"] = older
    client = Client(url, "id", "secret")
    final = client.job(TXID).wait(poll=0.05, timeout=10)
    assert final["status"] == "0"
    assert client.long_polls is False
    assert [("wait" in c) for c in calls] == [True, False, False, False]


def test_a_server_that_answers_at_once_is_not_called_in_a_busy_loop(status_server):
    url, calls, answer = status_server
    started = time.monotonic()

    def at_cap(args, n):
        assert "wait" in args  # asked to wait, answers at once anyway
        return 200, {"status": "0" if time.monotonic() - started > 1.0 else "2"}

    answer["fn"] = at_cap
    Client(url, "id", "secret").job(TXID).wait(poll=0.25, timeout=10)
    assert 4 <= len(calls) <= 8, len(calls)  # about one a poll interval over a second


def test_a_progress_display_gets_the_first_status_at_once_then_held_calls(status_server):
    url, calls, answer = status_server
    answer["fn"] = lambda args, n: (200, {"status": "0" if n >= 3 else "2", "message": "ok"})
    seen: list[dict] = []
    Client(url, "id", "secret").job(TXID).wait(progress=seen.append, poll=0.05, timeout=10)
    assert ["wait" in c for c in calls] == [False, True, True]  # the job was taken: shown
    assert len(seen) == 3 and seen[-1]["status"] == "0"


def test_a_progress_display_asks_again_soon_then_at_the_poll_interval(status_server):
    """A job that ends within a second still shows its phases: after the first status, the
    held calls ask 0.2 s, 0.3 s, 0.45 s ... up to the poll interval (then stay there)."""
    url, calls, answer = status_server
    answer["fn"] = lambda args, n: (200, {"status": "0" if n >= 8 else "2", "message": "ok"})
    Client(url, "id", "secret").job(TXID).wait(progress=lambda status: None, poll=1.0,
                                              timeout=30)
    assert [float(c["wait"]) if "wait" in c else None for c in calls] == \
        [None, 0.2, 0.3, 0.45, 0.675, 1.0, 1.0, 1.0]


def test_waiting_without_a_display_holds_each_call_long(status_server):
    url, calls, answer = status_server
    answer["fn"] = lambda args, n: (200, {"status": "0" if n >= 2 else "2", "message": "ok"})
    Client(url, "id", "secret").job(TXID).wait(poll=0.05, timeout=120)
    assert [float(c["wait"]) for c in calls] == [25.0, 25.0]
