"""The confined runner attacked directly: code no check stands in front of.

The real :class:`edgeai.sandbox.Sandbox` runs jobs whose "engine" is
``tests.sandbox.hostile_entry`` — it executes the job's ``class_def`` as plain
Python, so every attack here would also be refused by the class-file check, and
that check never runs. What the code gathers is handed back through the model
file, the message and the report. Each case asserts that nothing of the server
came back, nothing outside the job's slot changed, and the server's processes
are untouched. A second group sends class files that *pass* the check through
the real PyTorch engine, and a third runs the loaders of other untrusted files
(pickles, SavedModel graphs, Keras Lambda layers) with their checks bypassed.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from edgeai.pruning import PruneJob
from edgeai.sandbox import JobFailed, Limits, Sandbox
from edgeai.sandbox.seats import DEFAULT_UIDS, parse_uid_range, processes_of
from edgeai.sandbox.zygote import ZygotePool

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox's view and identity "
                                "drop need the server to run as root here")

SECRETS = {name: f"{name}-{uuid.uuid4().hex}" for name in
           ("database", "upload", "artifact", "tmp", "environ", "beside")}
JOB_UIDS = parse_uid_range(DEFAULT_UIDS)


@pytest.fixture(scope="module", autouse=True)
def zygotes():
    """One zygote per framework for the whole module, as one server process has."""
    pool = ZygotePool()
    Server.pool = pool
    yield pool
    pool.close()


class Server:
    """A data dir laid out as the service lays it out, with a secret in every place a job
    must not reach, and the sandbox the service would build for it."""

    pool: ZygotePool | None = None

    def __init__(self, root: Path, **sandbox):
        self.root = root
        self.data = root / "var"
        self.db = self.data / "edgeai.sqlite3"
        other = self.data / "jobs" / str(uuid.uuid4())
        self.upload = other / "inputs" / "weights.upload"
        self.artifact = other / "result" / "tmpearlier.h5"
        for path, secret in ((self.upload, "upload"), (self.artifact, "artifact")):
            path.parent.mkdir(parents=True)
            path.write_text(SECRETS[secret])
        with sqlite3.connect(self.db) as connection:
            connection.execute("create table keys (secret text)")
            connection.execute("insert into keys values (?)", (SECRETS["database"],))
        self.beside = root / "server.cfg"  # a file next to the server's data
        self.beside.write_text(SECRETS["beside"])
        handle, name = tempfile.mkstemp(prefix="edgeai-server-")
        os.write(handle, SECRETS["tmp"].encode())
        os.close(handle)
        self.tmp_file = Path(name)
        # Another process of the server's, with a secret in its environment.
        self.neighbour = subprocess.Popen(["sleep", "600"],
                                          env={"EDGEAI_PLANTED_SECRET": SECRETS["environ"]})
        settings = {"warm_spares": True, "zygotes": self.pool, "hidden": (str(self.data),),
                    "extra_read_only": (str(REPO / "tests"),),
                    "entry": "tests.sandbox.hostile_entry:run", **sandbox}
        self.sandbox = Sandbox(self.data / "sandbox",
                               Limits(timeout=120, memory_mb=4096, processes=64), **settings)
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, str]:
        """Every file under the root (but the sandbox's own folder), with a hash."""
        files = {}
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.is_relative_to(self.data / "sandbox"):
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        return files

    def options(self) -> dict:
        return {"db": str(self.db), "data": str(self.data), "upload": str(self.upload),
                "artifact": str(self.artifact), "beside": str(self.beside),
                "tmp": str(self.tmp_file), "server_pid": os.getpid(), "repo": str(REPO),
                "neighbour": self.neighbour.pid}

    def run(self, attack: str, tmp: Path, framework: str = "pytorch", **extra) -> str:
        """Run ``attack`` as the job's code; return every byte it got back to the client
        (``self.loot`` is what it gathered, when the job finished)."""
        self.loot: dict = {}
        code = tmp / f"attack-{uuid.uuid4().hex[:6]}.py"
        code.write_text(textwrap.dedent(attack))
        job = PruneJob(framework=framework, percent=0.5, omitted=(),
                       inputs={"class_def": str(code)}, input_names={"class_def": "model.py"},
                       output_dir="", output_stem="tmpattack0",
                       options={**self.options(), **extra})
        staging = tmp / f"staging-{uuid.uuid4().hex[:6]}"
        try:
            result = self.sandbox.run(job, staging, brings_code="a class file")
        except JobFailed as failure:
            returned = f"FAILED: {failure}"
        else:
            returned = result.message + json.dumps(result.report)
            try:
                self.loot = json.loads((staging / result.artifact).read_text())
            except (OSError, ValueError):
                self.loot = {}
            self.result = result
        for path in staging.glob("*") if staging.exists() else ():
            returned += path.read_bytes().decode(errors="replace")
        return returned

    def assert_contained(self, returned: str) -> None:
        """No secret came back, no file of the server changed, the sandbox left nothing."""
        for name, secret in SECRETS.items():
            assert secret not in returned, f"the job got the {name} secret back"
        assert self.snapshot() == self.before
        assert self.tmp_file.read_text() == SECRETS["tmp"]
        assert list((self.data / "sandbox" / "slots").iterdir()) == []

    def close(self) -> None:
        self.sandbox.close()
        self.tmp_file.unlink(missing_ok=True)
        self.neighbour.kill()
        self.neighbour.wait()


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path / "srv")
    yield server
    server.close()


