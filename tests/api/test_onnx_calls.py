"""The ONNX calls, built from the engine's declaration: what they accept, what they refuse
(with what is allowed), and how Swagger documents them."""
from __future__ import annotations

import io

import pytest

# The first bytes of a real ONNX file do not matter here: the API checks names and
# parameters; the engine reads the model (and refuses what is not one) when the job runs.
ONNX = b"\x08\x08\x12\x07pytorch" + b"\0" * 64


def onnx_post(client, headers, query, files=None, call="onnx_prune"):
    data = files if files is not None else {"model": (io.BytesIO(ONNX), "net.onnx")}
    return client.post(f"/api/{call}{query}", data=data, headers=headers,
                       content_type="multipart/form-data")


def test_an_onnx_model_is_accepted_and_queued_as_an_onnx_job(app, client, headers):
    from edgeai.db import Transaction

    response = onnx_post(client, headers, "?percent=0.4&round_to=8&ommitted=/layer1,fc.weight")
    assert response.status_code == 200, response.get_json()
    txid = response.get_json()["txid"]
    with app.extensions["edgeai.db"].session() as session:
        row = session.get(Transaction, txid)
        assert row.framework == "onnx" and row.input_names == {"model": "net.onnx"}
        assert row.params["omitted"] == ["/layer1", "fc.weight"] and row.params["round_to"] == 8
    status = client.get(f"/api/status?txid={txid}", headers=headers).get_json()
    assert status["status"] == "1" and status["framework"] == "onnx"


@pytest.mark.parametrize("query, message", [
    ("?percent=0.4&formats=tflite", "onnx2tf"),
    ("?percent=0.4&formats=onnx", "is ONNX already"),
    ("?percent=0.4&finetune_epochs=2", "ONNX models are not fine-tuned here"),
    ("?percent=40", "percent=0.4"),
    ("?percent=0.4&input_size=1,28,28", "unknown parameter 'input_size'"),
])
def test_what_the_onnx_call_refuses_says_why(client, headers, query, message):
    response = onnx_post(client, headers, query)
    assert response.status_code == 400
    body = response.get_json()
    assert body["txid"] is None and message in body["message"]


@pytest.mark.parametrize("name", ["net.pb", "net.h5", "net.onnx.zip", "net"])
def test_only_onnx_files_are_taken(client, headers, name):
    response = onnx_post(client, headers, "?percent=0.4",
                         files={"model": (io.BytesIO(ONNX), name)})
    assert response.status_code == 400
    assert "'model' must be a .onnx file" in response.get_json()["message"]


def test_the_analysis_call_needs_a_dataset(client, headers):
    response = onnx_post(client, headers, "?target=macs:0.5", call="onnx_analyze")
    assert response.status_code == 400
    assert "The form file 'dataset' is required (.npz)." == response.get_json()["message"]
    response = onnx_post(client, headers, "?target=macs:0.5", call="onnx_analyze", files={
        "model": (io.BytesIO(ONNX), "net.onnx"),
        "dataset": (io.BytesIO(b"PK\x03\x04" + b"\0" * 30), "data.npz")})
    assert response.status_code == 200, response.get_json()


def test_swagger_documents_both_calls(client):
    spec = client.get("/api/swagger.json").get_json()
    prune = spec["paths"]["/onnx_prune"]["post"]
    names = {param["name"] for param in prune["parameters"]}
    assert {"percent", "ommitted", "omitted", "round_to", "target", "measure", "batch_size",
            "recover", "model", "dataset", "plan"} <= names
    model = next(param for param in prune["parameters"] if param["name"] == "model")
    assert model["in"] == "formData" and model["type"] == "file" and ".onnx" in \
        model["description"]
    assert "ONNX" in prune["summary"]
    analyze = spec["paths"]["/onnx_analyze"]["post"]
    assert {param["name"] for param in analyze["parameters"]} >= {"model", "dataset", "target"}
    assert "percent" not in {param["name"] for param in analyze["parameters"]}
