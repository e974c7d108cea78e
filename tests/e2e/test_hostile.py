"""Hostile inputs against a real gunicorn: every case is refused or fails, nothing runs.

Each upload case ends in a refused request (4xx with the guide's
``{"txid": null, "message": ...}``) or a failed job whose reason names the
defence that stopped it — never a 5xx, a done job or a hang. Code-carrying
inputs would write a canary file the sandbox user could write; the canary
must not exist afterwards. Status/download cases end in a 4xx
``{"status": ..., "message": ...}``. One server (1 worker, 20 s job timeout,
3 GB job memory) serves the whole module; after the suite it must still run
the guide's PyTorch walk-through.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.conftest import reachable_tmp
from tests.e2e import hostile_files as hf
from tests.e2e.guide import GUIDE_NET_SOURCE, write_guide_pytorch_files
from tests.e2e.server import LiveServer

pytestmark = pytest.mark.e2e

JOB_TIMEOUT = 20
JOB_MEMORY_MB = 3072
WAIT_SECONDS = 180
PT_QUERY = {"percent": "0.5", "input_size": "1,28,28", "model_name": "Net"}
TF_QUERY = {"percent": "0.4"}


# -- fixtures ------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One gunicorn for the module, with a short job timeout and a 3 GB job memory cap."""
    base = tmp_path_factory.mktemp("hostile-server")
    live = LiveServer(base / "var", workers=1, EDGEAI_JOB_TIMEOUT=JOB_TIMEOUT,
                      EDGEAI_JOB_MEMORY_MB=JOB_MEMORY_MB, EDGEAI_MAX_JOBS_PER_CLIENT=200)
    live.start(timeout=180)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def headers(server):
    """A client key on the module's server."""
    return server.create_key("hostile")


@dataclass
class Kit:
    """Where hostile files are built, and the canary folder their code would write to."""

    root: Path
    canaries: Path
    _cache: dict = field(default_factory=dict)

    def canary(self, case_id: str) -> Path:
        """The canary file of one case (must never exist)."""
        return self.canaries / f"canary-{case_id}"

    def cached(self, key: str, build: Callable[[], bytes]) -> bytes:
        """Build an expensive input once per module."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def guide_weights(self) -> bytes:
        """The guide ``Net``'s valid state_dict."""
        return self.cached("guide_weights", hf.guide_state_dict_bytes)

    def plain_keras(self) -> bytes:
        """A harmless small ``.keras`` model."""
        return self.cached("plain_keras",
                           lambda: hf.write_plain_keras(self.root / "plain.keras").read_bytes())


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """The module's :class:`Kit` (canary folder world-writable and reachable)."""
    root = reachable_tmp(tmp_path_factory.mktemp("hostile-files"))
    return Kit(root=root, canaries=hf.make_canary_dir(root / "canaries"))


# -- upload cases ----------------------------------------------------------------

FileSpec = tuple[str, Callable[[Kit, Path], bytes]]  # (client file name, content builder)


@dataclass
class Upload:
    """One hostile submission.

    ``files`` overrides the endpoint's default (valid) files; ``expect`` is
    ``refused`` (4xx), ``failed`` (a failed job) or ``either``; ``reason`` must
    be found (case-insensitively) in the refusal or failure message.
    """

    id: str
    endpoint: str
    reason: str
    files: dict[str, FileSpec] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    expect: str = "failed"
    raw_names: bool = False


def _guide_class(kit: Kit, canary: Path) -> bytes:
    return GUIDE_NET_SOURCE.encode()


def _guide_weights(kit: Kit, canary: Path) -> bytes:
    return kit.guide_weights()


def _noise(kit: Kit, canary: Path) -> bytes:
    return hf.random_bytes()


def _empty(kit: Kit, canary: Path) -> bytes:
    return b""


def _pickle_bomb(kit: Kit, canary: Path) -> bytes:
    return hf.write_pickle_bomb(kit.root / f"{canary.name}.pth", canary).read_bytes()


def _legacy_pickle_bomb(kit: Kit, canary: Path) -> bytes:
    path = kit.root / f"{canary.name}.legacy.pth"
    return hf.write_pickle_bomb(path, canary, legacy=True).read_bytes()


def _npz_bomb(kit: Kit, canary: Path) -> bytes:
    return hf.write_npz_object_bomb(kit.root / f"{canary.name}.npz", canary).read_bytes()