READS = {
    "the database": "loot['x'] = open(options['db'], 'rb').read().decode(errors='replace')",
    "the database with sqlite3": """
        import sqlite3
        loot['x'] = sqlite3.connect(options['db']).execute('select * from keys').fetchall()""",
    "another client's upload": "loot['x'] = open(options['upload']).read()",
    "an earlier job's artifact": "loot['x'] = open(options['artifact']).read()",
    "a file beside the server": "loot['x'] = open(options['beside']).read()",
    "the server's temp dir": "loot['x'] = open(options['tmp']).read()",
    "the data dir's listing": "loot['x'] = __import__('os').listdir(options['data'])",
    "another process's environment":
        "loot['x'] = open(f\"/proc/{options['neighbour']}/environ\").read()",
    "the server's root through /proc": """
        loot['x'] = open(f"/proc/{options['server_pid']}/root{options['db']}", 'rb').read()""",
    "/proc/1 (the host's init)": "loot['x'] = open('/proc/1/environ').read()",
    "/etc/shadow": "loot['x'] = open('/etc/shadow').read()",
    "the repository": "loot['x'] = open(options['repo'] + '/wsgi.py').read()",
}
WRITES = {
    "open() in the data dir": "open(options['data'] + '/pwned', 'w').write('x')",
    "overwrite the database": "open(options['db'], 'wb').write(b'gone')",
    "sqlite3 drop table": """
        import sqlite3
        sqlite3.connect(options['db']).execute('drop table keys')""",
    "truncate the database": "__import__('os').truncate(options['db'], 0)",
    "delete the upload": "__import__('os').remove(options['upload'])",
    "rename the artifact": "__import__('os').rename(options['artifact'], '/tmp/stolen')",
    "a shell command": "__import__('os').system(f\"echo x > {options['data']}/pwned\")",
    "subprocess": """
        import subprocess
        subprocess.run(['cp', options['db'], options['data'] + '/copy'])""",
    "next to the server": "open(options['beside'], 'w').write('x')",
    "the host's /tmp": "open(options['tmp'], 'w').write('x')",
    "numpy tofile": """
        import numpy
        numpy.zeros(4).tofile(options['data'] + '/pwned.npy')""",
    "torch.save": """
        import torch
        torch.save(torch.zeros(2), options['data'] + '/pwned.pt')""",
}


def _attempts(code: str) -> str:
    """Wrap one attack so that its outcome, error included, becomes loot."""
    return "try:\n" + textwrap.indent(textwrap.dedent(code).strip(), "    ") + \
        "\nexcept Exception as error:\n    loot['error'] = repr(error)\n"


