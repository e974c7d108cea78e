"""The API in-process on PostgreSQL and S3: uploads land in the bucket, the row in the
database; downloads stream back with their length, or redirect to a presigned URL."""
from __future__ import annotations

import io
import uuid

import pytest
import requests

from edgeai import create_app
from edgeai.auth import create_key
from edgeai.queue import claim_next_job, expire_artifacts, finish_job
from tests.api.test_transactions import H5
from tests.scaleout.conftest import BUCKET


@pytest.fixture
def s3_app(pg_url, seaweed, tmp_path, monkeypatch):
    """Factory: an app (no job runner) on a fresh database and bucket prefix."""
    for name, value in seaweed.env.items():
        monkeypatch.setenv(name, value)
    prefix = f"api-{uuid.uuid4().hex[:8]}"
    apps = []

    def factory(**overrides):
        app = create_app({"data_dir": tmp_path / "var", "database_url": pg_url,
                          "storage_url": f"s3://{BUCKET}/{prefix}", "run_jobs": False,
                          **overrides})
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["edgeai.db"].dispose()


def submit_and_finish(app, payload):
    key = create_key(app.extensions["edgeai.db"], "s3-client")
    headers = {"X-IBM-Client-Id": key.client_id, "X-IBM-Client-Secret": key.client_secret}
    client = app.test_client()
    txid = client.post("/api/tf_prune?percent=0.4", headers=headers,
                       data={"model": (io.BytesIO(H5), "mnist_base.h5")}).get_json()["txid"]
    database, storage = app.extensions["edgeai.db"], app.extensions["edgeai.storage"]
    stored = storage.client.get_object(Bucket=BUCKET, Key=storage.input_key(txid, "model"))
    assert stored["Body"].read() == H5
    row = claim_next_job(database, "w", max_running=0)
    produced = storage.work_dir(txid, row.lease_token) / "tmpabcdefgh.h5"
    produced.write_bytes(payload)
    storage.publish(txid, produced, "tmpabcdefgh.h5")
    assert finish_job(database, txid, "w", lease=row.lease_token, state="done", message="ok",
                      filename="tmpabcdefgh.h5",
                      report={"artifacts": {"model": "tmpabcdefgh.h5"}})
    return client, headers, txid


def test_downloads_stream_from_the_bucket_with_their_length(s3_app):
    app = s3_app()
    payload = bytes(range(256)) * 4096
    client, headers, txid = submit_and_finish(app, payload)
    response = client.get(f"/api/download?txid={txid}", headers=headers)
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(payload))
    assert 'filename=tmpabcdefgh.h5' in response.headers["Content-Disposition"]
    assert response.data == payload
    database, storage = app.extensions["edgeai.db"], app.extensions["edgeai.storage"]
    assert expire_artifacts(database, storage, retention_hours=1e-9) == 1
    assert client.get(f"/api/download?txid={txid}", headers=headers).status_code == 410


def test_redirect_mode_sends_clients_to_a_presigned_url(s3_app):
    app = s3_app(s3_downloads="redirect", s3_url_seconds=60)
    client, headers, txid = submit_and_finish(app, b"model bytes")
    response = client.get(f"/api/download?txid={txid}", headers=headers)
    assert response.status_code == 302
    fetched = requests.get(response.headers["Location"], timeout=30)  # no API key needed
    assert fetched.content == b"model bytes"
    assert 'filename="tmpabcdefgh.h5"' in fetched.headers["Content-Disposition"]
