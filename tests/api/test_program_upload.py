"""pt_prune and pt_analyze with a torch.export program (model=@net.pt2): the server reads
the program's input shape from the archive (zip and JSON, never torch) and refuses bad
uploads with a 400 that says what to send, before anything is stored."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from edgeai.db import Transaction
from tests.pruning.torch_engine.models import GUIDE_NET_SOURCE
from tests.pruning.torch_engine.programs import build, craft, save_program


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """.pt2 files a user might send, good and bad, by name."""
    folder = tmp_path_factory.mktemp("programs")
    net = build(GUIDE_NET_SOURCE)
    files = {"net": save_program(net, (1, 28, 28), folder / "net.pt2"),
             "dynamic": save_program(net, (1, 28, 28), folder / "dynamic.pt2", "dynamic")}

    class TwoInputs(torch.nn.Module):
        def forward(self, image, mask):
            return image * mask

    files["two_inputs"] = folder / "two.pt2"
    torch.export.save(torch.export.export(TwoInputs(), (torch.randn(1, 3), torch.randn(1, 3))),
                      files["two_inputs"])
    conv = torch.nn.Conv2d(3, 4, 3).eval()
    files["dynamic_height"] = folder / "height.pt2"
    torch.export.save(torch.export.export(
        conv, (torch.randn(1, 3, 16, 16),),
        dynamic_shapes=({2: torch.export.Dim("height", min=8, max=64)},)),
        files["dynamic_height"])
    files["integers"] = folder / "tokens.pt2"
    torch.export.save(torch.export.export(torch.nn.Embedding(10, 4).eval(),
                                          (torch.zeros(1, 5, dtype=torch.long),)),
                      files["integers"])
    files["pickled_weight"] = craft(files["net"], folder / "pickled.pt2", "pickled_weight",
                                    folder / "never-made")
    return files


def post(client, headers, query, files, call="pt_prune"):
    data = {role: (io.BytesIO(content), name) for role, (name, content) in files.items()}
    return client.post(f"/api/{call}{query}", data=data, headers=headers,
                       content_type="multipart/form-data")


def program(programs, name="net", as_name="net.pt2"):
    return {"model": (as_name, programs[name].read_bytes())}


def stored(app, txid):
    with app.extensions["edgeai.db"].session() as session:
        return session.get(Transaction, txid)


def test_a_program_is_accepted_and_its_input_size_read_from_it(app, client, headers, programs):
    response = post(client, headers, "?percent=0.5&ommitted=fc1", program(programs))
    assert response.status_code == 200, response.get_json()
    row = stored(app, response.get_json()["txid"])
    assert row.params["input_size"] == [1, 28, 28]
    assert row.params["model_name"] is None
    assert row.input_names == {"model": "net.pt2"}

    agreeing = post(client, headers, "?percent=0.5&input_size=1,28,28",
                    program(programs, "dynamic"))
    assert agreeing.status_code == 200, agreeing.get_json()


@pytest.mark.parametrize("name, query, expected", [
    ("net", "?percent=0.5&input_size=3,32,32",
     "input_size=3,32,32 does not match the program: its input 'x' is 1,28,28 without the "
     "batch dimension. Leave input_size out (the program carries it) or send "
     "input_size=1,28,28."),
    ("two_inputs", "?percent=0.5", "the program takes 2 inputs (image (tensor), mask (tensor)); "
                                   "edgeai prunes programs with one input tensor"),
    ("dynamic_height", "?percent=0.5", "dynamic sizes on dimension 2; only the batch "
                                       "(dimension 0) may be dynamic"),
    ("integers", "?percent=0.5", "is not a float32 tensor"),
    ("pickled_weight", "?percent=0.5", "stores 'conv1.weight' as a pickle, which would run "
                                       "code when loaded"),
    ("net", "?percent=0.5&model_name=Net", "Send either model (a .pt2 program) or weights and "
                                           "class_def with model_name, not both: got model "
                                           "and model_name"),
])
def test_bad_programs_are_refused_with_what_to_send(client, headers, programs, data_dir,
                                                    name, query, expected):
    response = post(client, headers, query, program(programs, name))
    assert response.status_code == 400
    body = response.get_json()
    assert body["txid"] is None and expected in body["message"], body
    assert body["message"].startswith(("model: ", "input_size=", "Send either"))
    assert list((data_dir / "jobs").iterdir()) == []


@pytest.mark.parametrize("content", [b"not a zip at all", b"PK\x03\x04" + b"\0" * 64,
                                     b"PK\x05\x06" + b"\0" * 18])
def test_a_file_that_is_not_a_program_is_a_400(client, headers, content):
    response = post(client, headers, "?percent=0.5", {"model": ("net.pt2", content)})
    assert response.status_code == 400
    assert "not a .pt2 archive" in response.get_json()["message"]


def test_a_zip_that_is_not_a_program_is_a_400(client, headers):
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/weights.bin", b"\0" * 16)
    response = post(client, headers, "?percent=0.5", {"model": ("net.pt2", buffer.getvalue())})
    assert response.status_code == 400
    assert "no archive_format 'pt2'" in response.get_json()["message"]


def test_a_program_and_a_class_file_together_are_a_400(client, headers, programs):
    files = {**program(programs), "weights": ("w.pth", b"w"), "class_def": ("m.py", b"x=1")}
    response = post(client, headers, "?percent=0.5", files)
    assert response.status_code == 400
    assert "got model and weights and class_def" in response.get_json()["message"]


def test_the_wrong_extension_names_the_formats(client, headers, programs):
    response = post(client, headers, "?percent=0.5", program(programs, as_name="net.onnx"))
    assert response.status_code == 400
    assert "'model' must be a .pt2 file" in response.get_json()["message"]


def test_neither_form_says_both(client, headers):
    response = post(client, headers, "?percent=0.5&input_size=1,28,28", {})
    message = response.get_json()["message"]
    assert response.status_code == 400
    assert "'weights' is required" in message and "'model' (.pt2)" in message


def test_an_analysis_takes_a_program_and_needs_a_dataset(app, client, headers, programs):
    refused = post(client, headers, "?target=macs:0.5", program(programs), call="pt_analyze")
    assert refused.status_code == 400
    assert "'dataset' is required" in refused.get_json()["message"]
    files = {**program(programs), "dataset": ("d.npz", b"PK\x05\x06" + b"\0" * 18)}
    response = post(client, headers, "?target=macs:0.5", files, call="pt_analyze")
    assert response.status_code == 200, response.get_json()
    assert stored(app, response.get_json()["txid"]).params["input_size"] == [1, 28, 28]


def test_swagger_documents_the_program_form(client):
    spec = client.get("/api/swagger.json").get_json()
    parameters = {p["name"]: p for p in spec["paths"]["/pt_prune"]["post"]["parameters"]}
    assert parameters["model"]["type"] == "file" and ".pt2" in parameters["model"]["description"]
    assert not parameters["weights"].get("required") and not parameters["input_size"].get(
        "required")
    assert "exported program" in spec["paths"]["/pt_prune"]["post"]["summary"]


def test_the_server_reads_a_program_without_importing_torch(data_dir, programs, tmp_path):
    """The API process checks a .pt2 with zipfile and json: torch is never imported."""
    code = textwrap.dedent(f"""
        import io, json, sys
        from edgeai import create_app
        from edgeai.auth import create_key
        app = create_app({{"data_dir": {str(data_dir)!r}, "run_jobs": False}})
        key = create_key(app.extensions["edgeai.db"], "t")
        headers = {{"X-IBM-Client-Id": key.client_id, "X-IBM-Client-Secret": key.client_secret}}
        answers = []
        for name in ("net", "two_inputs"):
            content = open({json.dumps({k: str(v) for k, v in programs.items()})}[name],
                           "rb").read()
            response = app.test_client().post(
                "/api/pt_prune?percent=0.5", headers=headers,
                data={{"model": (io.BytesIO(content), "net.pt2")}},
                content_type="multipart/form-data")
            answers.append(response.status_code)
        print(json.dumps([answers, sorted(m for m in ("torch", "tensorflow")
                                          if m in sys.modules)]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [[200, 400], []]