@pytest.mark.parametrize("target", list(READS))
def test_job_code_cannot_read_the_server(server, tmp_path, target):
    """Each read fails inside the job, and nothing of the server comes back to the client."""
    returned = server.run(_attempts(READS[target]), tmp_path)
    server.assert_contained(returned)
    assert "error" in returned


@pytest.mark.parametrize("target", list(WRITES))
def test_job_code_cannot_write_outside_its_slot(server, tmp_path, target):
    """Each write fails or lands only in the job's private view, which is then deleted."""
    returned = server.run(_attempts(WRITES[target]), tmp_path)
    server.assert_contained(returned)
    assert not Path("/tmp/stolen").exists()


def test_job_code_cannot_reach_the_servers_port(server, tmp_path):
    """A TCP connection to a port the server listens on fails, whatever the address."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        returned = server.run(_attempts("""
            import socket
            for host in ('127.0.0.1', 'localhost', '::1'):
                try:
                    socket.create_connection((host, options['port']), timeout=2)
                    loot[host] = 'connected'
                except OSError as error:
                    loot[host] = repr(error)
        """), tmp_path, port=port)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert "connected" not in returned
    server.assert_contained(returned)


def test_job_code_cannot_trace_or_signal_the_server(server, tmp_path):
    """ptrace of the server, kill(server), even kill(-1): nothing outside the job is hit, a
    process of the sandbox's own user outside the job survives, and the job's parent
    cannot be named."""
    canary = subprocess.Popen(["sleep", "120"], user=65534, group=65534)
    try:
        returned = server.run(_attempts("""
            import ctypes, os, signal
            libc = ctypes.CDLL(None, use_errno=True)
            loot['parent pid'] = os.getppid()
            for name, pid in (('server', options['server_pid']), ('canary', options['canary'])):
                loot['ptrace ' + name] = (libc.ptrace(16, pid, 0, 0), ctypes.get_errno())
                try:
                    os.kill(pid, signal.SIGKILL)
                    loot['kill ' + name] = 'sent'
                except OSError as error:
                    loot['kill ' + name] = repr(error)
            try:
                os.kill(-1, signal.SIGKILL)
                loot['kill -1'] = 'sent'
            except OSError as error:
                loot['kill -1'] = repr(error)
        """), tmp_path, canary=canary.pid)
        assert canary.poll() is None, "the job killed a process outside its sandbox"
        loot = server.loot
        assert loot["parent pid"] == 0  # outside its PID namespace: it cannot be named
        for name in ("server", "canary"):
            assert loot[f"ptrace {name}"][0] == -1
            assert loot[f"kill {name}"].startswith("ProcessLookupError")
        # Alone in its PID namespace, kill(-1) finds no process at all to signal.
        assert loot["kill -1"].startswith("ProcessLookupError")
    finally:
        canary.kill()
    server.assert_contained(returned)


def test_a_fork_bomb_is_bounded_and_leaves_nothing_behind(server, tmp_path):
    """Forking without end stops at the process limit of the job's own uid; when the job
    ends, every process it started is gone (the job is process 1 of its own namespace,
    and every process of its uid is killed)."""
    returned = server.run("""
        import os, time
        loot['uid'] = os.getuid()
        children = 0
        try:
            while children < 5000:
                if os.fork() == 0:
                    time.sleep(300)
                    os._exit(0)
                children += 1
        except OSError as error:
            loot['stopped'] = repr(error)
        loot['children'] = children
    """, tmp_path)
    server.assert_contained(returned)
    loot = server.loot
    assert loot["uid"] in JOB_UIDS
    assert loot["children"] < 64 and "Resource temporarily unavailable" in loot["stopped"]
    assert processes_of(loot["uid"]) == []


def test_namespaces_mounts_and_root_cannot_be_regained(server, tmp_path):
    """The classic ways out of a container fail: new namespaces, mounts, chroot, setuid(0),
    reopening the host's root through /proc."""
    returned = server.run(_attempts("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        for name, call in (('unshare user', lambda: libc.unshare(0x10000000)),
                           ('unshare mount', lambda: libc.unshare(0x00020000)),
                           ('mount', lambda: libc.mount(b'/', b'/tmp', None, 4096, None)),
                           ('chroot', lambda: libc.chroot(b'/tmp')),
                           ('setns', lambda: libc.setns(0, 0)),
                           ('setuid 0', lambda: libc.setuid(0))):
            loot[name] = call()
        for path in ('/proc/self/root/../../', '/proc/1/root/', '/proc/self/cwd/../../'):
            loot[path] = sorted(os.listdir(path))
    """), tmp_path)
    server.assert_contained(returned)
    loot = server.loot
    for name in ("unshare user", "unshare mount", "mount", "chroot", "setns", "setuid 0"):
        assert loot[name] == -1, (name, loot[name])
    for path in ("/proc/self/root/../../", "/proc/1/root/"):
        assert "var" not in loot[path] and "server.cfg" not in loot[path]


def test_outputs_that_point_elsewhere_are_not_collected(server, tmp_path):
    """An artifact that is a link to the database never reaches the client: the job can
    only send what it can read, and the database is not in its view."""
    returned = server.run("""
        import os
        artifact = 'tmpattack0.h5'
        os.symlink(options['db'], os.path.join(job.output_dir, artifact))
    """, tmp_path)
    assert returned.startswith("FAILED: Pruning failed: the pruning process crashed")
    server.assert_contained(returned)


def test_an_input_cannot_be_changed_or_linked_out(server, tmp_path):
    """The inputs linked into the slot are the server's stored uploads: read-only to the
    job, and refused as hard links into the outputs."""
    returned = server.run(_attempts("""
        import os
        source = job.inputs['class_def']
        try:
            open(source, 'a').write('tampered')
            loot['append'] = 'written'
        except OSError as error:
            loot['append'] = repr(error)
        artifact = 'tmpattack0.h5'
        os.link(source, os.path.join(job.output_dir, artifact))
    """), tmp_path)
    assert "written" not in returned
    server.assert_contained(returned)


def test_text_that_comes_back_is_bounded(server, tmp_path):
    """A status message of 5 MB reaches the client cut to 64 KiB; a result past 16 MB
    fails the job instead of filling the server's memory."""
    returned = server.run("message = 'x' * (5 << 20)", tmp_path)
    assert len(returned) < 200_000 and "more characters]" in returned
    returned = server.run("message = 'x' * (40 << 20)", tmp_path)
    assert returned.startswith("FAILED: Pruning failed: the job broke the sandbox's protocol: "
                               "sent a message of ")
    server.assert_contained(returned)


# -- class files that pass the check, through the real PyTorch engine --------------
PASSING_CLASS_FILES = {
    "read and list through datapipes": """
        import torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(4, 8)
                self.head = torch.nn.Linear(8, 2)
                loot = []
                for folder in [DATA, REPO]:
                    try:
                        loot.append(list(torch.utils.data.datapipes.iter.FileLister(root=folder)))
                    except Exception as error:
                        loot.append(repr(error))
                pipes = torch.utils.data.datapipes.iter
                for path in [DB, UPLOAD, ARTIFACT, BESIDE, TMP, ENVIRON]:
                    try:
                        for _, stream in pipes.FileOpener([path], mode="b"):
                            loot.append(stream.read())
                    except Exception as error:
                        loot.append(repr(error))
                self.register_buffer("loot", torch.tensor(list(repr(loot).encode())),
                                     persistent=False)

            def forward(self, x):
                return self.head(torch.relu(self.fc(x)))
        """,
    "write with numpy's tofile and dump": """
        import torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(4, 2)
                torch.zeros(4).numpy().tofile(DATA + "/pwned")
                torch.zeros(4).numpy().dump(DB)
        """,
    "read into the error message": """
        import torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                for _, stream in torch.utils.data.datapipes.iter.FileOpener([DB], mode="b"):
                    raise ValueError(stream.read())
        """,
}


# What shows, inside the sandbox, that the attack really ran (and failed).
RAN_AND_FAILED = {
    "read and list through datapipes": "FileNotFoundError",
    "write with numpy's tofile and dump": "Net() failed: FileNotFoundError",
    "read into the error message": "Net() failed: FileNotFoundError",
}


def _class_file(server: Server, attack: str) -> str:
    values = {"DATA": server.data, "REPO": REPO, "DB": server.db, "UPLOAD": server.upload,
              "ARTIFACT": server.artifact, "BESIDE": server.beside, "TMP": server.tmp_file,
              "ENVIRON": f"/proc/{server.neighbour.pid}/environ"}
    source = textwrap.dedent(PASSING_CLASS_FILES[attack])
    for name, value in values.items():
        source = source.replace(name, repr(str(value)))
    return source


@pytest.mark.parametrize("attack", list(PASSING_CLASS_FILES))
def test_class_files_that_pass_the_check_are_contained(tmp_path, monkeypatch, attack):
    """The real engine loads a class file the check lets through; its reads and writes
    fail, and neither the model file nor the message carries anything of the server."""
    import torch

    from edgeai.pruning.torch_engine.classfile import check_class_file

    server = Server(tmp_path / "srv", entry=None)
    try:
        source = _class_file(server, attack)
        check_class_file(source)  # the check lets it through: only the walls stand
        class_def = tmp_path / "model.py"
        class_def.write_text(source)
        weights = tmp_path / "weights.pth"
        torch.save({"fc.weight": torch.randn(8, 4), "fc.bias": torch.zeros(8),
                    "head.weight": torch.randn(2, 8), "head.bias": torch.zeros(2)}, weights)
        job = PruneJob(framework="pytorch", percent=0.5, omitted=(),
                       inputs={"class_def": str(class_def), "weights": str(weights)},
                       input_names={"class_def": "model.py", "weights": "weights.pth"},
                       output_dir="", output_stem="tmppassing",
                       options={"input_size": [4], "model_name": "Net"})
        staging = tmp_path / "staging"
        try:
            result = server.sandbox.run(job, staging, brings_code="a class file")
            returned = result.message + json.dumps(result.report)
        except JobFailed as failure:
            returned = str(failure)
        for path in staging.glob("*") if staging.exists() else ():
            returned += path.read_bytes().decode("latin-1")
            if path.suffix == ".pt":  # loaded as the guide says, next to the class file
                monkeypatch.syspath_prepend(str(tmp_path))
                monkeypatch.delitem(sys.modules, "model", raising=False)
                model, _ = torch.load(path, weights_only=False)
                if hasattr(model, "loot"):
                    returned += bytes(model.loot.tolist()).decode(errors="replace")
        server.assert_contained(returned)
        assert RAN_AND_FAILED[attack] in returned
    finally:
        server.close()


@pytest.mark.parametrize("attack", list(PASSING_CLASS_FILES))
def test_control_the_passing_class_files_do_harm_without_the_sandbox(tmp_path, attack):
    """Control: the same class files, built in this (unconfined) process, do read the
    server's secrets or write its files, so the test above would see a breach."""
    server = Server(tmp_path / "srv")
    try:
        namespace: dict = {}
        exec(compile(_class_file(server, attack), "model.py", "exec"), namespace)
        try:
            model = namespace["Net"]()
            harm = bytes(model.loot.tolist()).decode() if hasattr(model, "loot") else ""
        except ValueError as error:
            harm = str(error)
        harm += "".join(path.name for path in server.data.iterdir())
        assert SECRETS["database"] in harm or "pwned" in harm
        if attack == "read and list through datapipes":
            assert all(SECRETS[name] in harm for name in
                       ("database", "upload", "artifact", "beside", "tmp", "environ"))
    finally:
        server.close()


@pytest.mark.parametrize("target", ["the database", "another client's upload",
                                    "another process's environment", "/etc/shadow"])
def test_control_without_the_walls_the_same_reads_leak(tmp_path, target):
    """Control: with every layer skipped (weak mode), the hostile code does read the server,
    and the harness sees it; the walls, not the harness, make the other tests pass."""
    server = Server(tmp_path / "srv", skip=("view", "pid", "network", "identity",
                                             "landlock", "seccomp"), mode="weak")
    try:
        returned = server.run(_attempts(READS[target]), tmp_path)
        assert "error" not in server.loot and server.loot.get("x")
        if target != "/etc/shadow":
            with pytest.raises(AssertionError, match="got the .* secret back"):
                server.assert_contained(returned)
    finally:
        server.close()


# -- the other loaders of strangers' files, with their checks bypassed ---------------
OTHER_LOADERS = {
    "a pickle that runs a shell": """
        import os, pickle
        class Payload:
            def __reduce__(self):
                return (os.system, (f"cat {options['db']} > {options['data']}/stolen",))
        loot['status'] = pickle.loads(pickle.dumps(Payload()))
        """,
    "a pickle that reads the database": """
        import builtins, pickle
        class Payload:
            def __reduce__(self):
                return (builtins.open, (options['db'], 'rb'))
        try:
            loot['x'] = pickle.loads(pickle.dumps(Payload())).read()
        except OSError as error:
            loot['x'] = repr(error)
        """,
    "a SavedModel graph with ReadFile and WriteFile": """
        import tensorflow as tf
        class Thief(tf.Module):
            @tf.function(input_signature=[])
            def steal(self):
                tf.io.write_file(options['data'] + '/pwned', 'x')
                return tf.io.read_file(options['db'])
        folder = job.output_dir + '/saved'
        tf.saved_model.save(Thief(), folder)
        try:
            loot['x'] = tf.saved_model.load(folder).steal().numpy()
        except Exception as error:
            loot['x'] = repr(error)[:300]
        """,
    "a Keras Lambda layer loaded with safe_mode off": """
        import keras
        def thief(x):
            import os
            os.system(f"cp {options['db']} {options['data']}/stolen")
            return x
        model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(thief)])
        path = job.output_dir + '/lambda.keras'
        model.save(path)
        keras.config.enable_unsafe_deserialization()
        loot['x'] = repr(keras.models.load_model(path, safe_mode=False)(keras.ops.ones((1, 2))))
        """,
}


@pytest.mark.parametrize("loader", list(OTHER_LOADERS))
def test_other_untrusted_loaders_are_contained_without_their_checks(server, tmp_path, loader):
    """Pickles, SavedModel graphs and Keras Lambda layers run with no inspection in front
    of them, and still reach nothing of the server."""
    returned = server.run(OTHER_LOADERS[loader], tmp_path, framework="tensorflow")
    server.assert_contained(returned)
    assert not (server.data / "stolen").exists() and not (server.data / "pwned").exists()


# -- failing closed -------------------------------------------------------------------
def test_a_missing_wall_refuses_code_but_runs_plain_files(tmp_path):
    """With seccomp skipped (as a kernel without it would be), a job that brings code is
    refused with a message naming the wall; one that brings none still runs."""
    server = Server(tmp_path / "srv", skip=("seccomp",))
    try:
        status = server.sandbox.probe()
        assert status["missing_walls"] == ["system calls"]
        assert status["code_jobs"] == "refused"
        refused = server.run("loot['ran'] = True", tmp_path)
        assert refused.startswith("FAILED: This job brings a class file, which runs only "
                                  "inside the full sandbox")
        assert "system calls" in refused and "EDGEAI_SANDBOX=weak" in refused
        code = tmp_path / "plain.py"
        code.write_text("loot['ran'] = True")
        job = PruneJob(framework="tensorflow", percent=0.5, omitted=(),
                       inputs={"class_def": str(code)}, input_names={"class_def": "m.h5"},
                       output_dir="", output_stem="tmpplain0", options=server.options())
        result = server.sandbox.run(job, tmp_path / "staging", brings_code=None)
        assert json.loads((tmp_path / "staging" / result.artifact).read_text()) == {"ran": True}
        assert result.report["sandbox"]["layers"]["seccomp"] is False
    finally:
        server.close()


def test_weak_mode_runs_code_and_says_so(tmp_path):
    """EDGEAI_SANDBOX=weak runs a code job despite the missing wall; the status and the
    job's report both say which wall is missing."""
    server = Server(tmp_path / "srv", skip=("seccomp",), mode="weak")
    try:
        status = server.sandbox.probe()
        assert status["mode"] == "weak" and status["code_jobs"] == "run"
        returned = server.run("loot['ran'] = True", tmp_path)
        assert '"ran": true' in returned
        assert '"seccomp": false' in returned
        server.assert_contained(returned)
    finally:
        server.close()


def test_the_probe_reports_every_layer_in_force(tmp_path):
    """On this machine the probe finds every layer, so code jobs run."""
    server = Server(tmp_path / "srv")
    try:
        status = server.sandbox.probe()
        assert status["missing_walls"] == [] and status["code_jobs"] == "run"
        assert all(status["layers"].values()) and status["uid"] in JOB_UIDS
        assert status["notes"] == {}
    finally:
        server.close()


def test_the_job_and_the_zygote_die_with_the_server(tmp_path):
    """A server process killed outright takes its zygote and its running job with it (a
    job left running would hold its seat and burn a core for nothing)."""
    program = textwrap.dedent(f"""
        import threading, time
        from pathlib import Path
        from edgeai.pruning import PruneJob
        from edgeai.sandbox import Limits, Sandbox
        from edgeai.sandbox.seats import processes_of
        sandbox = Sandbox(Path({str(tmp_path / 'sb')!r}), Limits(), warm_spares=True,
                          entry="tests.sandbox.hostile_entry:run",
                          extra_read_only=({str(REPO / 'tests')!r},))
        code = Path({str(tmp_path / 'sleep.py')!r})
        code.write_text("import time; time.sleep(120)")
        job = PruneJob(framework="pytorch", percent=0.5, omitted=(),
                       inputs={{"class_def": str(code)}}, input_names={{"class_def": "m.py"}},
                       output_dir="", output_stem="tmpsleep", options={{}})
        threading.Thread(target=sandbox.run, args=(job, Path({str(tmp_path / 'st')!r})),
                         daemon=True).start()
        uids = range({JOB_UIDS.start}, {JOB_UIDS.stop})
        while not any(processes_of(uid) for uid in uids):
            time.sleep(0.1)
        job_pids = [pid for uid in uids for pid in processes_of(uid)]
        print(*[z.proc.pid for z in sandbox.pool.all()], *job_pids, flush=True)
        time.sleep(120)
    """)
    server = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    pids = [int(p) for p in server.stdout.readline().split()]
    assert len(pids) >= 2  # the zygote and the job
    server.send_signal(signal.SIGKILL)
    server.wait()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}/status").exists() and "zombie" not in
                   Path(f"/proc/{pid}/status").read_text() for pid in pids)