def _lying_safetensors(kit: Kit, canary: Path) -> bytes:
    return hf.safetensors_lying_header()


def _raw_pickle_bomb(kit: Kit, canary: Path) -> bytes:
    return hf.write_raw_pickle_bomb(kit.root / f"{canary.name}.pkl", canary).read_bytes()


def _keras_lambda(suffix: str):
    def build(kit: Kit, canary: Path) -> bytes:
        return hf.write_keras_lambda(kit.root / f"{canary.name}{suffix}", canary).read_bytes()
    return build


def _keras_tampered(edit):
    def build(kit: Kit, canary: Path) -> bytes:
        source = kit.root / "plain.keras"
        kit.plain_keras()
        return hf.rewrite_keras_config(source, kit.root / f"{canary.name}.keras", edit) \
            .read_bytes()
    return build


def _zipped_lambda(kit: Kit, canary: Path) -> bytes:
    inner = hf.write_keras_lambda(kit.root / f"{canary.name}.keras", canary)
    path = kit.root / f"{canary.name}.zip"
    import zipfile
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(inner, "model.keras")
    return path.read_bytes()


def _zip_slip(kit: Kit, canary: Path) -> bytes:
    return hf.write_zip_slip(kit.root / f"{canary.name}.zip", canary).read_bytes()


def _zip_bomb(kit: Kit, canary: Path) -> bytes:
    return hf.write_zip_bomb(kit.root / f"{canary.name}.zip").read_bytes()


def _class_file(name: str):
    def build(kit: Kit, canary: Path) -> bytes:
        return hf.hostile_class_files(canary)[name].encode()
    return build


def _non_utf8_python(kit: Kit, canary: Path) -> bytes:
    return b"import torch\n# \xff\xfe\xfa not utf-8 \x80\x81\nclass Net: pass\n"


def _garbage_python(kit: Kit, canary: Path) -> bytes:
    return b"class Net(torch.nn.Module:\n    def (((\n\treturn ]]\n"


