"""A torch.export program (.pt2) through a real gunicorn: upload, status, download, the
pruned program run on batch 2, its ONNX export, the report page; then the CLI and the
Python client with a .pt2."""
from __future__ import annotations

import json
import subprocess

import pytest
import requests
import torch

from tests.e2e.server import BIN, LiveServer
from tests.pruning.torch_engine.models import GUIDE_NET_SOURCE
from tests.pruning.torch_engine.programs import build, save_program, zero_lowest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer(tmp_path_factory.mktemp("program-server") / "var").start()
    live.headers = live.create_key("program")
    yield live
    live.stop()


@pytest.fixture(scope="module")
def guide(tmp_path_factory):
    """The guide's Net with its lowest-L1 filters zeroed (fc1 kept, as the guide's call
    keeps it), exported at batch 1 as users usually do, and saved."""
    model = build(GUIDE_NET_SOURCE)
    zero_lowest(model, 0.5, keep=("fc1",))
    path = save_program(model, (1, 28, 28), tmp_path_factory.mktemp("user") / "net.pt2")
    return model, path


def get(server, call, **params):
    response = requests.get(f"{server.url}/api/{call}", params=params, headers=server.headers,
                            timeout=60)
    assert response.status_code == 200, response.text
    return response


def test_upload_a_program_and_run_the_pruned_one_on_batch_2(server, guide, tmp_path):
    import onnxruntime

    model, path = guide
    with open(path, "rb") as handle:
        response = requests.post(f"{server.url}/api/pt_prune",
                                 params={"percent": "0.5", "ommitted": "fc1",
                                         "formats": "onnx"},
                                 headers=dict(server.headers, accept="application/json"),
                                 files={"model": ("net.pt2", handle)}, timeout=60)
    assert response.status_code == 200, response.text
    txid = response.json()["txid"]
    status = server.wait(txid, server.headers)
    assert status["status"] == "0", status
    assert status["filename"].startswith("tmp") and status["filename"].endswith(".pt2")
    assert "Total params: 596,042" in status["message"]
    report = status["report"]
    assert report["brings_code"].startswith("a torch.export program (.pt2)")

    download = get(server, "download", txid=txid)
    assert status["filename"] in download.headers["Content-Disposition"]
    pruned = tmp_path / status["filename"]
    pruned.write_bytes(download.content)
    assert get(server, "download", txid=txid, format="pt2").content == download.content
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        got = torch.export.load(pruned).module()(x)  # no class file, any batch
    assert got.shape == (2, 10)
    assert float((got - expected).abs().max()) <= 1e-4 * float(expected.abs().max())

    onnx = get(server, "download", txid=txid, format="onnx").content
    session = onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert abs(out - expected.numpy()).max() <= 1e-4 * float(expected.abs().max())

    page = requests.get(status["report_url"], timeout=30)
    assert page.status_code == 200
    assert "Treated as code: a torch.export program (.pt2)" in page.text
    assert status["filename"] in page.text


def test_cli_and_client_prune_a_program(server, guide, tmp_path):
    from edgeai import Client

    _, path = guide
    env = {"EDGEAI_SERVER": server.url, "EDGEAI_CLIENT_ID": server.headers["X-IBM-Client-Id"],
           "EDGEAI_CLIENT_SECRET": server.headers["X-IBM-Client-Secret"],
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([str(BIN / "edgeai"), "prune", str(path), "-p", "0.5", "--round-to",
                          "8", "--param", "measure=false", "--json"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr
    status = json.loads(run.stdout)
    assert status["output"] == str(tmp_path / "net.pruned.pt2")
    program = torch.export.load(tmp_path / "net.pruned.pt2").module()
    assert program(torch.randn(2, 1, 28, 28)).shape == (2, 10)

    client = Client(server.url, server.headers["X-IBM-Client-Id"],
                    server.headers["X-IBM-Client-Secret"])
    job = client.prune(path, percent=0.25, measure=False)
    job.wait()
    assert job.report["layers"][0]["name"] == "conv1"
    assert job.download(tmp_path).suffix == ".pt2"
