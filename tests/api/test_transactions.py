"""Status and download: the guide's shapes for every state, masks, trailing slashes."""
from __future__ import annotations

import io

import pytest

from edgeai.queue import claim_next_job, expire_artifacts, finish_job

H5 = b"\x89HDF\r\n\x1a\n" + b"\0" * 64


@pytest.fixture
def txid(client, headers):
    response = client.post("/api/tf_prune?percent=0.4&ommitted=", headers=headers,
                           data={"model": (io.BytesIO(H5), "mnist_base.h5")})
    return response.get_json()["txid"]


def finish(app, txid, payload=b"pruned-model-bytes", filename="tmpabcdefgh.h5"):
    """Take the job through the real queue functions and publish a real artifact."""
    database, storage = app.extensions["edgeai.db"], app.extensions["edgeai.storage"]
    row = claim_next_job(database, "test-worker", max_running=5)
    assert row.txid == txid
    produced = storage.work_dir(txid) / filename
    produced.write_bytes(payload)
    storage.publish(txid, produced, filename)
    assert finish_job(database, txid, "test-worker", state="done", message="summary",
                      filename=filename, report={"artifacts": {"model": filename}})


def test_queued_status(client, headers, txid):
    body = client.get(f"/api/status?txid={txid}", headers=headers).get_json()
    assert body["status"] == "1" and body["state"] == "queued"
    assert "filename" not in body
    assert body["queue_position"] == 0


def test_trailing_slash_and_x_fields(client, headers, txid):
    response = client.get(f"/api/status/?txid={txid}",
                          headers=dict(headers, **{"X-Fields": "status,message"}))
    assert response.status_code == 200
    assert response.get_json() == {"status": "1", "message": "Queued."}


def test_unknown_and_malformed_txids(client, headers):
    for txid in ("cf06e766-2d20-11ec-931e-0242ac170002", "../../etc/passwd", "x" * 500):
        for call in ("status", "download"):
            response = client.get(f"/api/{call}?txid={txid}", headers=headers)
            assert response.status_code == 404
            assert response.get_json() == {"status": "-1",
                                           "message": "No transaction submitted for txid"}


def test_download_before_done_is_409(client, headers, txid):
    response = client.get(f"/api/download?txid={txid}", headers=headers)
    assert response.status_code == 409
    assert response.get_json()["status"] == "1"


def test_done_status_and_download(app, client, headers, txid):
    finish(app, txid)
    body = client.get(f"/api/status?txid={txid}", headers=headers).get_json()
    assert body["status"] == "0" and body["filename"] == "tmpabcdefgh.h5"
    assert body["message"] == "summary"
    response = client.get(f"/api/download/?txid={txid}", headers=headers)
    assert response.status_code == 200
    assert response.data == b"pruned-model-bytes"
    assert "filename=tmpabcdefgh.h5" in response.headers["Content-Disposition"]
    assert "attachment" in response.headers["Content-Disposition"]


def test_pytorch_only_formats_refused_for_tensorflow(app, client, headers, txid):
    finish(app, txid)
    response = client.get(f"/api/download?txid={txid}&format=pt2", headers=headers)
    assert response.status_code == 400
    assert "allowed: model" in response.get_json()["message"]


def test_failed_download_is_409_with_reason(app, client, headers, txid):
    database = app.extensions["edgeai.db"]
    claim_next_job(database, "w", 5)
    finish_job(database, txid, "w", state="failed", message="nothing prunable in this model")
    status = client.get(f"/api/status?txid={txid}", headers=headers).get_json()
    assert status["status"] == "-1" and "nothing prunable" in status["message"]
    response = client.get(f"/api/download?txid={txid}", headers=headers)
    assert response.status_code == 409
    assert response.get_json()["status"] == "-1"
    assert "nothing prunable" in response.get_json()["message"]


def test_expired_artifact_is_410_and_files_are_gone(app, client, headers, txid, data_dir):
    finish(app, txid)
    database, storage = app.extensions["edgeai.db"], app.extensions["edgeai.storage"]
    assert expire_artifacts(database, storage, retention_hours=1e-9) == 1
    status = client.get(f"/api/status?txid={txid}", headers=headers).get_json()
    assert status["status"] == "-1" and "EDGEAI_RETENTION_HOURS" in status["message"]
    assert client.get(f"/api/download?txid={txid}", headers=headers).status_code == 410
    assert not storage.result_dir(txid).exists()


def test_swagger_ui_and_spec(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/api/swagger.json").get_json()
    assert set(spec["paths"]) == {"/tf_prune", "/pt_prune", "/onnx_prune", "/tf_analyze",
                                  "/pt_analyze", "/onnx_analyze", "/status", "/download",
                                  "/cancel"}
    assert client.get("/swagger.json").get_json()["paths"] == spec["paths"]
    for path in spec["paths"].values():
        for operation in path.values():
            if isinstance(operation, dict) and "summary" in operation:
                assert operation["summary"]


def test_upload_over_limit_is_413_in_guide_shape(make_app, tmp_path):
    app = make_app(max_upload_mb=1, auth="off")
    response = app.test_client().post(
        "/api/tf_prune?percent=0.4",
        data={"model": (io.BytesIO(b"\0" * (2 * 1024 * 1024)), "big.h5")})
    assert response.status_code == 413
    body = response.get_json()
    assert body["txid"] is None and "EDGEAI_MAX_UPLOAD_MB" in body["message"]


def test_x_fields_mask_on_submit(client, headers):
    response = client.post("/api/tf_prune?percent=0.4",
                           headers=dict(headers, **{"X-Fields": "txid"}),
                           data={"model": (io.BytesIO(H5), "m.h5")})
    assert response.status_code == 200
    assert list(response.get_json()) == ["txid"]


def test_every_operation_has_a_whole_summary(client):
    spec = client.get("/api/swagger.json").get_json()
    for path, operations in spec["paths"].items():
        for verb, operation in operations.items():
            if verb in ("get", "post"):
                summary = operation.get("summary", "")
                assert len(summary) > 20 and summary.count("(") == summary.count(")"), \
                    (path, summary)