NOT_ALLOWED = r"not allowed"
UPLOADS = [
    # pickles that would run code when unpickled
    Upload("weights_pickle_reduce", "pt_prune", r"pickle",
           {"weights": ("mnist_cnn.pth", _pickle_bomb)}),
    Upload("weights_raw_pickle_reduce", "pt_prune", r"pickle|not a readable torch",
           {"weights": ("mnist_cnn.pt", _raw_pickle_bomb)}),
    Upload("weights_legacy_format_pickle_reduce", "pt_prune", r"pickle",
           {"weights": ("mnist_cnn.pth", _legacy_pickle_bomb)}),
    Upload("dataset_pickle_reduce", "pt_prune", r"pickle",
           {"dataset": ("train_loader.pth", _pickle_bomb)}),
    Upload("dataset_legacy_format_pickle_reduce", "pt_prune", r"pickle",
           {"dataset": ("train_loader.pth", _legacy_pickle_bomb)}),
    Upload("dataset_raw_pickle_reduce", "pt_prune", r"pickle|not a readable torch",
           {"dataset": ("train_loader.pth", _raw_pickle_bomb)}),
    Upload("dataset_npz_object_array", "pt_prune", r"npz|pickle",
           {"dataset": ("data.npz", _npz_bomb)}),
    Upload("safetensors_lying_header", "pt_prune", r"safetensors",
           {"weights": ("w.safetensors", _lying_safetensors)}),
    # Keras files carrying code or switching safety off
    Upload("keras_lambda", "tf_prune", r"Lambda",
           {"model": ("evil.keras", _keras_lambda(".keras"))}),
    Upload("h5_lambda", "tf_prune", r"Lambda", {"model": ("evil.h5", _keras_lambda(".h5"))}),
    Upload("zip_of_keras_lambda", "tf_prune", r"Lambda",
           {"model": ("evil.zip", _zipped_lambda)}),
    Upload("keras_config_os_system", "tf_prune", r"os\.system",
           {"model": ("evil.keras", _keras_tampered(hf.config_os_system))}),
    Upload("keras_config_safe_mode_false", "tf_prune", r"safe_mode",
           {"model": ("evil.keras", _keras_tampered(hf.config_unsafe_mode))}),
    # archives
    Upload("zip_slip", "tf_prune", r"outside", {"model": ("model.zip", _zip_slip)}),
    Upload("zip_bomb", "tf_prune", r"too much data", {"model": ("model.zip", _zip_bomb)}),
    # class files that reach the OS, files, or eat the machine
    *[Upload(f"class_{name}", "pt_prune", NOT_ALLOWED,
             {"class_def": ("model.py", _class_file(name))})
      for name in ("import_os", "from_os_import", "dunder_import", "torch_serialization_os",
                   "torch_C", "torch_ops", "getattr_torch", "builtins_open", "eval_string",
                   "subclasses_escape", "fork_bomb")],
    Upload("class_infinite_loop", "pt_prune", r"took longer|timeout",
           {"class_def": ("model.py", _class_file("infinite_loop"))}),
    Upload("class_memory_bomb_64gib", "pt_prune", r"memory",
           {"class_def": ("model.py", _class_file("memory_bomb"))}),
    Upload("class_non_utf8", "pt_prune", r"UTF-8", {"class_def": ("model.py", _non_utf8_python)}),
    Upload("class_garbage_python", "pt_prune", r"not valid Python",
           {"class_def": ("model.py", _garbage_python)}),
    # random bytes under every accepted extension
    Upload("noise_h5", "tf_prune", r"not a valid HDF5", {"model": ("m.h5", _noise)}),
    Upload("noise_keras", "tf_prune", r"not a valid Keras archive", {"model": ("m.keras", _noise)}),
    Upload("noise_zip", "tf_prune", r"not a valid zip", {"model": ("m.zip", _noise)}),
    Upload("noise_pth_weights", "pt_prune", r"not a readable torch\.save|pickled objects",
           {"weights": ("w.pth", _noise)}),
    Upload("noise_safetensors", "pt_prune", r"safetensors", {"weights": ("w.safetensors", _noise)}),
    Upload("noise_pth_dataset", "pt_prune", r"dataset", {"dataset": ("d.pth", _noise)}),
    Upload("noise_py", "pt_prune", r"UTF-8|not valid Python", {"class_def": ("model.py", _noise)}),
    # empty files
    *[Upload(f"empty_{role}_{suffix.strip('.')}", endpoint, r"empty",
             {role: (f"f{suffix}", _empty)}, expect="refused")
      for endpoint, role, suffix in (
          ("tf_prune", "model", ".h5"), ("tf_prune", "model", ".keras"),
          ("tf_prune", "model", ".zip"), ("pt_prune", "weights", ".pth"),
          ("pt_prune", "weights", ".safetensors"), ("pt_prune", "class_def", ".py"),
          ("pt_prune", "dataset", ".pth"))],
    # files of the wrong kind
    Upload("tf_model_as_py", "tf_prune", r"\.h5", {"model": ("model.py", _noise)},
           expect="refused"),
    Upload("pt_class_as_so", "pt_prune", r"\.py", {"class_def": ("evil.so", _noise)},
           expect="refused"),
    Upload("missing_model", "tf_prune", r"required", {"model": None}, expect="refused"),
    # malformed or out-of-range parameters
    *[Upload(f"percent_{label}", "tf_prune", r"percent", {"model": ("m.h5", _noise)},
             {"percent": value}, expect="refused")
      for label, value in (("abc", "abc"), ("1.5", "1.5"), ("-0.1", "-0.1"), ("nan", "nan"),
                           ("inf", "inf"), ("40", "40"), ("1", "1"), ("empty", ""),
                           ("huge_digits", "9" * 3000), ("huge_text", "x" * 3000))],
    Upload("percent_missing", "pt_prune", r"percent", query={"percent": None}, expect="refused"),
    Upload("input_size_zero", "pt_prune", r"input_size", query={"input_size": "0,0"},
           expect="refused"),
    Upload("input_size_negative", "pt_prune", r"input_size", query={"input_size": "1,-28,28"},
           expect="refused"),
    Upload("input_size_text", "pt_prune", r"input_size", query={"input_size": "a,b"},
           expect="refused"),
    Upload("input_size_huge", "pt_prune", r"input_size",
           query={"input_size": "65536,65536,65536"}, expect="refused"),
    Upload("input_size_many_dims", "pt_prune", r"input_size",
           query={"input_size": ",".join(["1"] * 500)}, expect="refused"),
    Upload("model_name_dunder_class", "pt_prune", r"model_name", query={"model_name": "__class__"},
           expect="refused"),
    Upload("model_name_dotted", "pt_prune", r"model_name", query={"model_name": "os.system"},
           expect="refused"),
    Upload("model_name_huge", "pt_prune", r"model_name|not defined",
           query={"model_name": "A" * 3000}, expect="either"),
    Upload("ommitted_huge", "tf_prune", r"ommitted", {"model": ("m.h5", _noise)},
           {"ommitted": "a" * 3000}, expect="refused"),
    Upload("ommitted_injection", "tf_prune", r"ommitted", {"model": ("m.h5", _noise)},
           {"ommitted": "fc1;rm -rf /,'\"<x>"}, expect="refused"),
    Upload("ommitted_conflicting_aliases", "tf_prune", r"ommitted", {"model": ("m.h5", _noise)},
           {"ommitted": "a", "omitted": "b"}, expect="refused"),
]
FILENAME_CASES = [
    Upload("name_dotdot_posix", "tf_prune", r"", {"model": ("../../evil_posix.h5", _noise)},
           expect="either", raw_names=True),
    Upload("name_absolute", "tf_prune", r"", {"model": ("/etc/passwd.h5", _noise)},
           expect="either", raw_names=True),
    Upload("name_dotdot_windows", "tf_prune", r"", {"model": ("..\\..\\evil_win.h5", _noise)},
           expect="either", raw_names=True),
    Upload("name_nul_byte", "tf_prune", r"", {"model": ("evil_nul\x00.h5", _noise)},
           expect="either", raw_names=True),
    Upload("name_nul_hides_extension", "tf_prune", r"", {"model": ("evil_sh.sh\x00.h5", _noise)},
           expect="either", raw_names=True),
    Upload("name_dotdot_class_def", "pt_prune", r"",
           {"class_def": ("../../../evil_module.py", _class_file("builtins_open"))},
           expect="either", raw_names=True),
]
HOSTILE_NAME_MARKERS = ("evil_", "passwd", "zipslip", "canary")


