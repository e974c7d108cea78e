"""The service on a real gunicorn: start-up, keys, the guide's error shapes over HTTP."""
from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.e2e


def test_gunicorn_serves_docs_spec_and_guide_errors(live_server):
    server = live_server()
    headers = server.create_key()
    assert requests.get(server.url + "/docs", timeout=10).status_code == 200
    assert requests.get(server.url + "/api/swagger.json", timeout=10).json()["paths"]
    unknown = requests.get(server.url + "/api/status/?txid=cf06e766-2d20-11ec-931e-0242ac170002",
                           headers=headers, timeout=10)
    assert unknown.status_code == 404
    assert unknown.json() == {"status": "-1", "message": "No transaction submitted for txid"}
    refused = requests.post(server.url + "/api/tf_prune?percent=abc", headers=headers,
                            files={"model": ("m.h5", b"x")}, timeout=10)
    assert refused.status_code == 400 and refused.json()["txid"] is None
    assert requests.get(server.url + "/api/status?txid=x", timeout=10).status_code == 401
