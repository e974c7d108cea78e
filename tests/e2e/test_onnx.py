"""ONNX through a real gunicorn: upload, status, download, and the pruned file run in
ONNX Runtime as a user runs it; the report page; the CLI and the Python client with
--server; and files that are not what they claim, each failing its own job with the
reason while the server goes on."""
from __future__ import annotations

import html
import subprocess

import numpy as np
import onnx
import pytest
import requests

from tests.e2e.server import BIN, LiveServer
from tests.pruning.onnx_engine.conftest import Net, run_onnx

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer(tmp_path_factory.mktemp("onnx-server") / "var").start()
    live.headers = live.create_key("onnx")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tests.pruning.onnx_engine.models import family

    return family("mobilenet_v2", tmp_path_factory.mktemp("onnx-model") / "mobilenet.onnx")


def submit(server, path, query, name=None, files=None):
    with open(path, "rb") as handle:
        return requests.post(f"{server.url}/api/onnx_prune{query}", headers=server.headers,
                             files={"model": (name or path.name, handle), **(files or {})},
                             timeout=60)


def test_an_onnx_model_through_the_service(server, model, tmp_path):
    """curl's steps: submit, poll the guide's status, download under the served name,
    run it; the report carries the proof and the timings, and its page shows the job."""
    response = submit(server, model, "?percent=0.5&round_to=8&batch_size=4")
    assert response.status_code == 200, response.text
    txid = response.json()["txid"]
    status = server.wait(txid, server.headers)
    assert status["status"] == "0", status
    assert status["filename"].startswith("tmp") and status["filename"].endswith(".onnx")
    report = status["report"]
    assert report["framework"] == "onnx"
    assert report["verification"]["exactness"]["passed"] is True
    assert report["verification"]["round_trip"]["passed"] is True
    assert report["macs_after"] < report["macs_before"] and report["sandbox"]["layers"]
    assert {(row["runtime"], row["batch"]) for row in report["speed"]["latencies"]} == {
        ("onnxruntime", 1), ("onnxruntime", 4)}
    assert "Total params" in status["message"]

    download = requests.get(f"{server.url}/api/download", params={"txid": txid},
                            headers=server.headers, timeout=60)
    assert download.status_code == 200
    served = download.headers["Content-Disposition"].split("filename=")[1].strip('"')
    assert served == status["filename"]
    (tmp_path / served).write_bytes(download.content)
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    (logits,) = run_onnx(tmp_path / served, x)
    assert logits.shape == (3, 10) and np.isfinite(logits).all()
    pruned = onnx.load(tmp_path / served)
    assert sum(int(np.prod(i.dims)) for i in pruned.graph.initializer
               if i.data_type == onnx.TensorProto.FLOAT) == report["params_after"]

    page = requests.get(status["report_url"], timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    text = html.unescape(page.text)
    assert "<code>/features/features.4/conv/conv.0/Conv</code>" in text


def test_the_cli_and_the_client_with_a_server(server, model, tmp_path):
    from edgeai import Client

    env = {"EDGEAI_CLIENT_ID": server.headers["X-IBM-Client-Id"],
           "EDGEAI_CLIENT_SECRET": server.headers["X-IBM-Client-Secret"],
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "PATH": str(BIN)}
    run = subprocess.run([str(BIN / "edgeai"), "prune", str(model), "-p", "0.3", "--server",
                          server.url], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stderr
    assert f"wrote {tmp_path / 'mobilenet.pruned.onnx'}" in run.stdout
    assert "report: http" in run.stdout
    assert run_onnx(tmp_path / "mobilenet.pruned.onnx",
                    np.zeros((1, 3, 32, 32), np.float32))[0].shape == (1, 10)

    client = Client(server.url, server.headers["X-IBM-Client-Id"],
                    server.headers["X-IBM-Client-Secret"])
    job = client.prune(model, percent=0.5, ommitted=["/features/features.4"], measure=False)
    job.wait()
    rows = {row["name"]: row for row in job.report["layers"]}
    assert rows["/features/features.4/conv/conv.0/Conv"]["status"] == "omitted"
    assert job.download(tmp_path / "client.onnx").stat().st_size > 0


def test_files_that_are_not_what_they_claim_fail_their_job_with_the_reason(server, tmp_path):
    """Bytes that are not ONNX, and a model whose weights point at external files (here
    /etc/passwd): each job fails with the reason, nothing is opened, the server goes on;
    a refused parameter is a 400 before anything is stored."""
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"GIF89a" + b"\0" * 500)
    net = Net()
    model = net.model(net.head(net.conv(net.x, 3, 8), 8))
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    hostile = onnx.load(tmp_path / "ext.onnx", load_external_data=False)
    for init in hostile.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "/etc/passwd"
    onnx.save(hostile, tmp_path / "ext.onnx")
    expected = {fake: "fake.onnx is not an ONNX model",
                tmp_path / "ext.onnx": "keeps its weights in external data files"}
    for path, reason in expected.items():
        response = submit(server, path, "?percent=0.5")
        assert response.status_code == 200, response.text
        status = server.wait(response.json()["txid"], server.headers)
        assert status["status"] == "-1" and reason in status["message"], status
        assert "root:" not in status["message"]
    refused = submit(server, fake, "?percent=0.5&formats=tflite")
    assert refused.status_code == 400 and "onnx2tf" in refused.json()["message"]
    assert requests.get(f"{server.url}/healthz", timeout=10).ok