def _defaults(endpoint: str) -> dict[str, FileSpec]:
    if endpoint == "tf_prune":
        return {"model": ("model.keras", lambda kit, canary: kit.plain_keras())}
    return {"weights": ("mnist_cnn.pth", _guide_weights), "class_def": ("model.py", _guide_class)}


def _multipart(parts: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body with file names sent byte for byte (NUL, ``\\`` and all),
    which ``requests`` would escape."""
    boundary = uuid.uuid4().hex
    chunks = []
    for role, (name, content) in parts.items():
        chunks.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{role}\"; "
                      f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                      .encode("utf-8", "surrogateescape") + content + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def submit(server: LiveServer, headers: dict, kit: Kit, case: Upload) -> requests.Response:
    """POST ``case`` to its endpoint with the endpoint's valid defaults for anything not set."""
    canary = kit.canary(case.id)
    specs = {**_defaults(case.endpoint), **case.files}
    parts = {role: (name, build(kit, canary)) for role, spec in specs.items()
             if spec is not None for name, build in [spec]}
    query = {**(PT_QUERY if case.endpoint == "pt_prune" else TF_QUERY), **case.query}
    query = {k: v for k, v in query.items() if v is not None}
    url = f"{server.url}/api/{case.endpoint}"
    if case.raw_names:
        body, content_type = _multipart(parts)
        return requests.post(url, params=query, data=body, timeout=120,
                             headers={**headers, "Content-Type": content_type})
    return requests.post(url, params=query, files=parts, headers=headers, timeout=120)


def settle(server: LiveServer, headers: dict, response: requests.Response) -> tuple[str, str]:
    """Return ``("refused", message)`` or ``("failed", reason)``; fail on anything else."""
    assert response.status_code < 500, (response.status_code, response.text[:2000])
    body = response.json()
    if response.status_code >= 400:
        assert body.get("txid", "missing") is None, body
        assert isinstance(body.get("message"), str) and body["message"].strip(), body
        return "refused", body["message"]
    assert response.status_code == 200, response.text
    txid = body["txid"]
    final = server.wait(txid, headers, timeout=WAIT_SECONDS)
    assert final["status"] != "0", f"a hostile input was pruned: {final}"
    assert final["status"] == "-1", f"the job did not end in {WAIT_SECONDS} s: {final}"
    assert final["message"].strip(), final
    download = requests.get(f"{server.url}/api/download", params={"txid": txid},
                            headers=headers, timeout=30)
    assert download.status_code == 409, download.text[:500]
    assert set(download.json()) >= {"status", "message"}
    return "failed", final["message"]


def _check_outcome(case: Upload, outcome: str, message: str, kit: Kit) -> None:
    if case.expect != "either":
        assert outcome == case.expect, f"{outcome}: {message}"
    assert re.search(case.reason, message, re.IGNORECASE), f"{outcome}: {message}"
    assert not kit.canary(case.id).exists(), f"hostile code ran: {kit.canary(case.id)}"


# -- tests -----------------------------------------------------------------------

def test_canary_payloads_are_live(kit, tmp_path):
    """Control: the payloads really write their canary when loaded unsafely, so a
    missing canary in the suite means the server did not run them."""
    import pickle

    import keras
    import numpy as np
    import torch

    canary = kit.canaries / "control-pickle"
    torch.load(hf.write_pickle_bomb(tmp_path / "p.pth", canary), weights_only=False)
    assert canary.exists()
    canary.unlink()
    pickle.loads(hf.write_raw_pickle_bomb(tmp_path / "p.pkl", canary).read_bytes())
    assert canary.exists()
    canary.unlink()
    torch.load(hf.write_pickle_bomb(tmp_path / "legacy.pth", canary, legacy=True),
               weights_only=False)
    assert canary.exists()
    canary.unlink()
    with np.load(hf.write_npz_object_bomb(tmp_path / "o.npz", canary), allow_pickle=True) as z:
        z["x"]
    assert canary.exists()
    canary.unlink()
    canary = kit.canaries / "control-lambda"
    path = hf.write_keras_lambda(tmp_path / "l.keras", canary)
    assert not canary.exists()
    model = keras.saving.load_model(path, safe_mode=False)
    model(np.zeros((1, 8), "float32"))
    assert canary.exists()
    canary.unlink()


@pytest.mark.parametrize("case", UPLOADS, ids=lambda case: case.id)
def test_hostile_upload_is_refused_or_fails(server, headers, kit, case):
    """Each hostile upload is a 4xx or a failed job naming its defence; no code runs."""
    outcome, message = settle(server, headers, submit(server, headers, kit, case))
    _check_outcome(case, outcome, message, kit)


def _stored_input_names(data_dir: Path) -> list[str]:
    """Every client file name the server recorded (read from its SQLite file, read-only)."""
    import json
    import sqlite3

    uri = f"file:{data_dir / 'edgeai.sqlite3'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as connection:
        rows = connection.execute("SELECT input_names FROM transactions").fetchall()
    return [name for (names,) in rows for name in json.loads(names or "{}").values()]


@pytest.mark.parametrize("case", FILENAME_CASES, ids=lambda case: case.id)
def test_hostile_file_name_is_not_used_as_path(server, headers, kit, case):
    """Traversal and NUL bytes in upload names: refused or failed, and nothing lands
    where the name points."""
    outcome, message = settle(server, headers, submit(server, headers, kit, case))
    _check_outcome(case, outcome, message, kit)
    data = server.data_dir
    for stored in _stored_input_names(data):
        assert "/" not in stored and "\\" not in stored and stored not in ("", ".", ".."), stored
    for escaped in (Path("/etc/passwd.h5"), Path("/evil_posix.h5"), Path("/evil_win.h5"),
                    data.parent / "evil_posix.h5", data.parent.parent / "evil_posix.h5",
                    data / "evil_module.py", data.parent / "evil_module.py"):
        assert not escaped.exists(), escaped


OTHER_CLIENT = "other-client"
TXIDS = {
    "dotdot_etc_passwd": ("../../etc/passwd", False),
    "encoded_dotdot": ("%2e%2e%2f%2e%2e%2fetc%2fpasswd", True),
    "double_encoded_dotdot": ("%252e%252e%252fetc%252fpasswd", True),
    "absolute_path": ("/etc/passwd", False),
    "uuid_then_dotdot": (f"{uuid.UUID(int=0)}/../../../etc/passwd", False),
    "nul_byte": ("%00", True),
    "very_long": ("a" * 3500, False),
    "sql_quote": ("' OR '1'='1", False),
    "empty": ("", False),
    "unknown_uuid": (str(uuid.uuid4()), False),
    "other_clients_txid": (OTHER_CLIENT, False),
    "other_clients_txid_braced": ("{" + OTHER_CLIENT + "}", False),
}


@pytest.fixture(scope="module")
def other_clients_txid(server):
    """A txid that exists but belongs to another client."""
    other = server.create_key("someone-else")
    response = requests.post(f"{server.url}/api/tf_prune", params=TF_QUERY, headers=other,
                             files={"model": ("m.h5", hf.random_bytes())}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["txid"]


@pytest.mark.parametrize("route", ["status", "download"])
@pytest.mark.parametrize("label", list(TXIDS))
def test_hostile_txid_is_refused(server, headers, other_clients_txid, label, route):
    """Traversal, encodings, absurd lengths and other clients' ids: a 4xx with the guide's
    status/message body; nothing outside the caller's transactions is read."""
    raw, pre_encoded = TXIDS[label]
    raw = raw.replace(OTHER_CLIENT, other_clients_txid)
    url = f"{server.url}/api/{route}"
    if pre_encoded:
        response = requests.get(f"{url}?txid={raw}", headers=headers, timeout=30)
    else:
        response = requests.get(url, params={"txid": raw}, headers=headers, timeout=30)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    assert response.status_code in (400, 404)
    body = response.json()
    assert body["status"] == "-1" and body["message"].strip(), body
    assert "root:" not in response.text


def test_nothing_written_outside_transaction_folders(server, kit):
    """After every case: the data dir holds only the database, the report links' signing
    secret, ``jobs/<uuid>/{inputs,result}``
    with server-made names, sandbox/incoming scratch, the metrics files of the server's
    own workers; no hostile name anywhere around it; no canary anywhere."""
    data = server.data_dir
    input_name = re.compile(r"^(model|weights|class_def|dataset|plan)\.upload$")
    result_name = re.compile(r"^tmp[a-z0-9_]{8}\.[a-z0-9]+$")
    for path in hf.files_under(data):
        parts = path.relative_to(data).parts
        if len(parts) == 1:
            assert parts[0].startswith(("edgeai.sqlite3", ".migrate.lock", "report-secret")), path
            continue
        if parts[0] == "metrics":  # prometheus-client's files: gunicorn-<master>/<kind>_<pid>.db
            assert re.fullmatch(r"gunicorn-\d+-\d+", parts[1]) and \
                re.fullmatch(r"[a-z_]+_\d+\.db", parts[-1]) and len(parts) == 3, path
            continue
        assert parts[0] in ("jobs", "sandbox", "incoming"), path
        if parts[0] == "jobs":
            assert str(uuid.UUID(parts[1])) == parts[1] and len(parts) == 4, path
            assert (parts[2] == "inputs" and input_name.match(parts[3])) or \
                (parts[2] == "result" and result_name.match(parts[3])), path
    for root in (data.parent, data.parent.parent):
        for path in hf.files_under(root):
            hostile = any(marker in path.name for marker in HOSTILE_NAME_MARKERS)
            assert not hostile or path.is_relative_to(kit.root), path
    for escaped in ("/tmp/zipslip-canary", "/tmp/canary", "/canary", "/etc/passwd.h5",
                    "/evil_posix.h5", "/evil_win.h5", "/evil_module.py"):
        assert not Path(escaped).exists(), escaped
    assert sorted(p.name for p in kit.canaries.iterdir()) == [], "some hostile code ran"


def test_server_still_serves_the_guide_after_the_suite(server, headers, tmp_path):
    """The guide's PyTorch walk-through still completes on the same server."""
    files = write_guide_pytorch_files(tmp_path / "guide")
    handles = {role: open(path, "rb") for role, path in files.items()}
    try:
        response = requests.post(
            f"{server.url}/api/pt_prune",
            params={"percent": "0.5", "ommitted": "fc1,fc2", "input_size": "1,28,28",
                    "model_name": "Net"}, headers=headers, timeout=60,
            files={role: (path.name, handles[role]) for role, path in files.items()})
    finally:
        for handle in handles.values():
            handle.close()
    assert response.status_code == 200, response.text
    status = server.wait(response.json()["txid"], headers, timeout=WAIT_SECONDS)
    assert status["status"] == "0", status
    assert "Total params: 596,042" in status["message"]
