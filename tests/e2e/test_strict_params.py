"""Unknown parameters and form fields are refused, through a real gunicorn.

A request that silently dropped ``omited=dense`` would prune the layer the user
meant to keep. Every call refuses names it does not declare, with the guide's
error shape, the accepted names and the closest match; ``omitted`` is an alias
of the guide's ``ommitted``, equivalent to it; both at once with different values
is refused; the guide's own calls are unchanged.
"""
from __future__ import annotations

import uuid

import pytest
import requests

from tests.e2e.guide import build_mnist_base, write_guide_pytorch_files
from tests.e2e.server import LiveServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("strict")
    live = LiveServer(base / "var", workers=1).start()
    live.files = {"mnist": build_mnist_base(base / "mnist_base.h5"),
                  **write_guide_pytorch_files(base / "guide")}
    live.headers = live.create_key("strict")
    yield live
    live.stop()


def tf_submit(server, query, files=None):
    model = server.files["mnist"]
    with open(model, "rb") as handle:
        return requests.post(f"{server.url}/api/tf_prune{query}", headers=server.headers,
                             files=files or {"model": ("mnist_base.h5", handle)}, timeout=60)


def pt_submit(server, query, extra=None):
    handles = {role: open(server.files[role], "rb") for role in ("weights", "class_def")}
    files = {"weights": ("mnist_cnn.pth", handles["weights"]),
             "class_def": ("model.py", handles["class_def"]), **(extra or {})}
    try:
        return requests.post(f"{server.url}/api/pt_prune{query}", headers=server.headers,
                             files=files, timeout=60)
    finally:
        for handle in handles.values():
            handle.close()


@pytest.mark.parametrize("call, query, unknown, suggestion", [
    ("tf", "?percent=0.4&omited=dense", "omited", "ommitted"),
    ("tf", "?percent=0.4&percnt=0.5", "percnt", "percent"),
    ("tf", "?percent=0.4&epochs=3", "epochs", None),
    ("tf", "?percent=0.4&color=blue", "color", None),
    ("pt", "?percent=0.5&input_size=1,28,28&model_nme=Net", "model_nme", "model_name"),
    ("pt", "?percent=0.5&inputsize=1,28,28", "inputsize", "input_size"),
])
def test_unknown_query_parameters_are_refused_with_a_suggestion(server, call, query, unknown,
                                                              suggestion):
    response = (tf_submit if call == "tf" else pt_submit)(server, query)
    assert response.status_code == 400
    body = response.json()
    assert body["txid"] is None
    message = body["message"]
    assert message.startswith(f"unknown parameter {unknown!r}")
    if suggestion:
        assert f"did you mean {suggestion!r}?" in message
    assert "This call accepts the parameters: percent, ommitted, omitted, unprunable" in message


def test_unknown_form_fields_are_refused(server):
    with open(server.files["mnist"], "rb") as handle:
        response = tf_submit(server, "?percent=0.4", files={"modle": ("m.h5", handle)})
    assert response.status_code == 400
    assert response.json()["message"] == (
        "unknown form field 'modle'; did you mean 'model'? "
        "This call accepts the form fields: model, dataset, plan.")
    with open(server.files["dataset"], "rb") as handle:
        response = pt_submit(server, "?percent=0.5&input_size=1,28,28",
                             extra={"datasett": ("train_loader.pth", handle)})
    assert response.status_code == 400
    assert "did you mean 'dataset'?" in response.json()["message"]


def test_status_and_download_refuse_unknown_parameters(server):
    txid = str(uuid.uuid4())
    for path, query in (("status", {"txid": txid, "txdi": "x"}),
                        ("download", {"txid": txid, "fromat": "pt2"})):
        response = requests.get(f"{server.url}/api/{path}", params=query,
                                headers=server.headers, timeout=30)
        assert response.status_code == 400
        body = response.json()
        assert body["status"] == "-1" and "did you mean" in body["message"]


def test_omitted_is_an_alias_equivalent_to_ommitted(server):
    """Both spellings keep dense whole: same layer report, same file size."""
    reports = []
    for name in ("ommitted", "omitted"):
        response = tf_submit(server, f"?percent=0.4&{name}=dense")
        assert response.status_code == 200, response.text
        status = server.wait(response.json()["txid"], server.headers)
        assert status["status"] == "0", status
        reports.append(status["report"])
    for report in reports:
        rows = {row["name"]: row for row in report["layers"]}
        assert rows["dense"]["status"] == "omitted" and rows["dense"]["channels_after"] == 100
    assert reports[0]["params_after"] == reports[1]["params_after"]


def test_both_spellings_with_different_values_are_refused(server):
    response = tf_submit(server, "?percent=0.4&ommitted=dense&omitted=conv2d")
    assert response.status_code == 400
    assert "in one parameter" in response.json()["message"]
    response = tf_submit(server, "?percent=0.4&ommitted=dense&omitted=dense")
    assert response.status_code == 200


def test_the_guides_calls_are_unchanged(server):
    """The guide's curl lines, word for word (accept header, ommitted=, model_name)."""
    with open(server.files["mnist"], "rb") as handle:
        response = requests.post(f"{server.url}/api/tf_prune?percent=0.4&ommitted=",
                                 headers=dict(server.headers, accept="application/json"),
                                 files={"model": ("mnist_base.h5", handle)}, timeout=60)
    assert response.status_code == 200
    response = pt_submit(server, "?percent=0.5&ommitted=fc1,fc2&input_size=1,28,28"
                                 "&model_name=Net")
    assert response.status_code == 200
    status = server.wait(response.json()["txid"], server.headers)
    assert "Total params: 596,042" in status["message"]


def test_swagger_documents_every_parameter_with_type_range_and_default(server):
    spec = requests.get(f"{server.url}/api/swagger.json", timeout=30).json()
    params = {p["name"]: p for p in spec["paths"]["/tf_prune"]["post"]["parameters"]}
    assert params["percent"]["type"] == "number" and params["percent"]["minimum"] == 0
    # target= can stand in for percent, so the spec cannot mark it required; it says so.
    assert params["percent"]["maximum"] == 1 and not params["percent"].get("required", False)
    assert "Required unless target is given" in params["percent"]["description"]
    assert params["target"]["pattern"] and params["finetune_epochs"]["maximum"] == 50
    assert "omitted" in params and "unprunable" in params and "ommitted" in params
    pt = {p["name"]: p for p in spec["paths"]["/pt_prune"]["post"]["parameters"]}
    assert pt["model_name"]["default"] == "Net"
    assert pt["dataset"]["type"] == "file" and not pt["dataset"].get("required", False)