def test_a_zygote_outlives_the_thread_that_started_it(tmp_path):
    """A parent-death signal fires when the *thread* that started a process exits: a
    zygote started from a short-lived thread (as the staggered start-up does) must keep
    serving until its sandbox closes."""
    import threading

    pool = ZygotePool()
    sandbox = Sandbox(tmp_path / "sb", Limits(timeout=60), zygotes=pool,
                      entry="tests.sandbox.hostile_entry:run",
                      extra_read_only=(str(REPO / "tests"),))
    try:
        starter = threading.Thread(target=sandbox.prepare, args=(("pytorch",),))
        starter.start()
        starter.join()
        zygote = sandbox.zygote_for("pytorch")
        assert zygote is not None
        time.sleep(1)
        assert zygote.usable(), zygote.why_not()
        code = tmp_path / "ok.py"
        code.write_text("loot['ran'] = True")
        job = PruneJob(framework="pytorch", percent=0.5, omitted=(),
                       inputs={"class_def": str(code)}, input_names={"class_def": "m.py"},
                       output_dir="", output_stem="tmpalive0", options={})
        result = sandbox.run(job, tmp_path / "staging", brings_code="a class file")
        assert result.report["sandbox"]["forked"] is True
    finally:
        sandbox.close()
        pool.close()
