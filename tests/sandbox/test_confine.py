"""Each confinement layer built for real in a fresh interpreter, then attacked from inside.

Every case runs ``confine()`` in its own Python subprocess (the layers are
irreversible), then a body of attacks whose outcomes it prints as JSON; the test
asserts on those outcomes and on the host's files afterwards. Layers can be
skipped one at a time, so each wall is shown to stand on its own. Tests that
need a kernel feature skip with a reason naming it.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeai.sandbox import landlock, missing_walls

REPO = Path(__file__).resolve().parents[2]
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="building the view as another user needs "
                                                 "root here (CAP_SYS_ADMIN, CAP_SETUID)")
needs_landlock = pytest.mark.skipif(landlock.abi_version() < 4, reason="needs Landlock ABI 4+ "
                                    "(Linux 6.7+ with landlock in the lsm= boot list)")

PRELUDE = textwrap.dedent("""
    import ctypes, errno, json, os, socket, sys, threading
    from edgeai.sandbox.confine import confine
    spec = json.loads(sys.argv[1])
    report = confine(spec)
    results = {}

    def attempt(name, action):
        try:
            value = action()
            results[name] = "ok" if value is None else f"ok:{value!r}"[:200]
        except OSError as error:
            results[name] = f"denied:{errno.errorcode.get(error.errno, error.errno)}"

    def write(path, text="pwned"):
        with open(path, "w") as handle:
            handle.write(text)
""")


@pytest.fixture
def host(tmp_path):
    """A data dir with a secret (what a job must never see) and an empty slot."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "edgeai.sqlite3").write_text("the database")
    (data / "jobs").mkdir()
    (data / "jobs" / "other-upload").write_text("another client's model")
    slot = tmp_path / "slot"
    slot.mkdir(mode=0o700)
    if ROOT:
        os.chown(slot, 65534, 65534)
    return tmp_path


