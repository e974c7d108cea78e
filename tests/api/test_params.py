"""Parameter validation: every bad value is refused with a message saying what is allowed."""
from __future__ import annotations

import io

import pytest

H5 = b"\x89HDF\r\n\x1a\n" + b"\0" * 64


def tf_post(client, headers, query, files=None):
    data = files if files is not None else {"model": (io.BytesIO(H5), "mnist_base.h5")}
    return client.post(f"/api/tf_prune{query}", data=data, headers=headers,
                       content_type="multipart/form-data")


@pytest.mark.parametrize("raw", ["abc", "1.5", "-0.1", "nan", "inf", "40", "1", ""])
def test_bad_percent_is_refused_with_the_allowed_range(client, headers, raw):
    response = tf_post(client, headers, f"?percent={raw}")
    assert response.status_code == 400
    body = response.get_json()
    assert body["txid"] is None
    assert "[0, 1)" in body["message"]


def test_percent_40_suggests_the_fraction(client, headers):
    body = tf_post(client, headers, "?percent=40").get_json()
    assert "percent=0.4" in body["message"]


def test_missing_percent(client, headers):
    body = tf_post(client, headers, "").get_json()
    assert body == {"txid": None, "message": body["message"]}
    assert "percent is required" in body["message"]


@pytest.mark.parametrize("query", ["?percent=0", "?percent=0.4&ommitted=", "?percent=0.999",
                                   "?percent=0.4&ommitted=fc1,fc2", "?percent=0.4&omitted=fc1",
                                   "?percent=0.4&unprunable=dense_1"])
def test_good_parameters_are_accepted(client, headers, query):
    response = tf_post(client, headers, query)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["message"] == "Successfully submitted transaction."


def test_aliases_store_the_same_list(app, client, headers):
    from edgeai.db import Transaction

    txids = [tf_post(client, headers, f"?percent=0.4&{name}=fc1, fc2,fc1").get_json()["txid"]
             for name in ("ommitted", "omitted", "unprunable")]
    with app.extensions["edgeai.db"].session() as session:
        assert {tuple(session.get(Transaction, t).params["omitted"]) for t in txids} == {
            ("fc1", "fc2")}


def test_conflicting_aliases_are_refused(client, headers):
    body = tf_post(client, headers, "?percent=0.4&ommitted=a&omitted=b").get_json()
    assert "one parameter" in body["message"]


@pytest.mark.parametrize("name", ["a b", "x;rm", "../../etc", "a" * 300])
def test_malformed_layer_names_are_refused(client, headers, name):
    response = tf_post(client, headers, f"?percent=0.4&ommitted={name}")
    if name == "../../etc":  # dots and slashes are legal in layer names; it is only data
        assert response.status_code == 200
    else:
        assert response.status_code == 400
        assert "layer name" in response.get_json()["message"]


def test_missing_file(client, headers):
    response = tf_post(client, headers, "?percent=0.4", files={})
    assert response.status_code == 400
    assert "'model' is required" in response.get_json()["message"]


def test_empty_file(client, headers):
    response = tf_post(client, headers, "?percent=0.4",
                       files={"model": (io.BytesIO(b""), "m.h5")})
    assert response.status_code == 400
    assert "empty" in response.get_json()["message"]


@pytest.mark.parametrize("filename", ["model.pkl", "model", "model.h5.exe", "model.py"])
def test_wrong_extension(client, headers, filename):
    response = tf_post(client, headers, "?percent=0.4",
                       files={"model": (io.BytesIO(b"data"), filename)})
    assert response.status_code == 400
    message = response.get_json()["message"]
    assert ".h5, .hdf5, .keras, .zip" in message


def pt_files(**override):
    files = {"weights": (io.BytesIO(b"w"), "mnist_cnn.pth"),
             "class_def": (io.BytesIO(b"import torch\n"), "model.py"),
             "dataset": (io.BytesIO(b"d"), "train_loader.pth")}
    files.update(override)
    return {k: v for k, v in files.items() if v is not None}


@pytest.mark.parametrize("query, expected", [
    ("?percent=0.5&model_name=Net", "input_size is required"),
    ("?percent=0.5&input_size=1,x,28", "whole numbers"),
    ("?percent=0.5&input_size=0,28,28", "positive"),
    ("?percent=0.5&input_size=1,2,3,4,5", "1 to 4"),
    ("?percent=0.5&input_size=1,28,28&model_name=os.system", "model_name"),
    ("?percent=0.5&input_size=1,28,28&model_name=__import__", "model_name"),
    ("?percent=2&input_size=1,28,28", "[0, 1)"),
])
def test_pt_parameters_refused(client, headers, query, expected):
    response = client.post(f"/api/pt_prune{query}", data=pt_files(), headers=headers)
    assert response.status_code == 400
    assert expected in response.get_json()["message"]


