"""API keys: who may call, who may see what, and that secrets are never stored."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

from edgeai.auth import revoke_key

H5 = b"\x89HDF\r\n\x1a\n" + b"\0" * 64


def submit(client, headers):
    return client.post("/api/tf_prune?percent=0.4", headers=headers,
                       data={"model": (io.BytesIO(H5), "m.h5")})


def test_no_key_is_401_with_json(client):
    response = submit(client, {})
    assert response.status_code == 401
    assert "X-IBM-Client-Id" in response.get_json()["message"]
    assert client.get("/api/status?txid=x").status_code == 401


def test_wrong_secret_is_401(client, headers):
    bad = dict(headers, **{"X-IBM-Client-Secret": "nope"})
    assert submit(client, bad).status_code == 401


def test_another_clients_secret_is_401(client, new_key):
    alice, bob = new_key("alice"), new_key("bob")
    mixed = {"X-IBM-Client-Id": alice["X-IBM-Client-Id"],
             "X-IBM-Client-Secret": bob["X-IBM-Client-Secret"]}
    assert submit(client, mixed).status_code == 401


def test_other_clients_transaction_is_invisible(client, new_key):
    alice, bob = new_key("alice"), new_key("bob")
    txid = submit(client, alice).get_json()["txid"]
    assert client.get(f"/api/status?txid={txid}", headers=alice).status_code == 200
    for call in ("status", "download"):
        response = client.get(f"/api/{call}?txid={txid}", headers=bob)
        assert response.status_code == 404
        assert response.get_json() == {"status": "-1",
                                       "message": "No transaction submitted for txid"}


def test_revoked_key_is_refused_at_once(app, client, headers):
    assert submit(client, headers).status_code == 200  # also fills the verification cache
    revoke_key(app.extensions["edgeai.db"], headers["X-IBM-Client-Id"])
    assert submit(client, headers).status_code == 401


def test_quota_per_client_is_429_with_retry_after(make_app, new_key):
    app = make_app(max_jobs_per_client=2)
    client = app.test_client()
    from edgeai.auth import create_key

    key = create_key(app.extensions["edgeai.db"], "q")
    headers = {"X-IBM-Client-Id": key.client_id, "X-IBM-Client-Secret": key.client_secret}
    assert [submit(client, headers).status_code for _ in range(2)] == [200, 200]
    response = submit(client, headers)
    assert response.status_code == 429
    assert response.headers["Retry-After"]
    assert response.get_json()["txid"] is None
    assert "EDGEAI_MAX_JOBS_PER_CLIENT" in response.get_json()["message"]


def test_cli_creates_lists_revokes_and_secret_is_not_stored(data_dir):
    env = dict(os.environ, EDGEAI_DATA_DIR=str(data_dir))
    run = [sys.executable, "-m", "edgeai.cli"]
    created = json.loads(subprocess.run(run + ["keys", "create", "ci"], env=env, check=True,
                                        capture_output=True, text=True).stdout)
    assert set(created) == {"client_id", "client_secret"}
    listed = json.loads(subprocess.run(run + ["keys", "list"], env=env, check=True,
                                       capture_output=True, text=True).stdout)
    assert [k["client_id"] for k in listed] == [created["client_id"]]
    assert "client_secret" not in listed[0] and "secret_hash" not in listed[0]
    secret = created["client_secret"].encode()
    for root, _dirs, files in os.walk(data_dir):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                assert secret not in handle.read()
    revoked = subprocess.run(run + ["keys", "revoke", created["client_id"]], env=env,
                             capture_output=True, text=True)
    assert revoked.returncode == 0
    missing = subprocess.run(run + ["keys", "revoke", "nobody"], env=env, capture_output=True,
                             text=True)
    assert missing.returncode == 1


def test_gateway_mode_trusts_only_listed_proxies(make_app):
    app = make_app(auth="gateway", trusted_proxies=("10.1.2.3/32",))
    client = app.test_client()
    forwarded = {"X-IBM-Client-Id": "team-a"}
    trusted = client.post("/api/tf_prune?percent=0.4", headers=forwarded,
                          data={"model": (io.BytesIO(H5), "m.h5")},
                          environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert trusted.status_code == 200
    direct = client.post("/api/tf_prune?percent=0.4", headers=forwarded,
                         data={"model": (io.BytesIO(H5), "m.h5")},
                         environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert direct.status_code == 401


def test_auth_off_serves_anonymously(make_app):
    client = make_app(auth="off").test_client()
    assert submit(client, {}).status_code == 200