def confined(host: Path, body: str, skip: tuple[str, ...] = (), **spec) -> dict:
    """Run ``body`` after ``confine()`` in a fresh interpreter; return its report and results."""
    settings = {"parent_pid": os.getpid(), "job": {"folder": str(host / "slot")},
                "uid": 65534 if ROOT else None, "gid": 65534 if ROOT else None,
                "skip": list(skip), "hidden": [str(host / "data")], "tmpfs_mb": 16,
                "limits": {"memory_mb": 4096, "cpu_seconds": 120, "file_mb": 64,
                           "open_files": 256, "processes": 64}, **spec}
    program = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps({'report': report, " \
                                                "'results': results}))\n"
    done = subprocess.run([sys.executable, "-c", program, json.dumps(settings)],
                          capture_output=True, text=True, timeout=180, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def host_untouched(host: Path) -> None:
    """Nothing was written next to the data, and the data is as it was."""
    assert sorted(p.name for p in host.iterdir()) == ["data", "slot"]
    assert (host / "data" / "edgeai.sqlite3").read_text() == "the database"
    assert sorted(p.name for p in (host / "data").iterdir()) == ["edgeai.sqlite3", "jobs"]


@needs_root
def test_every_layer_is_in_force_on_this_machine(host):
    """The full sandbox builds here and each layer reads back as in force."""
    out = confined(host, "")
    layers = out["report"]["layers"]
    assert out["report"]["notes"] == {}
    assert all(layers.values()), layers
    assert layers["landlock"]["fs"] and layers["landlock"]["net"]
    assert out["report"]["uid"] == 65534
    assert missing_walls(layers) == []


@needs_root
def test_view_hides_the_server_and_allows_writes_only_in_the_slot(host):
    """Under the view alone (no Landlock, no seccomp), the data dir, the database, the
    repository and the host's /tmp do not exist; writes land only in the slot, which the
    job sees as /job."""
    out = confined(host, f"""
        data = {str(host / 'data')!r}
        attempt("read db", lambda: open(data + "/edgeai.sqlite3").read())
        attempt("list data", lambda: os.listdir(data))
        attempt("read other upload", lambda: open(data + "/jobs/other-upload").read())
        attempt("read beside the server", lambda: open({str(REPO / 'wsgi.py')!r}).read())
        attempt("list repo", lambda: sorted(os.listdir({str(REPO)!r})))
        attempt("write data", lambda: write(data + "/pwned"))
        attempt("write host folder", lambda: write({str(host / 'pwned')!r}))
        attempt("write /usr", lambda: write("/usr/pwned"))
        attempt("write interpreter", lambda: write(sys.prefix + "/pwned"))
        attempt("write slot", lambda: write('/job/ok'))
        attempt("write /tmp", lambda: write("/tmp/private"))
        attempt("read shadow", lambda: open("/etc/shadow").read())
    """, skip=("landlock", "seccomp"))
    assert out["report"]["layers"]["view"] is True
    results = out["results"]
    for name in ("read db", "list data", "read other upload", "read beside the server",
                 "write data", "write host folder", "read shadow"):
        assert results[name] == "denied:ENOENT", (name, results[name])
    assert results["list repo"] == f"ok:{sorted(['.venv', 'edgeai'])!r}" or \
        results["list repo"].startswith("ok:['edgeai'")
    assert results["write /usr"] == results["write interpreter"] == "denied:EROFS"
    assert results["write slot"] == results["write /tmp"] == "ok"
    assert (host / "slot" / "ok").stat().st_uid == 65534
    host_untouched(host)


@needs_root
@needs_landlock
def test_landlock_alone_walls_the_files_even_for_root(host):
    """Without the view (and so without the drop from root, since root's pyenv is
    unreachable for nobody here), Landlock alone still denies the data dir."""
    out = confined(host, f"""
        data = {str(host / 'data')!r}
        attempt("read db", lambda: open(data + "/edgeai.sqlite3").read())
        attempt("list data", lambda: os.listdir(data))
        attempt("write data", lambda: write(data + "/pwned"))
        attempt("write host", lambda: write({str(host / 'pwned')!r}))
        attempt("read beside the server", lambda: open({str(REPO / 'README.md')!r}).read())
        attempt("read /proc/1", lambda: open("/proc/1/cmdline").read())
        attempt("write slot", lambda: write({str(host / 'slot' / 'ok')!r}))
        import torch
        attempt("torch works", lambda: float(torch.ones(3).sum()))
    """, skip=("view", "pid", "seccomp"))
    layers = out["report"]["layers"]
    assert not layers["view"] and layers["landlock"]["fs"]
    results = out["results"]
    for name in ("read db", "list data", "write data", "write host", "read beside the server",
                 "read /proc/1"):
        assert results[name] == "denied:EACCES", (name, results[name])
    assert results["write slot"] == "ok" and results["torch works"] == "ok:3.0"
    assert missing_walls(layers) == [] or "identity" in missing_walls(layers)
    host_untouched(host)


@needs_root
def test_identity_is_nobody_without_capabilities(host):
    """uid/gid 65534, no groups, every capability set empty, no_new_privs; root cannot be
    regained and root-owned files are out of reach."""
    out = confined(host, """
        from edgeai.sandbox.confine import kernel_status
        status = kernel_status()
        results["ids"] = [os.getresuid(), os.getresgid(), os.getgroups()]
        results["caps"] = [status[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")]
        results["nnp"] = status["NoNewPrivs"]
        attempt("setuid 0", lambda: os.setuid(0))
        attempt("chown slot to root", lambda: os.chown("/job", 0, 0))
    """, skip=("landlock", "seccomp"))
    results = out["results"]
    assert results["ids"] == [[65534] * 3, [65534] * 3, []]
    assert set(results["caps"]) == {"0000000000000000"}
    assert results["nnp"] == "1"
    assert results["setuid 0"] == "denied:EPERM"
    assert results["chown slot to root"] == "denied:EPERM"


@needs_root
def test_pid_namespace_hides_the_server_and_its_processes(host):
    """The job is process 1 of its own tree: the server's pid cannot be signalled,
    traced or read in /proc, and /proc lists only the job's processes."""
    out = confined(host, f"""
        server = {os.getpid()}
        results["pid"] = os.getpid()
        results["procs"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        attempt("kill server", lambda: os.kill(server, 0))
        attempt("read server environ", lambda: open(f"/proc/{{server}}/environ").read())
    """, skip=("landlock", "seccomp"))
    results = out["results"]
    assert results["pid"] == 1 and results["procs"] == [1]
    assert results["kill server"] == "denied:ESRCH"
    assert results["read server environ"] == "denied:ENOENT"


@needs_root
def test_network_namespace_reaches_nothing_not_even_the_servers_loopback(host):
    """A TCP server listening on the host's 127.0.0.1 cannot be reached; only ``lo`` exists."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        out = confined(host, f"""
            results["interfaces"] = sorted(n for _, n in socket.if_nameindex())
            def connect():
                with socket.create_connection(("127.0.0.1", {port}), timeout=3):
                    pass
            attempt("connect server", connect)
        """, skip=("landlock", "seccomp"))
    assert out["results"]["interfaces"] == ["lo"]
    assert out["results"]["connect server"] in ("denied:ENETUNREACH", "denied:ECONNREFUSED")


@needs_root
def test_seccomp_alone_denies_the_calls_that_cross_walls(host):
    """With only the seccomp filter: ptrace, unshare, mount, setns, bpf, io_uring, keyctl
    and non-Unix sockets fail, and so do widening the job's cores, changing its priority,
    memory no RSS shows (memfd, System V) and leaving its death signal; ordinary work
    (threads, Unix sockets) goes on."""
    out = confined(host, """
        libc = ctypes.CDLL(None, use_errno=True)
        def call(fn, *args):
            def run():
                if fn(*args) == -1:
                    raise OSError(ctypes.get_errno(), "")
            return run
        attempt("ptrace traceme", call(libc.ptrace, 0, 0, 0, 0))
        attempt("unshare user", call(libc.unshare, 0x10000000))
        attempt("mount", call(libc.mount, b"none", b"/tmp", b"tmpfs", 0, None))
        attempt("io_uring_setup", call(libc.syscall, 425, 1, None))
        attempt("bpf", call(libc.syscall, 321, 0, None, 0))
        attempt("keyctl", call(libc.syscall, 250, 0, 0, 0, 0, 0))
        attempt("widen cores", lambda: os.sched_setaffinity(0, range(os.cpu_count())))
        attempt("raise priority", lambda: os.setpriority(os.PRIO_PROCESS, 0, -5))
        attempt("lower priority", lambda: os.setpriority(os.PRIO_PROCESS, 0, 15))
        attempt("memfd", lambda: os.memfd_create("hidden"))
        attempt("sysv shm", call(libc.shmget, 0, 1 << 20, 0o1600))
        attempt("clear death signal", call(libc.prctl, 1, 0, 0, 0, 0))
        pair = socket.socketpair()
        attempt("grow a socket buffer",
                lambda: pair[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20))
        attempt("grow a receive buffer",
                lambda: pair[1].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20))
        attempt("other socket options",
                lambda: pair[0].setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1))
        import fcntl
        pipe = os.pipe()
        attempt("grow a pipe", lambda: fcntl.fcntl(pipe[0], 1031, 1 << 20))
        attempt("other fcntl", lambda: fcntl.fcntl(pipe[0], fcntl.F_GETFL) * 0 or None)
        attempt("inet socket", lambda: socket.socket(socket.AF_INET).close())
        attempt("inet6 socket", lambda: socket.socket(socket.AF_INET6).close())
        attempt("unix socketpair", lambda: [s.close() for s in socket.socketpair()] and None)
        thread = threading.Thread(target=lambda: None)
        attempt("thread", lambda: (thread.start(), thread.join()) and None)
    """, skip=("view", "pid", "network", "identity", "landlock"))
    assert out["report"]["layers"]["seccomp"] is True
    results = out["results"]
    for name in ("ptrace traceme", "unshare user", "mount", "io_uring_setup", "bpf", "keyctl",
                 "widen cores", "raise priority", "lower priority", "memfd", "sysv shm",
                 "clear death signal", "grow a socket buffer", "grow a receive buffer",
                 "grow a pipe"):
        assert results[name] == "denied:EPERM", (name, results[name])
    assert results["inet socket"] == results["inet6 socket"] == "denied:EAFNOSUPPORT"
    assert results["unix socketpair"] == "ok" and results["thread"] == "ok"
    assert results["other socket options"] == results["other fcntl"] == "ok"


@needs_root
@needs_landlock
def test_threads_started_after_confinement_are_confined_too(host):
    """Layers are built while single-threaded, so a framework's later threads inherit them."""
    database = str(host / "data" / "edgeai.sqlite3")
    out = confined(host, f"""
        def from_thread():
            attempt("thread reads db", lambda: open({database!r}).read())
            attempt("thread writes host", lambda: write({str(host / 'pwned')!r}))
        worker = threading.Thread(target=from_thread)
        worker.start(); worker.join()
    """, skip=("view", "pid"))
    assert out["results"]["thread reads db"] == "denied:EACCES"
    assert out["results"]["thread writes host"] == "denied:EACCES"
    host_untouched(host)


