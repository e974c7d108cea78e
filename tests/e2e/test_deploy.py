"""Deploy formats through a real gunicorn: asked for at submit, downloaded, run as a user
runs them (LiteRT for .tflite, ONNX Runtime for .onnx), with rounding and a cost target."""
from __future__ import annotations

import numpy as np
import pytest
import requests

from tests.e2e.guide import build_mnist_base, write_guide_pytorch_files

pytestmark = pytest.mark.e2e


def download(server, txid, headers, fmt, dest):
    response = requests.get(f"{server.url}/api/download", params={"txid": txid, "format": fmt},
                            headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    name = response.headers["Content-Disposition"].split("filename=")[1].strip('"')
    (dest / name).write_bytes(response.content)
    return dest / name


def test_keras_job_ships_tflite_and_onnx_that_run_in_their_runtimes(live_server, tmp_path):
    import keras
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    server = live_server()
    headers = server.create_key()
    with open(build_mnist_base(tmp_path / "mnist_base.h5"), "rb") as handle:
        response = requests.post(
            f"{server.url}/api/tf_prune?percent=0.4&round_to=8&formats=tflite,onnx&batch_size=4",
            headers=headers, files={"model": ("mnist_base.h5", handle)}, timeout=60)
    assert response.status_code == 200, response.text
    txid = response.json()["txid"]
    status = server.wait(txid, headers)
    assert status["status"] == "0", status
    report = status["report"]
    assert [row["channels_after"] % 8 for row in report["layers"][:4]] == [0, 0, 0, 0]
    assert report["exports"]["tflite"]["passed"] is True
    assert report["exports"]["onnx"]["passed"] is True
    runtimes = {(row["runtime"], row["batch"]) for row in report["speed"]["latencies"]}
    assert runtimes == {(r, b) for r in ("tflite", "onnxruntime") for b in (1, 4)}

    model = keras.saving.load_model(download(server, txid, headers, "model", tmp_path))
    x = np.random.default_rng(1).random((1, 28, 28, 1), dtype=np.float32)
    expected = np.asarray(model(x, training=False))
    interpreter = Interpreter(model_path=str(download(server, txid, headers, "tflite", tmp_path)))
    runner = interpreter.get_signature_runner()
    (name,) = runner.get_input_details()
    np.testing.assert_allclose(next(iter(runner(**{name: x}).values())), expected, atol=1e-5)
    session = ort.InferenceSession(str(download(server, txid, headers, "onnx", tmp_path)))
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)

    response = requests.get(f"{server.url}/api/download",
                            params={"txid": txid, "format": "tflite-int8"}, headers=headers,
                            timeout=30)
    assert response.status_code == 409
    assert response.json()["message"].endswith("submit the model again with "
                                                "formats=tflite-int8")


def test_pytorch_job_with_a_target_ships_onnx(live_server, tmp_path):
    import onnxruntime as ort
    import torch

    server = live_server()
    headers = server.create_key()
    files = write_guide_pytorch_files(tmp_path / "user")
    with open(files["weights"], "rb") as weights, open(files["class_def"], "rb") as class_def:
        response = requests.post(
            f"{server.url}/api/pt_prune?target=macs:0.5&ommitted=fc2&input_size=1,28,28"
            "&formats=onnx&measure=false", headers=headers,
            files={"weights": ("mnist_cnn.pth", weights), "class_def": ("model.py", class_def)},
            timeout=60)
    assert response.status_code == 200, response.text
    txid = response.json()["txid"]
    status = server.wait(txid, headers)
    assert status["status"] == "0", status
    report = status["report"]
    assert report["target"]["metric"] == "macs" and report["macs_ratio"] <= 0.5
    assert "speed" not in report
    state = torch.load(download(server, txid, headers, "state_dict", tmp_path),
                       weights_only=True)
    session = ort.InferenceSession(str(download(server, txid, headers, "onnx", tmp_path)))
    x = np.random.default_rng(2).random((3, 1, 28, 28), dtype=np.float32)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert got.shape == (3, 10) and np.isfinite(got).all()
    assert state["layer_sizes"]["conv1"]["out"] < 32


def test_percent_and_target_together_are_refused(live_server, tmp_path):
    server = live_server()
    headers = server.create_key()
    with open(build_mnist_base(tmp_path / "m.h5"), "rb") as handle:
        response = requests.post(f"{server.url}/api/tf_prune?percent=0.4&target=macs:0.5",
                                 headers=headers, files={"model": ("m.h5", handle)}, timeout=60)
    assert response.status_code == 400
    assert response.json()["message"].startswith("Send one of percent, target or plan, not "
                                                  "percent and target")


def test_pytorch_job_pruned_to_a_latency_budget_in_the_sandbox(live_server, tmp_path):
    """target=latency:F through the server: the search runs in the confined child, times
    the guide's Net in torch with one thread (under a millisecond here: then the estimate
    decides, said so), and the status and report page say what was reached."""
    server = live_server()
    headers = server.create_key()
    files = write_guide_pytorch_files(tmp_path / "user")
    with open(files["weights"], "rb") as weights, open(files["class_def"], "rb") as class_def:
        response = requests.post(
            f"{server.url}/api/pt_prune?target=latency:0.6&input_size=1,28,28&threads=1",
            headers=headers,
            files={"weights": ("mnist_cnn.pth", weights), "class_def": ("model.py", class_def)},
            timeout=60)
    assert response.status_code == 200, response.text
    status = server.wait(response.json()["txid"], headers)
    assert status["status"] == "0", status
    target = status["report"]["target"]
    assert target["metric"] == "latency" and target["runtime"] == "torch"
    assert target["threads"] == 1 and target["original_ms"] > 0
    if target["measured"]:
        assert target["met"] == (target["reached"] <= 0.6)
    if not target["met"]:
        assert any(w.startswith("latency target 0.6: NOT") for w in status["report"]["warnings"])
    assert status["report"]["plan"] and status["report"]["params_ratio"] < 1
    page = requests.get(status["report_url"], timeout=30).text
    assert 'id="latency-search"' in page and 'id="budget-verdict"' in page
