"""The guide's two walk-throughs, call for call, against a real gunicorn."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import requests

from tests.e2e.guide import build_mnist_base, write_guide_pytorch_files

pytestmark = pytest.mark.e2e


def download(server, txid, headers, dest_dir, **params):
    response = requests.get(f"{server.url}/api/download", params={"txid": txid, **params},
                            headers=dict(headers, accept="application/json"), timeout=60)
    assert response.status_code == 200, response.text
    disposition = response.headers["Content-Disposition"]
    name = disposition.split("filename=")[1].strip('"')
    path = dest_dir / name
    path.write_bytes(response.content)
    return path


def test_tensorflow_walkthrough(live_server, tmp_path):
    import numpy as np
    import tensorflow as tf

    server = live_server()
    headers = server.create_key()
    model_path = build_mnist_base(tmp_path / "mnist_base.h5")
    with open(model_path, "rb") as handle:
        response = requests.post(f"{server.url}/api/tf_prune?percent=0.4&ommitted=",
                                 headers=dict(headers, accept="application/json"),
                                 files={"model": ("mnist_base.h5", handle)}, timeout=60)
    assert response.status_code == 200
    body = response.json()
    assert body["message"] == "Successfully submitted transaction."
    status = server.wait(body["txid"], headers)
    assert status["status"] == "0", status
    assert status["filename"].startswith("tmp") and status["filename"].endswith(".h5")
    pruned_path = download(server, body["txid"], headers, tmp_path)
    assert pruned_path.name == status["filename"]

    pruned = tf.keras.models.load_model(pruned_path)
    convs = [layer for layer in pruned.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    filters = [layer.filters for layer in convs]
    assert filters == [19, 38, 19]  # 32/64/32 less round(40%)
    assert pruned.layers[-1].units == 10
    prediction = pruned.predict(np.random.rand(2, 28, 28, 1).astype("float32"), verbose=0)
    assert prediction.shape == (2, 10)
    np.testing.assert_allclose(prediction.sum(axis=1), 1.0, rtol=1e-5)
    report = status["report"]
    assert report["params_after"] < report["params_before"]
    assert report["file_size_after"] < report["file_size_before"]


GOLDEN_ROWS = [
    ("Conv2d-1", "[-1, 16, 26, 26]", "160"),
    ("Conv2d-2", "[-1, 32, 24, 24]", "4,640"),
    ("Linear-4", "[-1, 128]", "589,952"),
    ("Linear-6", "[-1, 10]", "1,290"),
]


def test_pytorch_walkthrough(live_server, tmp_path):
    server = live_server()
    headers = server.create_key()
    files = write_guide_pytorch_files(tmp_path / "user")
    with open(files["weights"], "rb") as w, open(files["dataset"], "rb") as d, \
            open(files["class_def"], "rb") as c:
        response = requests.post(
            f"{server.url}/api/pt_prune?percent=0.5&ommitted=fc1,fc2&input_size=1,28,28"
            "&model_name=Net", headers=dict(headers, accept="application/json"),
            files={"weights": ("mnist_cnn.pth", w), "dataset": ("train_loader.pth", d),
                   "class_def": ("model.py", c)}, timeout=60)
    assert response.status_code == 200, response.text
    txid = response.json()["txid"]
    status = server.wait(txid, headers)
    assert status["status"] == "0", status
    message = status["message"]
    for layer, shape, params in GOLDEN_ROWS:
        row = next(line for line in message.splitlines() if layer in line)
        assert row.split() == [layer, *shape.split(), params], row
    assert "Total params: 596,042" in message
    assert not message.startswith("b'")  # plain text, not a bytes repr
    assert status["filename"].endswith(".pt")

    path = download(server, txid, headers, files["class_def"].parent)
    check = textwrap.dedent(f"""
        import torch, torch.nn.functional as F
        model, info = torch.load({str(path)!r}, weights_only=False)
        assert type(model).__module__ == "model", type(model).__module__
        model.train()
        optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
        x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
        before = [p.detach().clone() for p in model.parameters()]
        loss = F.nll_loss(model(x), y)
        loss.backward()
        optimizer.step()
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert model(x).shape == (8, 10)
        print("trained", info["params_after"])
    """)
    result = subprocess.run([sys.executable, "-c", check], cwd=files["class_def"].parent,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "trained 596042" in result.stdout


def test_pytorch_other_download_formats(live_server, tmp_path):
    import torch

    server = live_server()
    headers = server.create_key()
    files = write_guide_pytorch_files(tmp_path / "user")
    with open(files["weights"], "rb") as w, open(files["class_def"], "rb") as c:
        txid = requests.post(
            f"{server.url}/api/pt_prune?percent=0.5&input_size=1,28,28", headers=headers,
            files={"weights": ("mnist_cnn.pth", w), "class_def": ("model.py", c)},
            timeout=60).json()["txid"]
    assert server.wait(txid, headers)["status"] == "0"
    state_path = download(server, txid, headers, tmp_path, format="state_dict")
    saved = torch.load(state_path, weights_only=True)
    assert saved["layer_sizes"]["conv1"] == {"in": 1, "out": 16}
    assert saved["state_dict"]["conv2.weight"].shape == (32, 16, 3, 3)
    program_path = download(server, txid, headers, tmp_path, format="pt2")
    program = torch.export.load(program_path)  # no class file needed
    assert program.module()(torch.randn(2, 1, 28, 28)).shape == (2, 10)  # a dynamic batch
    bad = requests.get(f"{server.url}/api/download", params={"txid": txid, "format": "tflite"},
                       headers=headers, timeout=30)
    assert bad.status_code == 400 and "state_dict, pt2, onnx" in bad.json()["message"]
    not_made = requests.get(f"{server.url}/api/download", params={"txid": txid,
                                                                   "format": "onnx"},
                            headers=headers, timeout=30)
    assert not_made.status_code == 409
    assert not_made.json()["message"].endswith("submit the model again with formats=onnx")
