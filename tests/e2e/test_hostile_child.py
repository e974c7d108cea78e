"""The hostile child (issue 19): a job whose code runs tries every trick on what the
server takes back from it, through a real gunicorn, and the server loses and leaks nothing.

Every job here is submitted with the guide's ``pt_prune`` call and a class file that
passes the class-file check and then runs any Python as the job (the route is in
:mod:`tests.e2e.hostile_child`): it writes raw frames on its channel, shapes its own
disk, forks, threads, holds memory and names the server's files. Each test first
shows the trick is live (the job reports what it did, the server's own measurement
names it, or a control run does the damage where nothing stops it), then that:

- the server's files — the database (its inode, its keys, the victim's row), the
  report-signing secret, a planted secret in the data dir, another client's
  finished job and its artifacts — did not move, change or come back: nothing of
  them is in the attacker's status, report page or any download format;
- the job that tried ends with a clear reason (or done with its harmless part,
  where that is the right outcome), and what comes back is data: strict JSON, no
  control characters, bounded;
- the server still serves, and at the end restarts cleanly on the same data dir,
  also after a ``kill -9`` in the middle of a hostile job.

One server for the module, with the default settings but one: jobs get 1 GB of
memory (``EDGEAI_JOB_MEMORY_MB``) instead of 8, so that the memory tricks cross the
limit without taking a third of a shared test machine. Jobs that end at once are
submitted together and run two at a time.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from edgeai.pruning.progress import PHASES
from tests.e2e.guide import write_guide_pytorch_files
from tests.e2e.hostile_child import (
    PT_QUERY,
    RAW_CONTROL,
    assert_no_control,
    class_file,
    create_keys,
    strict_json,
    submit,
    trick_source,
)
from tests.e2e.server import BIN, LiveServer

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox's per-job uids, "
                                 "disks and views need the server to run as root here")]

JOB_MEMORY_MB = 1024
WAIT_SECONDS = 120
SEAT_UIDS = range(64000, 64064)


# -- what must never move, change or come back ----------------------------------------
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def middle(data: bytes) -> bytes:
    """64 bytes from the middle of a file: enough to recognise it anywhere."""
    return data[len(data) // 2:len(data) // 2 + 64]


def eventually(check, timeout: float = 10.0):
    """``check()`` once it is truthy, or its last (falsy) value after ``timeout`` seconds:
    what a job leaves is removed just after its end is written."""
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


def database_rows(path: Path, victim_txid: str) -> tuple[list, list]:
    """The key table and the victim's row, read without changing the file."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        assert connection.execute("PRAGMA quick_check").fetchone() == ("ok",)
        keys = connection.execute("SELECT client_id, name, secret_hash, created_at, revoked_at "
                                  "FROM api_keys ORDER BY client_id").fetchall()
        row = connection.execute("SELECT txid, owner, state, message, filename, report "
                                 "FROM transactions WHERE txid = ?", (victim_txid,)).fetchall()
        return keys, row
    finally:
        connection.close()


@dataclass
class Crown:
    """The server's files a job must never reach, as they were before the attacks."""

    data: Path
    victim_txid: str
    files: dict[Path, tuple[int, str]] = field(default_factory=dict)
    keys: list = field(default_factory=list)
    victim_row: list = field(default_factory=list)
    needles: dict[str, bytes] = field(default_factory=dict)

    def take(self, victim_headers: dict) -> Crown:
        database = self.data / "edgeai.sqlite3"
        result = sorted((self.data / "jobs" / self.victim_txid / "result").iterdir())
        assert result, "the victim's job left no artifact"
        for path in (self.data / "report-secret", self.data / "planted-secret.txt", *result):
            self.files[path] = (path.stat().st_ino, sha256(path))
        self.files[database] = (database.stat().st_ino, "")
        self.keys, self.victim_row = database_rows(database, self.victim_txid)
        self.needles = {
            "report secret": (self.data / "report-secret").read_bytes().strip(),
            "planted secret": (self.data / "planted-secret.txt").read_bytes(),
            "victim's client secret": victim_headers["X-IBM-Client-Secret"].encode(),
            "victim's client id": victim_headers["X-IBM-Client-Id"].encode(),
            "a SQLite file": b"SQLite format 3",
            **{f"the victim's {path.name}": middle(path.read_bytes()) for path in result},
            **{f"the key hash of {key[0]}": key[2].encode() for key in self.keys},
        }
        return self

    def assert_intact(self) -> None:
        """Every file in place (same inode, same bytes), the database whole, its keys
        and the victim's row unchanged."""
        for path, (inode, digest) in self.files.items():
            assert path.is_file() and not path.is_symlink(), f"{path} was moved or replaced"
            assert path.stat().st_ino == inode, f"{path} was replaced"
            if digest:
                assert sha256(path) == digest, f"{path} changed"
        keys, row = database_rows(self.data / "edgeai.sqlite3", self.victim_txid)
        assert keys[:len(self.keys)] == self.keys, "the API keys changed"
        assert row == self.victim_row, "the victim's transaction changed"

    def assert_not_in(self, returned: bytes, what: str) -> None:
        for name, needle in self.needles.items():
            assert needle not in returned, f"{name} came back in {what}"


