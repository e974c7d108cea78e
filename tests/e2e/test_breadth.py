"""Breadth through the real service: many architectures at 0.4, downloaded and used.

Keras: the keras.applications families with weights=None. PyTorch: class files
written as a user would (torch only). Each: output shapes unchanged, parameters
down by at least a fifth, the file reloads and predicts (Keras) or loads as the
guide shows and trains one step (PyTorch).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import requests

from tests.e2e.server import LiveServer
from tests.pruning.torch_engine.models import BREADTH

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KERAS_FAMILIES = {
    "ResNet50": {}, "ResNet50V2": {}, "MobileNet": {}, "MobileNetV2": {},
    "MobileNetV3Small": {}, "DenseNet121": {}, "EfficientNetB0": {}, "EfficientNetV2B0": {},
    "InceptionV3": {}, "Xception": {}, "NASNetMobile": {},
    "ConvNeXtTiny": {}, "VGG16": {},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):

    base = tmp_path_factory.mktemp("breadth")
    live = LiveServer(base / "var", EDGEAI_MAX_JOBS_PER_CLIENT="50").start()
    live.headers = live.create_key()
    yield live
    live.stop()


def prune_keras(server, model, path):
    """Save ``model`` to ``path``, prune it at 0.4 through the service, and return the
    finished job's status (asserted done)."""
    model.save(path)
    with open(path, "rb") as handle:
        response = requests.post(f"{server.url}/api/tf_prune?percent=0.4&measure=false",
                                 headers=server.headers,
                                 files={"model": (path.name, handle)}, timeout=120)
    status = server.wait(response.json()["txid"], server.headers, timeout=600)
    assert status["status"] == "0", status["message"]
    return status


def fetch(server, txid, dest):
    response = requests.get(f"{server.url}/api/download", params={"txid": txid},
                            headers=server.headers, timeout=120)
    assert response.status_code == 200, response.text
    dest.write_bytes(response.content)
    return dest


@pytest.mark.parametrize("family", sorted(KERAS_FAMILIES))
def test_keras_family(server, tmp_path, family):
    import keras
    import numpy as np

    shape = KERAS_FAMILIES[family].get("input_shape", (96, 96, 3))
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, family)(weights=None, input_shape=shape, classes=10)
    status = prune_keras(server, model, tmp_path / f"{family}.keras")
    report = status["report"]
    assert report["params_after"] <= 0.8 * report["params_before"], report["params_after"]
    pruned = keras.saving.load_model(fetch(server, status["txid"], tmp_path / status["filename"]))
    x = np.random.rand(1, *shape).astype("float32")
    assert pruned.predict(x, verbose=0).shape == model.predict(x, verbose=0).shape == (1, 10)


@pytest.mark.parametrize("name", sorted(BREADTH))
def test_pytorch_architecture(server, tmp_path, name):
    import importlib.util

    import torch

    source, input_size = BREADTH[name]
    user = tmp_path / "user"
    user.mkdir()
    (user / "model.py").write_text(source)
    spec = importlib.util.spec_from_file_location(f"breadth_{name}", user / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    original = module.Net().eval()
    torch.save(original.state_dict(), user / "weights.pth")
    query = f"percent=0.4&measure=false&input_size={','.join(map(str, input_size))}&model_name=Net"
    with open(user / "weights.pth", "rb") as w, open(user / "model.py", "rb") as c:
        response = requests.post(f"{server.url}/api/pt_prune?{query}", headers=server.headers,
                                 files={"weights": ("weights.pth", w),
                                        "class_def": ("model.py", c)}, timeout=120)
    status = server.wait(response.json()["txid"], server.headers, timeout=600)
    assert status["status"] == "0", status["message"]
    report = status["report"]
    assert report["params_after"] <= 0.8 * report["params_before"], report["layers"]
    path = fetch(server, status["txid"], user / status["filename"])
    with torch.no_grad():
        expected = tuple(original(torch.randn(2, *input_size)).shape)
    check = textwrap.dedent(f"""
        import torch
        model, info = torch.load({str(path)!r}, weights_only=False)
        x = torch.randn(2, *{tuple(input_size)!r})
        model.train()
        optimizer = torch.optim.Adadelta(model.parameters())
        out = model(x)
        assert tuple(out.shape) == {expected!r}, out.shape
        out.float().pow(2).mean().backward()
        optimizer.step()
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", check], cwd=user, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


# Sequence models (issue 13): one recurrent model of each framework's zoo, through the
# service. The engine tests prune and check the whole zoo exactly.
def test_keras_bidirectional_lstm_tagger(server, tmp_path):
    import keras
    import numpy as np

    from tests.pruning.keras_engine.sequence_zoo import bilstm_tagger

    keras.utils.set_random_seed(0)
    model, shape = bilstm_tagger()
    status = prune_keras(server, model, tmp_path / "tagger.keras")
    report = status["report"]
    assert report["verification"]["exactness"]["passed"] is True
    assert report["params_after"] <= 0.8 * report["params_before"], report["layers"]
    assert {row["name"]: row["status"] for row in report["layers"]}["bilstm"] == "pruned"
    pruned = keras.saving.load_model(fetch(server, status["txid"], tmp_path / status["filename"]))
    x = np.random.rand(2, *shape).astype("float32")
    assert tuple(pruned(x).shape) == (2, 8, 4)  # eager: predict() would trace a graph


def test_pytorch_conv_lstm_keyword_spotter(server, tmp_path, monkeypatch):
    from tests.pruning.torch_engine.sequence_zoo import SEQUENCE

    monkeypatch.setitem(BREADTH, "kws_lstm", SEQUENCE["kws_lstm"])
    test_pytorch_architecture(server, tmp_path, "kws_lstm")
