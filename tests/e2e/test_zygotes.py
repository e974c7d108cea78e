"""The zygotes of a real gunicorn: one per framework for the whole server, started by
the master before its workers, forking every job's child; a job whose worker dies is
stopped at once, though the zygote that forked it lives on."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests

from edgeai.sandbox.seats import DEFAULT_UIDS, parse_uid_range, processes_of
from tests.e2e.guide import build_mnist_base, write_guide_pytorch_files
from tests.e2e.server import LiveServer

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0, reason="jobs drop to uids of their own "
                                 "only when the server runs as root")]

SLEEPER = '''
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)
        a = torch.randn(64, 64)
        while True:  # a job that never ends on its own
            a = torch.tanh(a @ a)
'''


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("zygotes")
    live = LiveServer(base / "var", workers=2).start()
    live.headers = live.create_key()
    live.base = base
    yield live
    live.stop()


def submit_pt(server: LiveServer, class_def: str | None = None) -> str:
    files = write_guide_pytorch_files(server.base / "user")
    source = class_def or files["class_def"].read_text()
    with open(files["weights"], "rb") as weights:
        response = requests.post(
            f"{server.url}/api/pt_prune",
            params={"percent": "0.5", "input_size": "1,28,28", "measure": "false"},
            headers=server.headers, timeout=60,
            files={"weights": ("mnist_cnn.pth", weights),
                   "class_def": ("model.py", source.encode())})
    assert response.status_code == 200, response.text
    return response.json()["txid"]


def test_one_zygote_per_framework_serves_every_worker(server):
    """The master's children are its two workers and one zygote per framework; jobs
    run by both workers were forked (by those zygotes: no worker has one of its own)."""
    master = server.proc.pid
    kids = children(master)
    zygotes = [pid for pid in kids if b"edgeai.sandbox.zygote" in cmdline(pid)]
    workers = [pid for pid in kids if pid not in zygotes]
    assert len(workers) == 2
    frameworks = sorted(next(f for f in ("tensorflow", "pytorch", "onnx")
                             if f.encode() in cmdline(pid)) for pid in zygotes)
    assert frameworks == ["onnx", "pytorch", "tensorflow"]
    model = build_mnist_base(server.base / "mnist_base.h5")
    txids = []
    for _ in range(4):  # claimed by whichever worker polls first: both, in the end
        with open(model, "rb") as handle:
            txids.append(requests.post(f"{server.url}/api/tf_prune",
                                       params={"percent": "0.4", "measure": "false"},
                                       headers=server.headers, timeout=60,
                                       files={"model": ("mnist_base.h5", handle)}).json()["txid"])
    txids.append(submit_pt(server))
    for txid in txids:
        body = server.wait(txid, server.headers)
        assert body["status"] == "0", body["message"]
        assert body["report"]["sandbox"]["forked"] is True
    for worker in workers:  # no worker started a zygote of its own
        assert not any(b"edgeai.sandbox.zygote" in cmdline(pid) for pid in children(worker))
    health = requests.get(f"{server.url}/healthz", timeout=10).json()
    assert all(z["shared"] and z["ready"] for z in health["zygotes"].values()), health


def test_a_job_whose_worker_dies_is_stopped_at_once(server):
    """A worker killed outright while its job runs: the job's child was forked by a zygote
    that lives on, yet every process of the job is gone within seconds (its stdin, held
    only by the worker, closed), and the server's next worker runs jobs as before."""
    uids = parse_uid_range(DEFAULT_UIDS)
    txid = submit_pt(server, SLEEPER)
    deadline = time.monotonic() + 60
    while not (running := [(uid, pids) for uid in uids if (pids := processes_of(uid))]):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.2)
    uid, pids = running[0]
    time.sleep(1)  # its worker holds its lease and its stdin now
    owner = next(worker for worker in children(server.proc.pid)
                 if b"edgeai.sandbox.zygote" not in cmdline(worker)
                 and _holds_seat(worker, uid))
    os.kill(owner, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while processes_of(uid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_of(uid) == [], "the job outlived its worker"
    assert server.status(txid, server.headers)["status"] in ("1", "2")  # re-queued later
    requests.post(f"{server.url}/api/cancel", params={"txid": txid}, headers=server.headers,
                  timeout=30)
    follow_up = submit_pt(server)
    body = server.wait(follow_up, server.headers, timeout=120)
    assert body["status"] == "0" and body["report"]["sandbox"]["forked"] is True


def _holds_seat(worker: int, uid: int) -> bool:
    """Whether the gunicorn worker ``worker`` holds the seat lock of ``uid``."""
    for fd in Path(f"/proc/{worker}/fd").iterdir():
        try:
            if os.readlink(fd).endswith(f"/seats/{uid}"):
                return True
        except OSError:
            pass
    return False