# -- the module's server and its clients -----------------------------------------------
@dataclass
class World:
    """The module's server, its clients, the victim's earlier job and the crown."""

    server: LiveServer
    base: Path
    data: Path
    weights: Path
    victim: dict
    victim_txid: str
    victim_returned: bytes
    attackers: list[dict]
    crown: Crown
    count: int = 0
    owners: dict[str, dict] = field(default_factory=dict)

    def context(self, **extra) -> dict:
        return {"TOKEN": uuid.uuid4().hex[:8], "DATA_DIR": str(self.data), **extra}

    def submit(self, trick: str, headers: dict | None = None, query: dict | None = None,
               **context) -> tuple[str, dict]:
        """Submit ``trick`` as a job; return its txid and the context it got."""
        self.count += 1
        context = self.context(**context)
        headers = headers or self.attackers[self.count % len(self.attackers)]
        txid = submit(self.server, headers, class_file(trick, context), self.weights,
                      self.base / "jobs" / f"{self.count}", query)
        self.owners[txid] = headers
        return txid, context

    def headers_of(self, txid: str) -> dict:
        return self.victim if txid == self.victim_txid else self.owners[txid]

    def status(self, txid: str) -> dict:
        """GET /api/status as the job's client; anything but a 200 fails the test."""
        response = requests.get(f"{self.server.url}/api/status", params={"txid": txid},
                                headers=self.headers_of(txid), timeout=30)
        assert response.status_code == 200, \
            f"status of {txid} answered {response.status_code}: {response.text[:300]}"
        return response.json()

    def wait(self, txid: str, timeout: float = WAIT_SECONDS) -> dict:
        """Poll the status until the job ends; return its last body."""
        deadline = time.monotonic() + timeout
        while (status := self.status(txid))["status"] not in ("0", "-1"):
            assert time.monotonic() < deadline, f"job did not end in {timeout} s: {status}"
            time.sleep(0.2)
        return status

    def run(self, trick: str, **context) -> tuple[str, dict, dict]:
        """Submit ``trick`` and wait for its end: (txid, final status, context)."""
        txid, context = self.submit(trick, **context)
        return txid, self.wait(txid), context

    def returned(self, txid: str, headers: dict | None = None) -> bytes:
        """Everything a client gets back for ``txid``, checked as data on the way: the
        status (strict JSON, no control characters), the report page (no 500, no raw
        control characters) and every download format."""
        headers = headers or self.headers_of(txid)
        url = self.server.url
        response = requests.get(f"{url}/api/status", params={"txid": txid}, headers=headers,
                                timeout=30)
        assert response.status_code == 200, (response.status_code, response.text[:300])
        body = strict_json(response.text)
        assert_no_control(body, "the status")
        assert len(response.content) < 1 << 20, "the status is not bounded"
        returned = response.content
        if body.get("report_url"):
            page = requests.get(body["report_url"], timeout=30)
            assert page.status_code in (200, 404), (page.status_code, page.text[:300])
            assert not RAW_CONTROL.search(page.content), "control characters in the page"
            returned += page.content
        for fmt in ("model", "state_dict", "pt2"):
            download = requests.get(f"{url}/api/download", params={"txid": txid, "format": fmt},
                                    headers=headers, timeout=60)
            assert download.status_code in (200, 400, 409, 410), download.text[:300]
            returned += download.content
        return returned

    def assert_nothing_lost_or_leaked(self, *txids: str) -> None:
        """The crown intact, nothing of it in what ``txids`` return, the server serving."""
        self.crown.assert_intact()
        for txid in txids:
            self.crown.assert_not_in(self.returned(txid), f"what job {txid} returns")
        health = requests.get(f"{self.server.url}/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["ok"] is True
        assert eventually(lambda: not self.leftover_staging(*txids)), \
            f"staging folders left: {self.leftover_staging(*txids)}"

    def leftover_staging(self, *txids: str) -> list[Path]:
        """Staging folders of ended ``txids`` still on the server's disk."""
        return [path for txid in txids if (self.data / "jobs" / txid).is_dir()
                for path in (self.data / "jobs" / txid).iterdir()
                if path.name.startswith("staging")]

    def download(self, txid: str, fmt: str = "model") -> requests.Response:
        return requests.get(f"{self.server.url}/api/download",
                            params={"txid": txid, "format": fmt},
                            headers=self.headers_of(txid), timeout=60)


def everything_returned_by_victim(server: LiveServer, txid: str, headers: dict) -> bytes:
    """The victim's status (without the signed link, new on each call) and downloads."""
    status = requests.get(f"{server.url}/api/status", params={"txid": txid}, headers=headers,
                          timeout=30).json()
    status.pop("report_url", None)
    returned = json.dumps(status, sort_keys=True).encode()
    for fmt in ("model", "state_dict", "pt2"):
        returned += requests.get(f"{server.url}/api/download",
                                 params={"txid": txid, "format": fmt}, headers=headers,
                                 timeout=60).content
    return returned


def own_weights(weights: Path, path: Path) -> Path:
    """The guide's weights, changed: the victim's pruned model is its own, never the same
    bytes as an attacker's ordinary prune of the guide's weights."""
    import torch

    state = torch.load(weights, weights_only=True)
    generator = torch.Generator().manual_seed(19)
    torch.save({name: value + 0.01 * torch.randn(value.shape, generator=generator)
                for name, value in state.items()}, path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    """The server (defaults, 1 GB per job), a victim with a finished job, three attackers
    (a batch of jobs submitted at once stays under each one's quota of active jobs)."""
    base = tmp_path_factory.mktemp("hostile-child")
    data = base / "var"
    server = LiveServer(data, EDGEAI_JOB_MEMORY_MB=JOB_MEMORY_MB)
    with ThreadPoolExecutor(1) as pool:  # the server starts while torch writes the files
        starting = pool.submit(server.start, timeout=180)
        guide = write_guide_pytorch_files(base / "guide")
        victims_weights = own_weights(guide["weights"], base / "victim.pth")
        starting.result()
    try:
        (data / "planted-secret.txt").write_text(f"planted-{uuid.uuid4().hex}")
        victim, *attackers = create_keys(f"sqlite:///{data / 'edgeai.sqlite3'}", "victim",
                                         "attacker-1", "attacker-2", "attacker-3")
        with open(victims_weights, "rb") as weights, open(guide["class_def"], "rb") as net:
            response = requests.post(f"{server.url}/api/pt_prune", params=PT_QUERY,
                                     headers=victim, timeout=60,
                                     files={"weights": ("mnist_cnn.pth", weights),
                                            "class_def": ("model.py", net)})
        victim_txid = response.json()["txid"]
        assert server.wait(victim_txid, victim, WAIT_SECONDS)["status"] == "0"
        crown = Crown(data, victim_txid).take(victim)
        yield World(server, base, data, guide["weights"], victim, victim_txid,
                    everything_returned_by_victim(server, victim_txid, victim), attackers,
                    crown)
    finally:
        server.stop()


# -- looking at the host from outside ------------------------------------------------
@dataclass
class Task:
    pid: int
    tid: int
    uid: int
    cpus: str
    nice: int


def tasks_named(tag: str) -> list[Task]:
    """Every thread on the host whose name (comm) is ``tag``: a job names its own."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            base = f"/proc/{pid}/task/{tid}"
            try:
                if Path(f"{base}/comm").read_text().strip() != tag[:15]:
                    continue
                status = Path(f"{base}/status").read_text()
                stat = Path(f"{base}/stat").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if fields.get("State", "").split()[:1] == ["Z"]:
                continue
            found.append(Task(int(pid), int(tid), int(fields["Uid"].split()[0]),
                              fields["Cpus_allowed_list"].strip(),
                              int(stat.rsplit(")", 1)[1].split()[16])))
    return found


def wait_for_no_tasks(tag: str, timeout: float = 15) -> list[Task]:
    deadline = time.monotonic() + timeout
    while (left := tasks_named(tag)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def loop_devices_of(data: Path) -> list[str]:
    """Loop devices whose backing file lies in ``data`` (a job's disk still attached)."""
    found = []
    for entry in Path("/sys/block").glob("loop*"):
        try:
            backing = (entry / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing.startswith(str(data)):
            found.append(f"{entry.name}: {backing}")
    return found


def wait_for_progress(world: World, txid: str, check, timeout: float = 60) -> dict:
    """Poll the status until ``check(status)``; fail if the job ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = world.status(txid)
        if check(status):
            return status
        assert status["status"] not in ("0", "-1"), f"the job ended first: {status}"
        time.sleep(0.1)
    raise AssertionError(f"the job never reported as expected: {status}")


def sandbox_slots(world: World) -> list[str]:
    return sorted(os.listdir(world.data / "sandbox" / "slots"))


# -- the route itself ----------------------------------------------------------------
PROBE = '''
libc = ctypes.CDLL(None, use_errno=True)


def libc_errno(function, *args):
    return errno.errorcode[ctypes.get_errno()] if function(*args) == -1 else "ok"


def attempt():
    try:
        with open(os.path.join(DATA_DIR, "pwned-" + TOKEN), "w") as handle:
            handle.write(TOKEN)
        return "wrote into the data dir"
    except OSError as error:
        return errno.errorcode.get(error.errno, "?")


facts = {"data_dir_write": attempt()}
if not CONTROL:
    facts.update({
        "uid": os.getuid(), "pid": os.getpid(), "cpus": sorted(os.sched_getaffinity(0)),
        "data_dir_seen": os.path.exists(DATA_DIR),
        "memfd": errno_of(lambda: os.memfd_create("x")),
        "shmget": libc_errno(libc.shmget, 0, 1 << 20, 0o1600),
        "widen_cores": errno_of(lambda: os.sched_setaffinity(0, range(os.cpu_count()))),
        "raise_priority": errno_of(lambda: os.setpriority(os.PRIO_PROCESS, 0, 0)),
        "clear_death_signal": libc_errno(libc.prctl, 1, 0, 0, 0, 0),
        "write_input": errno_of(lambda: open("/job/inputs/weights.upload", "r+b")),
        "chmod_input": errno_of(lambda: os.chmod("/job/inputs/weights.upload", 0o666)),
        "link_input": errno_of(lambda: os.link("/job/inputs/weights.upload", "/job/w")),
    })
    fail("LIVE " + json.dumps(facts))
'''


def test_a_class_file_that_passes_the_check_runs_any_python(world, tmp_path):
    """The route is live: run here, unconfined, the class file writes into a data dir
    (the control); run as a job, the same code finds the data dir absent, and every
    widening of its share of the host (memfd, System V shm, cores, priority, the
    death signal) and every change to its inputs is refused."""
    control_dir = tmp_path / "control-data"
    control_dir.mkdir()
    context = {"TOKEN": "control", "DATA_DIR": str(control_dir), "CONTROL": True}
    exec(compile(class_file(PROBE, context), "model.py", "exec"), {"__name__": "control"})
    assert (control_dir / "pwned-control").read_text() == "control"

    txid, status, context = world.run(PROBE, CONTROL=False)
    assert status["status"] == "-1" and status["message"].startswith("LIVE "), status
    facts = json.loads(status["message"][5:])
    assert facts["data_dir_write"] == "ENOENT" and facts["data_dir_seen"] is False
    assert not (world.data / f"pwned-{context['TOKEN']}").exists()
    assert facts["uid"] in SEAT_UIDS and facts["pid"] == 1 and len(facts["cpus"]) == 1
    for call in ("memfd", "shmget", "widen_cores", "raise_priority", "clear_death_signal"):
        assert facts[call] == "EPERM", (call, facts)
    for change in ("write_input", "chmod_input", "link_input"):
        assert facts[change] != "ok", (change, facts)
    world.assert_nothing_lost_or_leaked(txid)


# -- the attacks issue 19 reported ------------------------------------------------------
SWAP_OUT = '''
os.rename("/job/out", "/job/out.real")
os.symlink(DATA_DIR, "/job/out")
# What the old supervisor read from the slot, naming the server's files.
for name in ("result.json", "out.real/result.json"):
    with open("/job/" + name, "w") as handle:
        json.dump({"ok": True, "artifact": "edgeai.sqlite3", "message": "old way",
                   "report": {"artifacts": {"model": "edgeai.sqlite3",
                                            "state_dict": "report-secret"}}}, handle)
from edgeai.sandbox.channel import ChannelWriter

tried = {}
for name in ("edgeai.sqlite3", "report-secret"):
    try:
        ChannelWriter().send_file("model", ".pt", "/job/out/" + name)
        tried[name] = "sent"
    except OSError as error:
        tried[name] = errno.errorcode.get(error.errno, "?")
done("LIVE out is a link to " + os.readlink("/job/out") + "; " + json.dumps(tried),
     report={"framework": "pytorch", "percent": 0.5,
             "artifacts": {"model": "edgeai.sqlite3", "state_dict": "../../report-secret",
                           "pt2": DATA_DIR + "/edgeai.sqlite3"}},
     files=[("state_dict", ".sqlite3", ("job's own bytes " + TOKEN).encode())])
'''

EXTRA_ARTIFACTS_THEN_FAIL = '''
os.rename("/job/out", "/job/out.real")
os.symlink(DATA_DIR, "/job/out")
send_file("model", ".pt", b"model")
send_file("state_dict", ".sqlite3", b"named like the database")
send_file("pt2", "-report-secret", b"named like the secret")
fail("LIVE handed over three files named like the server's, then failed")
'''


def test_an_output_folder_swapped_for_a_link_to_the_data_dir_hands_over_nothing(world):
    """The issue's first attack: ``out`` renamed and replaced by a link to the data dir,
    the database and the report secret named as artifacts (in the old result file and
    in the new result). The job is done with its own bytes only, under the server's
    names; the format it named but did not send has no file."""
    txid, status, context = world.run(SWAP_OUT)
    assert status["status"] == "0", status
    assert status["message"].startswith(f"LIVE out is a link to {world.data}; "), status
    tried = json.loads(status["message"].split("; ", 1)[1])
    assert tried == {"edgeai.sqlite3": "ENOENT", "report-secret": "ENOENT"}
    assert re.fullmatch(r"tmp\w+\.pt", status["filename"]), status["filename"]
    model = world.download(txid)
    assert model.content == f"attacker's model {context['TOKEN']}".encode()
    assert f'filename={status["filename"]}' in model.headers["Content-Disposition"]
    assert world.download(txid, "state_dict").content == \
        f"job's own bytes {context['TOKEN']}".encode()
    assert world.download(txid, "pt2").status_code == 409
    world.assert_nothing_lost_or_leaked(txid)


def test_server_files_named_as_extra_artifacts_of_a_failing_job_stay_where_they_are(world):
    """The issue's third attack: files named like the database and the secret handed
    over as extra artifacts, then a failure: nothing is published, nothing removed, the
    staging folder is gone."""
    txid, status, _ = world.run(EXTRA_ARTIFACTS_THEN_FAIL)
    assert status == {**status, "status": "-1", "message": "LIVE handed over three files "
                      "named like the server's, then failed"}
    assert world.download(txid).status_code == 409
    result = world.data / "jobs" / txid / "result"
    assert not result.exists() or not list(result.iterdir())
    world.assert_nothing_lost_or_leaked(txid)


DEEP_TREE = '''
def nest(root, depth):
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    made = 0
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
            made += 1
        os.symlink("/job", "loop", dir_fd=fd)
        os.fchmod(fd, 0)
    finally:
        os.close(fd)
    return made


made = nest("/job/out", 3000) + nest("/tmp", 200)
carry_on(f"LIVE made {made} nested folders")
'''


def test_a_tree_thousands_deep_in_the_jobs_disk_neither_fails_the_job_nor_stays(world):
    """The issue's second attack: folders 3,000 deep (with a link loop and no
    permissions at the bottom) in the job's disk, and more in its /tmp. The job's harmless part
    is done; its slot is gone afterwards (the restart test later starts on this data
    dir)."""
    txid, status, _ = world.run(DEEP_TREE)
    assert status["status"] == "0", status
    assert status["message"].startswith("LIVE made 3200 nested folders\n"), status["message"]
    assert "Total params" in status["message"]
    assert eventually(lambda: sandbox_slots(world) == [] and not loop_devices_of(world.data))
    world.assert_nothing_lost_or_leaked(txid)


# -- the job's share of the host -----------------------------------------------------
FILL_DISK = '''
# Most of the disk reserved at once (no bytes to write, so the test stays fast), then
# bytes written until the kernel refuses: the job's file system is full.
free = os.statvfs("/job").f_bavail * os.statvfs("/job").f_frsize
with open("/job/out/reserved", "wb") as handle:
    os.posix_fallocate(handle.fileno(), 0, max(0, free - (48 << 20)))
written, stopped_by = 0, "nothing"
block = b"\\xa5" * (4 << 20)
try:
    with open("/tmp/fill", "wb") as handle:
        while written < (64 << 30):
            handle.write(block)
            written += len(block)
except OSError as error:
    stopped_by = errno.errorcode.get(error.errno, "?")
carry_on(f"LIVE reserved {free >> 20} MB, wrote {written >> 20} MB more, then {stopped_by}")
'''


def test_writing_past_the_disk_bound_fails_naming_it_and_gives_the_disk_back(world):
    """A job fills its disk until the kernel refuses (ENOSPC), then goes on as if
    nothing happened: it fails naming EDGEAI_JOB_DISK_MB, and its disk is gone."""
    txid, status, _ = world.run(FILL_DISK)
    assert status["status"] == "-1", status
    assert status["message"].startswith("The job filled its "), status["message"]
    assert "EDGEAI_JOB_DISK_MB" in status["message"], status["message"]
    assert re.search(r"What the job said: LIVE reserved \d+ MB, wrote \d+ MB more, then "
                     "ENOSPC\n", status["message"]), status["message"]
    assert eventually(lambda: sandbox_slots(world) == [] and not loop_devices_of(world.data))
    world.assert_nothing_lost_or_leaked(txid)


FORKED_MEMORY = '''
import mmap

name_task(TOKEN)


def hog():
    block = bytearray(350 << 20)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    time.sleep(30)
    os._exit(0)


def fork_a_hog():
    if os.fork() == 0:
        hog()


threads = [threading.Thread(target=fork_a_hog) for _ in range(3)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
shared = mmap.mmap(-1, 300 << 20, mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
for offset in range(0, len(shared), 4096):
    shared[offset] = 1
time.sleep(20)
fail("LIVE held 3 x 350 MB in processes forked from threads and 300 MB shared, for 20 s")
'''

SOCKET_MEMORY = '''
import socket

name_task(TOKEN)
try:  # growing a socket's buffers is refused: each keeps the kernel's default
    socket.socketpair()[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    grown = "grown to 4 MB"
except OSError as error:
    grown = repr(error)
before = meminfo()


def hold():
    pairs = []
    for _ in range(240):  # within the 512 open files of a process
        sender, receiver = socket.socketpair()
        sender.setblocking(False)
        try:
            while True:
                sender.send(b"x" * 65536)
        except BlockingIOError:
            pass
        pairs.append((sender, receiver))
    time.sleep(30)
    os._exit(0)


for _ in range(8):
    if os.fork() == 0:
        hold()
time.sleep(5)
fail(f"LIVE buffers {grown}; 8 processes held 240 full socket pairs each for 5 s; the "
     f"host's available memory fell {before - meminfo()} MB")
'''


@pytest.mark.parametrize("trick", [FORKED_MEMORY, SOCKET_MEMORY],
                         ids=["forked-from-threads-and-shared", "socket-buffers"])
def test_memory_the_old_watchdog_missed_fails_the_job_naming_the_limit(world, trick):
    """Memory held where a watchdog of the main thread's children's RSS does not look:
    processes forked from other threads, shared anonymous memory, and kernel memory of
    socket buffers (in no process's RSS). The job holds 1.5 x its limit, for seconds
    (and says so if nothing stops it): it must fail naming EDGEAI_JOB_MEMORY_MB."""
    txid, status, context = world.run(trick, JOB_MEMORY_MB=JOB_MEMORY_MB)
    assert status["status"] == "-1", status
    assert "EDGEAI_JOB_MEMORY_MB" in status["message"], status["message"]
    assert not wait_for_no_tasks(context["TOKEN"])
    world.assert_nothing_lost_or_leaked(txid)


THREADS_AND_BUSY_CORES = '''
name_task(TOKEN)  # every thread and process started from here inherits the name
threading.stack_size(256 << 10)
stop = threading.Event()


def fork_a_spinner():
    if os.fork() == 0:
        while True:
            pass


def spin():
    while not stop.is_set():
        pass


for _ in range(2):  # every core it can get, busy: processes forked from threads, ...
    thread = threading.Thread(target=fork_a_spinner)
    thread.start()
    thread.join()
sleepers, refused = [], "no refusal"
while len(sleepers) < 1100:  # ... as many sleeping threads as its uid may start, ...
    wake = threading.Event()
    thread = threading.Thread(target=wake.wait, args=(120,), daemon=True)
    try:
        thread.start()
    except RuntimeError as error:
        refused = str(error)
        break
    sleepers.append((wake, thread))
for wake, thread in sleepers[-2:]:  # ... and busy threads in the last places
    wake.set()
    thread.join()
started = len(sleepers) - 2
for _ in range(2):
    threading.Thread(target=spin, daemon=True).start()
progress("pruning", started / 10000)
stop.wait(90)
fail(f"LIVE started {started} sleeping threads ({refused}) and ran busy ones for 90 s")
'''

SOME_THREADS = '''
import threading

results = []
threads = [threading.Thread(target=results.append, args=(n,)) for n in range(64)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
carry_on(f"LIVE started {len(results)} threads as uid {os.getuid()}")
'''


def test_a_thousand_sleeping_threads_and_busy_cores_leave_another_job_its_threads(world):
    """One job starts as many sleeping threads as its uid may (plus busy threads and
    processes forked from threads); while it holds them, another job starts 64 threads
    and prunes. The first job's every task is on its own uid, pinned to one core, at
    nice +10; the server answers at once beside it; cancelled, it leaves nothing."""
    hog, context = world.submit(THREADS_AND_BUSY_CORES)
    tag = context["TOKEN"]
    holding = wait_for_progress(world, hog, lambda s: (s.get("progress") or 0) >= 0.09)
    started = round(holding["progress"] * 10000)
    tasks = tasks_named(tag)
    assert len(tasks) >= started >= 900, (started, len(tasks))
    (uid,) = {task.uid for task in tasks}
    assert uid in SEAT_UIDS
    (cpus,) = {task.cpus for task in tasks}
    assert re.fullmatch(r"\d+", cpus), f"the job's tasks may run on cores {cpus}"
    server_nice = int(Path(f"/proc/{world.server.proc.pid}/stat").read_text()
                      .rsplit(")", 1)[1].split()[16])
    assert {task.nice for task in tasks} == {min(19, server_nice + 10)}
    slowest = 0.0
    for _ in range(5):  # the server still answers at once
        asked = time.monotonic()
        assert requests.get(f"{world.server.url}/healthz", timeout=30).ok
        world.status(world.victim_txid)
        slowest = max(slowest, time.monotonic() - asked)
    assert slowest < 2, f"/healthz and a status took {slowest:.1f} s beside the hog"

    other, _ = world.submit(SOME_THREADS, headers=world.victim)
    status = world.wait(other)
    assert status["status"] == "0", status
    assert status["message"].startswith("LIVE started 64 threads as uid "), status["message"]
    assert int(status["message"].split("uid ")[1].split()[0]) != uid
    assert world.status(hog)["status"] == "2", \
        "the hog ended before the other job was done: nothing was proven"

    cancel = requests.post(f"{world.server.url}/api/cancel", params={"txid": hog},
                           headers=world.headers_of(hog), timeout=30)
    assert cancel.status_code == 202, cancel.text
    assert world.wait(hog, 60)["message"] == "cancelled by the client"
    assert not wait_for_no_tasks(tag)
    world.assert_nothing_lost_or_leaked(hog, other)


LEFT_BEHIND = '''
name_task(TOKEN)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:  # a daemon holding the channel, stdin and stderr
        time.sleep(600)
    os._exit(0)
if WITH_RESULT:
    carry_on("LIVE left a daemon holding the pipes")
else:
    finish()
'''


@pytest.mark.parametrize("with_result", [True, False], ids=["then-a-result", "then-nothing"])
def test_processes_left_behind_holding_the_pipes_neither_hang_the_job_nor_outlive_it(
        world, with_result):
    """A daemon (forked twice, in its own session) keeps the job's channel and pipes
    open: the job still ends at once — done with its result, or failed without one —
    and the daemon is gone with it."""
    started = time.monotonic()
    txid, status, context = world.run(LEFT_BEHIND, WITH_RESULT=with_result)
    assert time.monotonic() - started < 60
    if with_result:
        assert status["status"] == "0", status
        assert status["message"].startswith("LIVE left a daemon holding the pipes\n")
    else:
        assert status["status"] == "-1", status
        assert "crashed (exit code 0)" in status["message"], status["message"]
    assert not wait_for_no_tasks(context["TOKEN"])
    world.assert_nothing_lost_or_leaked(txid)


PROGRESS_FLOOD = '''
hostile = [b'{"phase": "pruning", "progress": NaN}', b'{"phase": "pruning", "progress": 1e308}',
           b'{"phase": "pruning", "progress": -1}', b'{"phase": "\\\\u001b[2J", "progress": 0.5}',
           b'{"phase": "done", "progress": 1}', b'{"phase": "queued", "progress": 0}',
           b'{"phase": "pruning", "progress": true}', b'{"phase": "pruning", "progress": "0.5"}',
           b'{"phase": ["pruning"]}', b"[1, 2]", b"not json", b"\\xff\\xfe",
           b'{"phase": "pruning", "progress": 0.5, "pad": "' + b"x" * 460 + b'"}']
sent = 0
deadline = time.monotonic() + 2.5
while time.monotonic() < deadline:
    for body in hostile:
        frame(b"P", body)
        sent += 1
progress("verifying", 0.4242)
time.sleep(2.5)  # the marker is the latest for long enough to be written
carry_on(f"LIVE sent {sent} progress frames")
'''


def test_a_flood_of_hostile_progress_is_read_as_data_and_the_server_keeps_serving(world):
    """Seconds of progress frames as fast as the job can write them, most of them
    invalid (NaN, out of range, unknown phases, control characters, not JSON), then a
    valid marker: the status only ever shows a known phase and a fraction in [0, 1],
    shows the marker, and the server answers quickly throughout."""
    txid, context = world.submit(PROGRESS_FLOOD)
    headers = world.headers_of(txid)
    seen, slowest = [], 0.0
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        asked = time.monotonic()
        health = requests.get(f"{world.server.url}/healthz", timeout=30)
        response = requests.get(f"{world.server.url}/api/status", params={"txid": txid},
                                headers=headers, timeout=30)
        slowest = max(slowest, time.monotonic() - asked)
        assert health.status_code == 200 and response.status_code == 200
        body = strict_json(response.text)
        assert_no_control(body, "the status")
        seen.append((body.get("phase"), body.get("progress")))
        if body["status"] in ("0", "-1"):
            break
        time.sleep(0.1)
    assert body["status"] == "0", body
    sent = int(re.match(r"LIVE sent (\d+) progress frames\n", body["message"]).group(1))
    assert sent > 1000
    assert ("verifying", 0.4242) in seen, seen
    for phase, fraction in seen:
        assert phase is None or phase in PHASES, phase
        assert fraction is None or 0 <= fraction <= 1, fraction
    assert slowest < 3, f"a status and /healthz took {slowest:.1f} s during the flood"
    world.assert_nothing_lost_or_leaked(txid)


# -- the channel: every frame is the job's to write --------------------------------------
def bad_key(key) -> str:
    return f"send({{'type': 'file', 'key': {key!r}, 'suffix': '.pt'}}); frame(b'F', b'x')\n" \
           "finish()"


def bad_suffix(suffix) -> str:
    return f"send({{'type': 'file', 'key': 'model', 'suffix': {suffix!r}}}); " \
           "frame(b'F', b'x')\nfinish()"


KEY_REFUSED = "named a file with a key that is not allowed"
SUFFIX_REFUSED = "a suffix that is not allowed"
PROTOCOL = {
    "data-without-an-announcement": ("frame(b'F', b'x' * 10)\nfinish()",
                                     "sent data where a message was expected"),
    "an-unknown-frame-kind": ("frame(b'Z', b'{}')\nfinish()",
                              "sent data where a message was expected"),
    "a-second-ready": ("send({'type': 'ready', 'confinement': {'layers': {}, 'uid': 0}})\n"
                       "done('a second ready')", "unknown type ('ready')"),
    "key-dot-dot": (bad_key("../x"), KEY_REFUSED),
    "key-absolute": (bad_key("/etc/passwd"), KEY_REFUSED),
    "key-empty": (bad_key(""), KEY_REFUSED),
    "key-long": (bad_key("k" * 4096), KEY_REFUSED),
    "key-hidden": (bad_key(".hidden"), KEY_REFUSED),
    "key-control": (bad_key("model\x1b[31m\x00"), KEY_REFUSED),
    "key-not-a-string": (bad_key(7), KEY_REFUSED),
    "suffix-path": (bad_suffix("/../../edgeai.sqlite3"), SUFFIX_REFUSED),
    "suffix-dot-dot": (bad_suffix(".."), SUFFIX_REFUSED),
    "suffix-up-and-over": (bad_suffix("../report-secret"), SUFFIX_REFUSED),
    "suffix-slash": (bad_suffix(".pt/x"), SUFFIX_REFUSED),
    "suffix-empty": (bad_suffix(""), SUFFIX_REFUSED),
    "suffix-long": (bad_suffix("." + "a" * 300), SUFFIX_REFUSED),
    "suffix-control": (bad_suffix(".pt\n\x1b[2J"), SUFFIX_REFUSED),
    "suffix-nul": (bad_suffix(".pt\x00.sqlite3"), SUFFIX_REFUSED),
    "suffix-not-a-string": (bad_suffix(None), SUFFIX_REFUSED),
    "the-same-key-twice": ("send_file('model', '.pt', b'a')\nsend_file('model', '.pth', b'b')\n"
                           "done('x')", "sent file 'model' twice"),
    "two-keys-one-suffix-no-model": ("send_file('state_dict', '.pt', b'a')\n"
                                     "send_file('pt2', '.pt', b'b')\n"
                                     "send({'type': 'result', 'ok': True, 'report': {}})\n"
                                     "finish()", "did not produce its model file"),
    "seventeen-files": ("for n in range(17):\n    send_file(f'f{n}', f'.{n}', b'x')\ndone('x')",
                        "more than 16 files"),
    "a-file-bigger-than-the-disk": ("send({'type': 'file', 'key': 'model', 'suffix': '.pt'})\n"
                                    "frame(b'F', b'', length=1 << 40)\nfinish()",
                                    "sent files of more than"),
    "a-truncated-file": ("send({'type': 'file', 'key': 'model', 'suffix': '.pt'})\n"
                         "frame(b'F', b'x' * 10, length=1 << 20)\nfinish()", "ended early"),
    "a-truncated-message": ("frame(b'J', b'{\"type\": \"res', length=1000)\nfinish()",
                            "broke the sandbox's protocol|crashed"),
    "a-message-after-the-result": ("send_file('model', '.pt', b'm')\n"
                                   "send({'type': 'result', 'ok': True, 'report': {}})\n"
                                   "send({'type': 'file', 'key': 'pt2', 'suffix': '.x'})\n"
                                   "frame(b'F', b'late')\nfinish()",
                                   "kept sending after its result"),
    "a-progress-frame-too-big": ("frame(b'P', b'x' * 513)\nfinish()",
                                 "progress report of 513 bytes"),
    "a-message-too-big": ("frame(b'J', b'', length=(16 << 20) + 1)\nfinish()",
                          "sent a message of"),
    "a-length-of-2-to-the-64": ("frame(b'J', b'', length=(1 << 64) - 1)\nfinish()",
                                "sent a message of"),
    "json-nested-200000-deep": ("frame(b'J', b'[' * 200000 + b']' * 200000)\nfinish()",
                                "not JSON"),
    "json-not-an-object": ("send([1, 2, 3])\nfinish()", "unknown type"),
    "not-utf8": ("frame(b'J', b'\\xff\\xfe{}')\nfinish()", "not JSON"),
    "no-result-at-all": ("finish()", "crashed (exit code 0)"),
    "a-result-without-a-model": ("send({'type': 'result', 'ok': True, 'report': {}})\nfinish()",
                                 "did not produce its model file"),
    "a-crash-with-hostile-output": (
        "sys.stderr.write('E' * (1 << 20) + '\\x1b]0;pwned\\x07\\x00\\x9b2J' + "
        "'\\n\\x1b[31mlast line\\x07\\n')\nsys.stderr.flush()\nfinish(3)",
        "crashed (exit code 3)"),
    "a-failure-with-hostile-text": (
        "fail('\\x1b]0;pwned\\x07\\x00\\x9b2J' + 'E' * (1 << 20) + '\\x1b[0m')", "EEEE"),
}


@pytest.fixture(scope="module")
def protocol_jobs(world) -> dict[str, str]:
    """Every protocol case submitted at once (they end at once, two at a time)."""
    return {case: world.submit(trick)[0] for case, (trick, _) in PROTOCOL.items()}


@pytest.mark.parametrize("case", list(PROTOCOL))
def test_a_broken_protocol_fails_the_job_with_its_reason(world, protocol_jobs, case):
    """Each way of breaking the channel's protocol (frames out of order, a second ready,
    hostile keys and suffixes, too many or too large files, lengths that lie, a
    truncated stream, a message after the result, JSON that is not, crashes with
    hostile output) fails the job with a reason naming it, cleaned and bounded; nothing
    it sent is published or stays in staging."""
    txid = protocol_jobs[case]
    status = world.wait(txid)
    expected = PROTOCOL[case][1]
    assert status["status"] == "-1", status
    assert any(reason in status["message"] for reason in expected.split("|")), \
        status["message"][:500]
    assert len(status["message"]) < 4000
    assert world.download(txid).status_code == 409
    result = world.data / "jobs" / txid / "result"
    assert not result.exists() or not list(result.iterdir())
    world.assert_nothing_lost_or_leaked(txid)


def test_the_longest_suffix_a_job_may_give_fits_every_filename_column(world):
    """The longest suffix the channel takes (32 characters) on the server's stem: the job
    is done, its file name fits the 64 characters of the filename column (PostgreSQL's
    too), and the download is served under exactly that name."""
    txid, status, context = world.run("send_file('model', '-' + 'x' * 31, b'longest')\n"
                                      "send({'type': 'result', 'ok': True, 'message': "
                                      "'LIVE longest suffix', 'report': {}})\nfinish()")
    assert status["status"] == "0" and status["message"] == "LIVE longest suffix", status
    assert status["filename"].endswith("-" + "x" * 31) and len(status["filename"]) <= 64
    download = world.download(txid)
    assert download.content == b"longest"
    assert f'filename={status["filename"]}' in download.headers["Content-Disposition"]
    world.assert_nothing_lost_or_leaked(txid)


# -- the result and its report: data, checked before it is stored ------------------------
def hostile_report(report: str, message: str = "'LIVE report'") -> str:
    return f"done({message}, report={report})"


LAYER = ("{'name': 'conv1', 'type': 'Conv2d', 'channels_before': 32, 'channels_after': 16, "
         "'status': 'pruned'}")
HOSTILE_LAYER = LAYER.replace("'conv1'", "'conv1\\x1b[31m\\x00'")
REPORTS = {
    # case: (trick, "refused": the job must fail saying its report was refused;
    #        "clean": done or refused, but everything served is clean and bounded)
    "percent-as-millions-of-zeros": (
        hostile_report("{'framework': 'pytorch', 'percent': [0] * 5_000_000}"), "refused"),
    "a-hundred-thousand-layers": (
        hostile_report(f"{{'framework': 'pytorch', 'percent': 0.5, "
                       f"'layers': [{LAYER}] * 100_000}}"), "refused"),
    "nan-and-infinity": (
        hostile_report("{'framework': 'pytorch', 'percent': float('nan'), "
                       "'params_before': float('inf'), 'macs_after': -float('inf'), "
                       "'timings': {'load': float('nan')}}"), "refused"),
    "wrong-types": (
        hostile_report("{'framework': ['pytorch'], 'percent': 'fifty', 'layers': 'all', "
                       "'params_before': {'x': 1}, 'verification': 7, 'warnings': 'w'}"),
        "refused"),
    # The artifacts map is the server's own (the files it received, under its names):
    # whatever the job wrote there is replaced, never refused or used.
    "artifacts-not-a-map": (
        hostile_report("{'framework': 'pytorch', 'percent': 0.5, 'artifacts': 5}"), "clean"),
    "a-string-of-fifteen-megabytes": (
        hostile_report("{'framework': 'pytorch', 'percent': 0.5, "
                       "'warnings': ['W' * (15 << 20)]}"), "clean"),
    "nested-900-deep": (
        hostile_report("{'framework': 'pytorch', 'percent': 0.5, "
                       "'target': json.loads('{\"a\": ' * 900 + '1' + '}' * 900)}"), "clean"),
    "control-characters": (
        hostile_report("{'framework': 'pytorch\\x1b[2J', 'percent': 0.5, "
                       "'rule': '\\x00\\x07\\x9b31m', 'warnings': ['\\x1b]0;pwned\\x07'], "
                       "'layers': [" + HOSTILE_LAYER + "]}",
                       "'LIVE \\x00\\x1b[31mred\\x07 \\x9b2J \\x1b]8;;http://x\\x07link'"),
        "clean"),
    "artifacts-naming-server-files": (
        hostile_report("{'framework': 'pytorch', 'percent': 0.5, 'artifacts': {"
                       "'model': '../../edgeai.sqlite3', 'state_dict': DATA_DIR + "
                       "'/report-secret', '../../edgeai.sqlite3': 'report-secret', "
                       "'pt2': None}}"), "clean"),
    "a-forged-sandbox-section": (
        hostile_report("{'framework': 'pytorch', 'percent': 0.5, 'sandbox': {'uid': 0, "
                       "'layers': {}, 'bounds': 'none', 'mode': 'weak'}}"), "clean"),
    "a-message-of-fifteen-megabytes": (
        hostile_report("{'framework': 'pytorch', 'percent': 0.5}", "'M' * (15 << 20)"),
        "clean"),
}


@pytest.fixture(scope="module")
def report_jobs(world) -> dict[str, str]:
    """Every report case submitted at once."""
    return {case: world.submit(trick)[0] for case, (trick, _) in REPORTS.items()}


@pytest.mark.parametrize("case", list(REPORTS))
def test_a_hostile_report_is_refused_or_stored_clean_and_bounded(world, report_jobs, case):
    """A result whose report has the wrong shape — lists of millions, NaN and Infinity,
    wrong types, control characters, strings of megabytes, artifacts naming the
    server's files, a forged sandbox section — fails the job saying its report was
    refused, or (where only cleaning is needed) is stored clean: the status answers
    strict JSON at once and the report page opens, for this job and after it."""
    txid = report_jobs[case]
    expected = REPORTS[case][1]
    status = world.wait(txid)
    if expected == "refused" or status["status"] == "-1":
        assert status["status"] == "-1", status
        # Refused by the typed check, or, for millions of values, before it is even
        # parsed (the channel counts a message's values on its bytes).
        assert "report was refused" in status["message"] or \
            "sent a message of more than 400000 values" in status["message"], \
            status["message"][:500]
        assert world.download(txid).status_code == 409
    else:
        assert status["status"] == "0", status
        assert len(status["message"]) <= 70_000
        report = status["report"]
        assert set(report["artifacts"]) >= {"model"}
        for name in report["artifacts"].values():
            assert name is None or re.fullmatch(r"tmp\w+\.pt", name), report["artifacts"]
        assert report["sandbox"]["uid"] in SEAT_UIDS and report["sandbox"]["bounds"]
        for fmt in ("state_dict", "pt2"):
            assert world.download(txid, fmt).status_code in (400, 409)
    started = time.monotonic()
    world.assert_nothing_lost_or_leaked(txid)
    assert time.monotonic() - started < 20, "the status or the report page is slow"


def server_workers(server: LiveServer) -> list[int]:
    """The gunicorn workers' pids (the master's children), where the channel is read."""
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children")
    return [int(pid) for pid in children.read_text().split()]


def peak_rss_mb(pid: int, reset: bool = False) -> float:
    """The process's peak resident memory (VmHWM), MB; ``reset`` starts a new peak."""
    if reset:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise LookupError(pid)


MANY_SMALL_VALUES = '''
send_file("model", ".pt", b"model")
frame(b"J", b'{"type": "result", "ok": true, "message": "LIVE many small values", '
            b'"report": {"framework": "pytorch", "percent": 0.5, "x": ['
            + b"[]," * 5_000_000 + b"[]]}}")
finish()
'''


def test_a_result_of_millions_of_small_values_does_not_swell_the_server(world):
    """A result message under the 16 MB bound but holding five million empty lists: parsed
    in the server's own process, and again on each status read if it is stored, it must
    not cost the server (outside every job's memory limit) hundreds of megabytes."""
    workers = server_workers(world.server)
    before = {pid: peak_rss_mb(pid, reset=True) for pid in workers}
    txid, context = world.submit(MANY_SMALL_VALUES)
    status = world.wait(txid)
    for _ in range(3):
        world.status(txid)
    grown = {pid: round(peak_rss_mb(pid) - before[pid]) for pid in workers}
    assert status["status"] == "-1" or status["message"] == "LIVE many small values", status
    assert max(grown.values()) < 200, f"the server's workers grew by {grown} MB"
    world.assert_nothing_lost_or_leaked(txid)


# -- what clients do with the server's text ---------------------------------------------
def test_the_cli_prints_a_hostile_failure_without_control_characters(world, tmp_path):
    """``edgeai prune`` against the server, on a job that fails with terminal control
    sequences in its reason: exit code 1, the reason on stderr, no control character."""
    context = world.context()
    (tmp_path / "model.py").write_text(class_file(
        "fail('LIVE \\x1b[2J\\x1b]0;pwned\\x07 \\x9b31m\\x00 end')", context))
    headers = world.attackers[0]
    env = dict(os.environ, EDGEAI_CLIENT_ID=headers["X-IBM-Client-Id"],
               EDGEAI_CLIENT_SECRET=headers["X-IBM-Client-Secret"],
               XDG_CONFIG_HOME=str(tmp_path))
    done = subprocess.run(
        [str(BIN / "edgeai"), "prune", "--weights", str(world.weights), "--class-def",
         str(tmp_path / "model.py"), "--model-name", "Net", "--input-size", "1,28,28",
         "-p", "0.5", "--param", "measure=false", "--server", world.server.url],
        env=env, cwd=tmp_path, capture_output=True, timeout=WAIT_SECONDS)
    assert done.returncode == 1, done.stderr[-500:]
    assert b"LIVE" in done.stderr and b"end" in done.stderr
    assert not RAW_CONTROL.search(done.stdout + done.stderr.replace(b"\r", b"")), \
        (done.stdout + done.stderr)[-500:]


def test_the_python_client_never_writes_over_a_file_with_the_servers_name(world, tmp_path):
    """``Job.download(folder)`` where the folder already holds a file of the name the
    server gives: the user's file stays; the client refuses, or writes another name in
    that folder."""
    from edgeai.client import Client, ClientError

    txid, status, context = world.run("done('LIVE a download that meets a file')")
    assert status["status"] == "0", status
    headers = world.headers_of(txid)
    job = Client(world.server.url, headers["X-IBM-Client-Id"],
                 headers["X-IBM-Client-Secret"]).job(txid)
    precious = tmp_path / status["filename"]
    precious.write_bytes(b"the user's own file")
    try:
        written = job.download(tmp_path)
    except (ClientError, OSError):  # refusing is one right answer
        written = None
    assert precious.read_bytes() == b"the user's own file", "the client wrote over it"
    if written is not None:
        assert written.parent == tmp_path and written != precious
        assert written.read_bytes() == f"attacker's model {context['TOKEN']}".encode()


# -- afterwards: nothing lost, and a server that starts again ----------------------------
def test_after_every_trick_the_victims_job_and_the_servers_files_are_unchanged(world):
    """The victim's status and every download are byte for byte what they were, and no
    job left a slot, a loop device, a staging folder or a file in the data dir."""
    world.crown.assert_intact()
    assert everything_returned_by_victim(world.server, world.victim_txid, world.victim) == \
        world.victim_returned
    assert eventually(lambda: sandbox_slots(world) == [] and not loop_devices_of(world.data))
    quarantine = world.data / "quarantine"  # where what cannot be removed is moved
    assert not quarantine.exists() or not os.listdir(quarantine)
    assert not list(world.data.glob("pwned*"))
    jobs = [path.name for path in (world.data / "jobs").iterdir()]
    assert eventually(lambda: not world.leftover_staging(*jobs)), world.leftover_staging(*jobs)


def test_the_server_restarts_cleanly_on_the_same_data_dir(world):
    """Stopped and started again on the same data dir (after a tree 3,000 deep, a full
    disk and every other trick): /healthz answers, the victim's earlier job downloads
    the same bytes, the crown is intact. (The next test runs a job on it.)"""
    world.server.stop()
    world.server.start(timeout=180)
    assert requests.get(f"{world.server.url}/healthz", timeout=10).json()["ok"] is True
    assert everything_returned_by_victim(world.server, world.victim_txid, world.victim) == \
        world.victim_returned
    world.crown.assert_intact()


STAGED_THEN_SLEEPS = '''
name_task(TOKEN)
for key in ("state_dict", "pt2"):
    send_file(key, "." + key, os.urandom(4 << 20))
os.makedirs("/job/out/" + "d/" * 100)
progress("saving", 0.7777)
time.sleep(300)
fail("LIVE slept through")
'''


def test_a_server_killed_during_a_hostile_job_starts_again_and_cleans_up(world):
    """``kill -9`` of the whole server while a hostile job (on the restarted server of
    the test before) has handed over files and sleeps: started again on the same data
    dir it answers, nothing of the job still runs, the victim's job downloads the same
    bytes, and the dead run's slot and staging folder are removed."""
    txid, context = world.submit(STAGED_THEN_SLEEPS)
    wait_for_progress(world, txid, lambda s: s.get("progress") == 0.7777)
    staging = world.leftover_staging(txid)
    assert staging and any(path.stat().st_size for path in staging[0].iterdir())
    assert sandbox_slots(world)
    world.server.kill()
    world.server.log.close()
    assert not wait_for_no_tasks(context["TOKEN"]), "the job outlived the server"
    world.server.start(timeout=180)
    assert requests.get(f"{world.server.url}/healthz", timeout=10).json()["ok"] is True
    assert everything_returned_by_victim(world.server, world.victim_txid, world.victim) == \
        world.victim_returned
    world.crown.assert_intact()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (set(world.leftover_staging(txid)) & set(staging)
                                           or sandbox_slots(world)):
        time.sleep(0.5)
    assert sandbox_slots(world) == [] and not loop_devices_of(world.data)
    requests.post(f"{world.server.url}/api/cancel", params={"txid": txid},
                  headers=world.headers_of(txid), timeout=30)
    assert not set(world.leftover_staging(txid)) & set(staging), \
        f"the dead run's staging folder stayed: {staging}"


def test_every_trick_is_valid_python():
    """Every trick above is valid Python (a typo would pass as a refused job)."""
    tricks = [PROBE, SWAP_OUT, EXTRA_ARTIFACTS_THEN_FAIL, DEEP_TREE, FILL_DISK, FORKED_MEMORY,
              SOCKET_MEMORY, THREADS_AND_BUSY_CORES, SOME_THREADS, LEFT_BEHIND,
              PROGRESS_FLOOD, STAGED_THEN_SLEEPS, MANY_SMALL_VALUES,
              *(trick for trick, _ in PROTOCOL.values()),
              *(trick for trick, _ in REPORTS.values())]
    for trick in tricks:
        compile(trick_source(trick, {"TOKEN": "t", "DATA_DIR": "/d"}), "trick", "exec")

