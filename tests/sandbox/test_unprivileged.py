"""A server that does not run as root builds the same walls, in a user namespace.

Here the server's own user is ``nobody``: the data dir belongs to it, so only the
view (and Landlock) keep a job away from it. Python lives under ``/root`` on these
machines, which ``nobody`` cannot enter; the test runs the server in a private
mount namespace that shows the interpreter through a fresh ``/root`` (the real
``/root`` keeps its mode), then drops to ``nobody`` with ``setpriv``.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
USERNS = Path("/proc/sys/user/max_user_namespaces")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="setting up a server user needs root"),
    pytest.mark.skipif(not shutil.which("setpriv") or not shutil.which("unshare"),
                       reason="needs util-linux's setpriv and unshare"),
    pytest.mark.skipif(not USERNS.exists() or USERNS.read_text().strip() == "0",
                       reason="needs unprivileged user namespaces (user.max_user_namespaces)"),
]

SERVER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from edgeai.pruning import PruneJob
    from edgeai.sandbox import JobFailed, Limits, Sandbox
    base = Path(sys.argv[1])
    sandbox = Sandbox(base / "var" / "sandbox", Limits(timeout=60), warm_spares=False,
                      hidden=(str(base / "var"),), entry="tests.sandbox.hostile_entry:run",
                      extra_read_only=(sys.argv[2],))
    status = sandbox.probe()
    attack = base / "attack.py"
    job = PruneJob("pytorch", 0.5, (), {"class_def": str(attack)}, {"class_def": "model.py"},
                   "", "tmpunpriv0", {"db": str(base / "var" / "edgeai.sqlite3")})
    try:
        result = sandbox.run(job, base / "staging", brings_code="a class file")
        returned = result.message + json.dumps(result.report)
    except JobFailed as error:
        returned = "FAILED " + str(error)
    print(json.dumps({"uid": os.getuid(), "status": status, "returned": returned}))
""")


def test_a_server_running_as_nobody_confines_its_jobs(tmp_path):
    """As ``nobody`` (owner of the data dir), every layer is in force, the job runs as the
    server's uid without capabilities, and the database it owns stays out of reach."""
    base = tmp_path / "unprivileged"
    (base / "var").mkdir(parents=True)
    (base / "var" / "edgeai.sqlite3").write_text("secret of the server's own user")
    (base / "attack.py").write_text(textwrap.dedent("""
        import os
        try:
            loot['db'] = open(options['db']).read()
        except OSError as error:
            loot['db'] = repr(error)
        loot['caps'] = [line for line in open('/proc/self/status') if line.startswith('Cap')]
    """))
    (base / "server.py").write_text(SERVER)
    subprocess.run(["chown", "-R", "65534:65534", str(base)], check=True)
    for folder in [*base.parents][:4]:
        if str(folder).startswith("/tmp/"):
            folder.chmod(folder.stat().st_mode | 0o711)
    prefix = Path(sys.base_prefix)
    hidden_home = next(p for p in [prefix, *prefix.parents] if p.parent == Path("/"))
    script = (f"mount --make-rprivate / && mkdir -p /mnt/edgeai-python && "
              f"mount --bind {hidden_home} /mnt/edgeai-python && "
              f"mount -t tmpfs -o mode=755 tmpfs {hidden_home} && "
              f"mkdir -p {prefix} && mount --bind /mnt/edgeai-python/"
              f"{prefix.relative_to(hidden_home)} {prefix} && "
              f"cd {base} && exec setpriv --reuid=65534 --regid=65534 --clear-groups "
              f"env PYTHONPATH={REPO} HOME={base} {sys.executable} {base / 'server.py'} "
              f"{base} {REPO / 'tests'}")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["uid"] == 65534
    status = out["status"]
    assert status["missing_walls"] == [] and all(status["layers"].values()), status
    assert "secret of the server's own user" not in out["returned"]
    assert "FileNotFoundError" in out["returned"]
    assert "CapEff:\\t0000000000000000" in out["returned"]