def test_confinement_refuses_to_start_once_a_thread_runs(host):
    """A layer applied after threads exist would not bind them: confine() refuses."""
    program = textwrap.dedent(f"""
        import threading, time, json
        from edgeai.sandbox.confine import confine, ConfinementError
        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
        try:
            spec = {{"parent_pid": 0, "job": {{"folder": {str(host / 'slot')!r}}}}}
            confine({{**spec, "limits": {{}}}})
        except ConfinementError as error:
            print("refused:", error)
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.stdout.strip() == "refused: confinement must run before any thread starts", \
        done.stderr


@needs_root
def test_a_skipped_layer_is_reported_missing_with_its_reason(host):
    """The report says what is not in force, and missing_walls names the wall it leaves open."""
    out = confined(host, "", skip=("view", "landlock"))
    report = out["report"]
    assert report["layers"]["view"] is False and report["layers"]["landlock"] is False
    assert report["notes"]["view"] == report["notes"]["landlock"] == \
        "skipped (EDGEAI_SANDBOX_SKIP)"
    assert "files" in missing_walls(report["layers"])


@needs_root
def test_a_path_left_readable_is_caught_by_the_read_back(host):
    """``hidden`` is checked after confinement: a folder the view exposes is reported,
    and the view counts as missing (here: the interpreter's folder is declared hidden)."""
    out = confined(host, "", skip=("landlock",), hidden=[sys.prefix])
    report = out["report"]
    assert report["layers"]["view"] is False
    assert report["notes"]["view"].startswith("readable despite the confinement")


@needs_root
def test_the_job_is_pinned_to_its_cores(host):
    """``cpus`` pins the job and every thread it starts; it cannot widen them."""
    out = confined(host, """
        results["main"] = sorted(os.sched_getaffinity(0))
        seen = []
        thread = threading.Thread(target=lambda: seen.append(sorted(os.sched_getaffinity(0))))
        thread.start(); thread.join()
        results["thread"] = seen[0]
        attempt("widen", lambda: os.sched_setaffinity(0, range(os.cpu_count())))
    """, cpus=[0])
    assert out["report"]["cpus"] == [0]
    assert out["results"]["main"] == out["results"]["thread"] == [0]
    assert out["results"]["widen"] == "denied:EPERM"


needs_loop = pytest.mark.skipif(ROOT and __import__("edgeai.sandbox.disk", fromlist=["x"])
                                .loop_devices_usable() is not None,
                                reason="needs loop devices and mkfs.ext4")


@needs_root
@needs_loop
def test_the_jobs_disk_is_an_image_it_cannot_outgrow(host):
    """With ``{"image": ...}`` the job's /job and /tmp are a file system of a fixed size,
    mounted only in the job's namespace: writing past it fails with ENOSPC, the host's
    disk holds no more than the image, and the host never sees the mount."""
    from edgeai.sandbox.disk import allocated_bytes, make_image

    folder = os.open(host / "slot", os.O_RDONLY | os.O_DIRECTORY)
    image = make_image(folder, "disk.img", 16, 65534, 65534)
    os.close(folder)
    out = confined(host, """
        results["root"] = sorted(os.listdir("/job"))
        results["owner"] = os.stat("/job/out").st_uid
        def fill(path):
            with open(path, "wb") as handle:
                for _ in range(64):
                    handle.write(b"x" * (1 << 20))
        attempt("fill /job", lambda: fill("/job/out/big"))
        attempt("fill /tmp", lambda: fill("/tmp/more"))
        attempt("many files", lambda: [open(f"/job/f{i}", "w").close() for i in range(200_000)])
    """, job={"image": str(host / "slot" / "disk.img")})
    results = out["results"]
    assert out["report"]["disk"] == "image" and out["report"]["workdir"] == "/job"
    assert {"out", ".tmp"} <= set(results["root"]) and results["owner"] == 65534
    for name in ("fill /job", "fill /tmp", "many files"):
        assert results[name] == "denied:ENOSPC", (name, results[name])
    assert allocated_bytes(image) <= 17 << 20
    os.close(image)
    with open("/proc/self/mountinfo") as mounts:
        assert str(host) not in mounts.read()
    host_untouched(host)