@pytest.mark.parametrize("field, value, expected", [
    ("weights", None, "'weights' is required"),
    ("class_def", None, "'class_def' is required"),
    ("class_def", (io.BytesIO(b"x"), "model.txt"), "must be a .py file"),
    ("weights", (io.BytesIO(b"x"), "w.pkl"), ".pth, .pt, .bin, .safetensors"),
    ("dataset", (io.BytesIO(b""), "d.pth"), "empty"),
])
def test_pt_files_refused(client, headers, field, value, expected):
    response = client.post("/api/pt_prune?percent=0.5&input_size=1,28,28",
                           data=pt_files(**{field: value}), headers=headers)
    assert response.status_code == 400
    assert expected in response.get_json()["message"]


def test_pt_guide_query_is_accepted_without_dataset(client, headers):
    response = client.post(
        "/api/pt_prune?percent=0.5&ommitted=fc1,fc2&input_size=1,28,28&model_name=Net",
        data=pt_files(dataset=None), headers=headers)
    assert response.status_code == 200


def test_refused_submission_leaves_nothing_on_disk(app, client, headers, data_dir):
    tf_post(client, headers, "?percent=abc")
    tf_post(client, headers, "?percent=0.4", files={"model": (io.BytesIO(b""), "m.h5")})
    assert list((data_dir / "jobs").iterdir()) == []
    assert list((data_dir / "incoming").iterdir()) == []


def test_client_file_names_are_kept_as_bare_printable_text(app, client, headers):
    from edgeai.db import Transaction

    response = tf_post(client, headers, "?percent=0.4",
                       files={"model": (io.BytesIO(H5), "..\\..\\dir/evil\x00\x07.h5")})
    assert response.status_code == 200
    with app.extensions["edgeai.db"].session() as session:
        stored = session.get(Transaction, response.get_json()["txid"]).input_names["model"]
    assert stored == "evil.h5"


@pytest.mark.parametrize("query", ["?target=latency:0.5", "?target=latency:0.5&runtime=tflite",
                                   "?target=latency:0.4&runtime=keras&threads=1&batch_size=4",
                                   "?percent=0.4&runtime=onnxruntime&threads=2"])
def test_latency_targets_and_how_to_time_are_accepted(client, headers, query):
    response = tf_post(client, headers, query)
    assert response.status_code == 200, response.get_json()


@pytest.mark.parametrize("call, query, expected", [
    ("tf_prune", "?target=latency:0.5&runtime=tensorrt",
     "runtime='tensorrt' is not a runtime this call can time; allowed: keras, tflite, "
     "onnxruntime."),
    ("pt_prune", "?target=latency:0.5&input_size=1,28,28&runtime=tflite",
     "runtime='tflite' is not a runtime this call can time; allowed: torch, onnxruntime."),
    ("tf_prune", "?target=latency:0.5&threads=0", "threads='0' must be a whole number from 1"),
    ("tf_prune", "?target=latency:0.5&threads=many", "threads='many' must be a whole number"),
    ("tf_prune", "?target=latency:1.5", "latency:F with F the fraction of the original"),
    ("tf_prune", "?target=speed:0.5", "target must be params:F, macs:F or latency:F"),
    ("tf_prune", "?percent=0.4&measure=false&runtime=tflite",
     "runtime says how to time the models, but this job times nothing"),
    ("tf_prune", "?percent=0.4&target=latency:0.5", "Send one of percent, target or plan"),
])
def test_bad_latency_parameters_are_refused_saying_what_is_allowed(client, headers, call, query,
                                                                    expected):
    files = None if call == "tf_prune" else pt_files(dataset=None)
    response = client.post(f"/api/{call}{query}", headers=headers,
                           data=files if files is not None else
                           {"model": (io.BytesIO(H5), "mnist_base.h5")})
    assert response.status_code == 400
    assert expected in response.get_json()["message"]


def test_an_analysis_times_only_for_a_latency_target(client, headers):
    def analyze(query):
        data = {"model": (io.BytesIO(H5), "m.h5"), "dataset": (io.BytesIO(b"npz"), "d.npz")}
        return client.post(f"/api/tf_analyze{query}", data=data, headers=headers)

    assert analyze("?target=latency:0.5&runtime=tflite&batch_size=4").status_code == 200
    refused = analyze("?target=macs:0.5&runtime=tflite")
    assert refused.status_code == 400
    assert "an analysis times them only for target=latency:F" in refused.get_json()["message"]
