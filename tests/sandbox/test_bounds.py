"""A job's resources are its own and bounded: disk, memory, processes and cores.

Each case runs a job whose code is the attack (``tests.sandbox.hostile_entry``: no
check in front of it) in a child forked by a zygote, as in the service, and first
shows the attack did what it tried (its own report of what happened), then that the
bound held: the job fails naming the limit, the host's disk is back where it was, a
neighbour job is unharmed.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from edgeai.pruning import PruneJob
from edgeai.sandbox import JobFailed, Limits, Sandbox
from edgeai.sandbox.disk import loop_devices_usable
from edgeai.sandbox.seats import processes_of
from edgeai.sandbox.zygote import ZygotePool

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or loop_devices_usable() is not None,
                                reason="per-job uids and disks need root and loop devices")


@pytest.fixture(scope="module")
def pool():
    pool = ZygotePool()
    yield pool
    pool.close()


def make_sandbox(root: Path, pool: ZygotePool, **limits) -> Sandbox:
    return Sandbox(root / "sandbox", Limits(timeout=120, **limits), zygotes=pool,
                   entry="tests.sandbox.hostile_entry:run", hidden=(str(root),),
                   extra_read_only=(str(REPO / "tests"),))


def run(sandbox: Sandbox, tmp: Path, code: str) -> tuple[dict | None, str | None]:
    """Run ``code`` as the job; (what it reported in its model file, or None; the
    reason it failed, or None)."""
    attack = tmp / f"attack-{uuid.uuid4().hex[:6]}.py"
    attack.write_text(textwrap.dedent(code))
    job = PruneJob(framework="pytorch", percent=0.5, omitted=(),
                   inputs={"class_def": str(attack)}, input_names={"class_def": "model.py"},
                   output_dir="", output_stem=f"tmp{uuid.uuid4().hex[:8]}", options={})
    staging = tmp / f"staging-{uuid.uuid4().hex[:6]}"
    try:
        result = sandbox.run(job, staging, brings_code="a class file")
    except JobFailed as error:
        return None, str(error)
    return json.loads((staging / result.artifact).read_text()), None


def test_writing_past_the_disk_fails_the_job_and_gives_the_disk_back(tmp_path, pool):
    """64 MB written on a 32 MB disk: the writes fail with ENOSPC (and so would a
    thousand files past it), the job fails naming EDGEAI_JOB_DISK_MB, and the host's
    disk holds nothing of it afterwards."""
    sandbox = make_sandbox(tmp_path, pool, disk_mb=32)
    try:
        loot, failure = run(sandbox, tmp_path, """
            import os, time
            written = 0
            try:
                with open('/job/out/fill', 'wb') as handle:
                    for _ in range(64):
                        handle.write(b'x' * (1 << 20))
                        handle.flush()
                        written += 1
            except OSError as error:
                loot['error'] = repr(error)
            loot['written_mb'] = written
            time.sleep(2)  # the supervisor notices within a poll
        """)
        assert loot is None and failure == (
            "The job filled its 32 MB disk (EDGEAI_JOB_DISK_MB=32) and was stopped.")
        # Control: without the bound the same job writes all 64 MB (a roomy disk).
        roomy = make_sandbox(tmp_path / "roomy", pool, disk_mb=256)
        try:
            loot, failure = run(roomy, tmp_path, """
                with open('/job/out/fill', 'wb') as handle:
                    for _ in range(64):
                        handle.write(b'x' * (1 << 20))
                loot['written_mb'] = 64
            """)
        finally:
            roomy.close()
        assert failure is None and loot == {"written_mb": 64}
    finally:
        sandbox.close()
    # Every byte the job wrote was in its image, and the image is gone: nothing of the
    # job is left on the server's disk (the free space itself moves with other work).
    assert list((tmp_path / "sandbox" / "slots").iterdir()) == []
    assert [path for path in (tmp_path / "sandbox").rglob("*") if path.is_file()] == []


def test_memory_the_old_watchdog_missed_is_counted(tmp_path, pool):
    """Processes forked from a thread other than the main one (which the old watchdog,
    reading only the main thread's children, never saw), each holding 350 MB of its
    own: together over the 2 GB limit, so the job fails naming it. memfd is refused."""
    sandbox = make_sandbox(tmp_path, pool, memory_mb=2048)
    attack = """
        import os, threading, time
        children = []
        def spawn():
            for _ in range(8):
                pid = os.fork()
                if pid == 0:
                    block = b'x' * (350 << 20)  # written: resident, not shared
                    time.sleep(SECONDS)
                    os._exit(0)
                children.append(pid)
        thread = threading.Thread(target=spawn)
        thread.start(); thread.join()
        for pid in children:
            os.waitpid(pid, 0)
        loot['children'] = len(children)
    """
    try:
        # Control: with room enough, the same job forks its eight and finishes.
        roomy = make_sandbox(tmp_path / "roomy", pool, memory_mb=8192)
        try:
            loot, failure = run(roomy, tmp_path, attack.replace("SECONDS", "3"))
        finally:
            roomy.close()
        assert failure is None and loot == {"children": 8}
        loot, failure = run(sandbox, tmp_path, attack.replace("SECONDS", "30"))
        assert loot is None
        assert failure == ("The job used more than the 2048 MB memory limit "
                           "(EDGEAI_JOB_MEMORY_MB) and was stopped.")
        loot, failure = run(sandbox, tmp_path, """
            import os
            try:
                os.memfd_create('hidden')
                loot['memfd'] = 'made'
            except OSError as error:
                loot['memfd'] = repr(error)
        """)
        assert failure is None and loot["memfd"].startswith("PermissionError")
    finally:
        sandbox.close()


def test_a_jobs_threads_do_not_stop_another_jobs_threads(tmp_path, pool):
    """One job takes every thread its process limit allows and sleeps; a job running at
    the same time, on another uid, still starts its threads."""
    sandbox = make_sandbox(tmp_path, pool)  # RLIMIT_NPROC 1024 per uid
    greedy: dict = {}

    def greedy_job():
        greedy.update(zip(("loot", "failure"), run(sandbox, tmp_path, """
            import os, threading, time
            loot['uid'] = os.getuid()
            started = 0
            try:
                while started < 5000:
                    threading.Thread(target=time.sleep, args=(6,), daemon=True).start()
                    started += 1
            except RuntimeError as error:
                loot['stopped'] = repr(error)
            loot['threads'] = started
            time.sleep(9)  # past its threads' end: the job's own steps start threads
        """), strict=True))

    thread = threading.Thread(target=greedy_job)
    thread.start()
    try:
        time.sleep(4)  # the greedy job holds its threads by now
        loot, failure = run(sandbox, tmp_path, """
            import os, threading
            loot['uid'] = os.getuid()
            workers = [threading.Thread(target=lambda: None) for _ in range(64)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            loot['threads'] = len(workers)
        """)
    finally:
        thread.join()
        sandbox.close()
    assert failure is None and loot["threads"] == 64
    assert greedy["failure"] is None, greedy  # the loot says how far it got
    assert "can't start new thread" in greedy["loot"]["stopped"]
    assert greedy["loot"]["threads"] > 900
    assert greedy["loot"]["uid"] != loot["uid"]
    assert processes_of(greedy["loot"]["uid"]) == processes_of(loot["uid"]) == []


def test_every_process_and_thread_of_a_job_stays_on_its_cores(tmp_path, pool):
    """The job's threads and the processes they fork run on the job's cores only."""
    sandbox = make_sandbox(tmp_path, pool)
    try:
        loot, failure = run(sandbox, tmp_path, """
            import os, threading
            loot['main'] = sorted(os.sched_getaffinity(0))
            seen = []
            def look():
                seen.append(sorted(os.sched_getaffinity(0)))
                read, write = os.pipe()
                if os.fork() == 0:
                    os.write(write, repr(sorted(os.sched_getaffinity(0))).encode())
                    os._exit(0)
                os.close(write)
                seen.append(eval(os.read(read, 100)))
            thread = threading.Thread(target=look)
            thread.start(); thread.join()
            loot['thread'], loot['forked'] = seen
        """)
    finally:
        sandbox.close()
    assert failure is None
    assert loot["main"] == loot["thread"] == loot["forked"]
    assert len(loot["main"]) == 1  # EDGEAI_JOB_THREADS=1


def test_a_disk_reserved_with_fallocate_fails_naming_the_limit(tmp_path, pool):
    """Blocks reserved with fallocate are never written, so the image's allocated size
    does not show them; the job still cannot go past its disk, and once it has ended the
    image's own free count tells the server it filled it."""
    code = """
        import os
        handle = os.open('/job/out/reserved', os.O_CREAT | os.O_WRONLY)
        try:
            os.posix_fallocate(handle, 0, MEGABYTES << 20)
            loot['reserved_mb'] = MEGABYTES
        except OSError as error:
            raise SystemExit(f"fallocate: {error!r}")
    """
    sandbox = make_sandbox(tmp_path, pool, disk_mb=64)
    try:
        loot, failure = run(sandbox, tmp_path, code.replace("MEGABYTES", "40"))
        assert failure is None and loot == {"reserved_mb": 40}  # control: it fits
        loot, failure = run(sandbox, tmp_path, code.replace("MEGABYTES", "100"))
        assert loot is None and failure.startswith(
            "The job filled its 64 MB disk (EDGEAI_JOB_DISK_MB=64) and was stopped. ")
        assert "No space left on device" in failure  # what the job itself ran into
    finally:
        sandbox.close()


def test_socket_buffers_count_against_memory(tmp_path, pool):
    """Data queued in Unix sockets is kernel memory in no process's RSS. Growing a
    socket's buffers is refused, and every socket of the job counts at its largest:
    six processes holding 240 full socket pairs each go over a 1 GB limit."""
    attack = """
        import os, socket, time
        try:
            socket.socketpair()[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            loot['grown'] = 'yes'
        except OSError as error:
            loot['grown'] = repr(error)
        children = []
        for _ in range(6):
            pid = os.fork()
            if pid == 0:
                pairs = []
                for _ in range(240):
                    sender, receiver = socket.socketpair()
                    sender.setblocking(False)
                    try:
                        while True:
                            sender.send(b"x" * 65536)
                    except BlockingIOError:
                        pass
                    pairs.append((sender, receiver))
                time.sleep(SECONDS)
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)
        loot['children'] = len(children)
    """
    roomy = make_sandbox(tmp_path / "roomy", pool, memory_mb=8192)
    try:
        loot, failure = run(roomy, tmp_path, attack.replace("SECONDS", "2"))
    finally:
        roomy.close()
    assert failure is None and loot["children"] == 6  # control: the payload runs
    assert loot["grown"].startswith("PermissionError")
    sandbox = make_sandbox(tmp_path, pool, memory_mb=1024)
    try:
        loot, failure = run(sandbox, tmp_path, attack.replace("SECONDS", "30"))
    finally:
        sandbox.close()
    assert loot is None and failure == ("The job used more than the 1024 MB memory limit "
                                        "(EDGEAI_JOB_MEMORY_MB) and was stopped.")


def test_a_read_only_folder_under_tmp_is_seen_beside_the_jobs_own_tmp(tmp_path, pool):
    """A checkout or virtualenv under /tmp (a new user's clone there) is bound into the
    view on top of the job's own /tmp, not hidden by it: the job reads it and still
    writes its temporary files."""
    shared = Path(tempfile.mkdtemp(prefix="edgeai-venv-", dir="/tmp"))
    try:
        shared.chmod(0o755)  # as a clone or a virtualenv is
        (shared / "marker.txt").write_text("seen")
        sandbox = Sandbox(tmp_path / "sandbox", Limits(timeout=120), zygotes=pool,
                          entry="tests.sandbox.hostile_entry:run", hidden=(str(tmp_path),),
                          extra_read_only=(str(REPO / "tests"), str(shared)))
        try:
            loot, failure = run(sandbox, tmp_path, f"""
                import tempfile
                loot['marker'] = open({str(shared / 'marker.txt')!r}).read()
                with tempfile.NamedTemporaryFile(dir='/tmp') as handle:
                    handle.write(b'x')
                loot['tmp'] = 'written'
                try:
                    open({str(shared / 'new.txt')!r}, 'w')
                except OSError as error:
                    loot['write'] = type(error).__name__
            """)
        finally:
            sandbox.close()
    finally:
        shutil.rmtree(shared)
    assert failure is None, failure
    assert loot == {"marker": "seen", "tmp": "written", "write": loot["write"]}
    assert loot["write"] in ("PermissionError", "OSError")
