"""Runs one job in a fresh, confined child process and takes back only what it should.

For each job the supervisor takes a *seat* (:mod:`.seats`: a uid of the job's own
and its cores), makes the job's *slot* — a folder of the server's that holds hard
links to the inputs and the job's disk (:mod:`.disk`: an ext4 image the child
mounts as ``/job``) — and has the framework's zygote (:mod:`.zygote`) fork a child,
or starts a fresh interpreter where no zygote can serve. The child confines itself
(:mod:`.confine`) and reports ready on its channel (:mod:`.channel`) with what the
kernel says is in force; a job that brings code is sent only to a child with every
wall up. A child serves one job, then every process of its uid is killed, the slot
is deleted and the seat given back.

Everything the job hands back is hostile input, and the server never touches a
tree the job can change: results, progress and files come over the channel (bounded,
files named by the server, written into the server's own staging folder), the slot's
own folder is root's and holds nothing the job can rename, and the job's disk is
never mounted outside the job's namespace — deleting one image file gives the disk
back whatever the job built in it. The report is parsed into the typed report with
bounds (:func:`edgeai.pruning.report.check_report`) or the job fails.

A job's resources are its own and bounded: its disk (``EDGEAI_JOB_DISK_MB``, enforced
by the kernel), its memory (every process of its uid, anonymous and shared memory
counted, polled five times a second; memfd and System V segments are refused by
seccomp), its processes and threads (``RLIMIT_NPROC`` of its own uid), its cores
(pinned; seccomp refuses widening them or raising its priority), its time.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeai.pruning import PruneJob, PruneResult
from edgeai.pruning.report import ReportRejected, check_report, clean_text
from edgeai.sandbox import disk
from edgeai.sandbox.channel import KEY, ChannelReader
from edgeai.sandbox.limits import Limits
from edgeai.sandbox.removal import remove_tree
from edgeai.sandbox.seats import DEFAULT_UIDS, NoSeat, Seat, Seats, kill_uid, parse_uid_range
from edgeai.sandbox.zygote import Zygote, ZygotePool, ZygoteUnavailable, exit_code

log = logging.getLogger(__name__)

PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
_PASSTHROUGH_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "LD_LIBRARY_PATH")
MODES = ("strict", "weak")
# The walls a job that brings code needs, and the layers that can provide each.
WALLS = {
    "files": ("view", "landlock"),
    "identity": ("identity",),
    "system calls": ("seccomp",),
    "network": ("network",),
    "processes": ("pid",),
}
MAX_MESSAGE_CHARS = 64 * 1024
MAX_ERROR_CHARS = 2000
MAX_LOG_TAIL_CHARS = 600
STDERR_TAIL_BYTES = 8192
# How often a running job's memory, disk and progress are looked at.
WATCH_SECONDS = 0.2
PROBE_DISK_MB = 16
# What one socket of a job may hold in kernel memory, in no process's RSS: its send
# buffer (a Unix socket's queued data is charged to the sender) and its receive buffer,
# at the kernel's defaults; seccomp refuses growing either (SO_SNDBUF, SO_RCVBUF).
SOCKET_BYTES = 2 * 212992

ProgressListener = Callable[[str, "float | None"], None]


class JobFailed(Exception):
    """The job ended without a result; ``str()`` is the reason shown to the user.

    ``reason`` is the server's own word for why it stopped the job, set only here, never
    read from anything the job wrote: ``memory``, ``disk``, ``timeout``, ``protocol``,
    ``report``, ``no_model``, ``crash``, ``start``, ``refused_code``, ``no_seat``,
    ``stopped`` (the server or the client stopped it); None when the job failed on its
    own (its pipeline raised, with its message)."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


def missing_walls(layers: dict[str, Any]) -> list[str]:
    """The walls (see :data:`WALLS`) that no layer in ``layers`` provides."""
    missing = [wall for wall, provided_by in WALLS.items()
               if not any(layers.get(layer) for layer in provided_by)]
    landlock = layers.get("landlock") or {}
    if "network" in missing and landlock.get("net") and layers.get("seccomp"):
        missing.remove("network")  # TCP denied by Landlock, other families by seccomp
    return missing


def bounded(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying so."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f" ... [{len(text) - limit} more]"


def cgroup_state() -> str:
    """How this host's cgroups look to the server, and that it leaves them alone: the
    bounds above hold without them (a job never moves a process between cgroups)."""
    try:
        with open("/proc/self/cgroup") as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except OSError:
        return "not used: /proc/self/cgroup cannot be read"
    if any(not line.startswith("0::") for line in lines):
        return "not used: a cgroup v1 (or hybrid) host, left alone"
    path = "/sys/fs/cgroup" + lines[0][3:] if lines else "/sys/fs/cgroup"
    delegated = os.access(os.path.join(path, "cgroup.subtree_control"), os.W_OK)
    return ("not used: cgroup v2 " + ("delegated to this process" if delegated
                                      else "not delegated to this process")
            + ", left alone (the bounds above hold without it)")


def child_env(threads: int) -> dict[str, str]:
    """The environment of every child (and zygote): no secrets, no database path, the
    job's threads for every framework's pools."""
    count = str(threads)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "PYTHONPATH": PACKAGE_PARENT,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": count,
        "MKL_NUM_THREADS": count,
        "OPENBLAS_NUM_THREADS": count,
        "TF_NUM_INTRAOP_THREADS": count,
        "TF_NUM_INTEROP_THREADS": count,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "TF_ENABLE_ONEDNN_OPTS": "0",
        "KERAS_BACKEND": "tensorflow",
        "CUDA_VISIBLE_DEVICES": "",
    }
    env.update({k: os.environ[k] for k in _PASSTHROUGH_ENV if k in os.environ})
    return env


# -- the process tree of a job --------------------------------------------------------
def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it, whichever of their threads forked them."""
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    queue.extend(int(p) for p in handle.read().split())
            except (OSError, ValueError):
                pass
    return pids


def memory_mb(pids: list[int], proportional: bool = False) -> float:
    """Memory the processes hold that nothing else would free: their anonymous and
    shared resident pages (file pages are the page cache, bounded by the job's disk).

    The quick count (``/proc/PID/status``) counts a page shared by several processes
    once per process: a job's forks share their parent's pages copy-on-write, and a
    zygote's children share the framework's. ``proportional`` reads
    ``/proc/PID/smaps_rollup`` instead (each shared page split between its sharers:
    slower, as it walks the page tables), for when the quick count is over a limit."""
    total = 0
    source, fields = (("smaps_rollup", (b"Pss_Anon:", b"Pss_Shmem:")) if proportional else
                      ("status", (b"RssAnon:", b"RssShmem:")))
    for pid in pids:
        try:
            with open(f"/proc/{pid}/{source}", "rb") as handle:
                for line in handle:
                    if line.startswith(fields):
                        total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1024


def uid_processes(uid: int) -> list[int]:
    """Every process running as ``uid`` (a job's own uid: all of the job, wherever
    in its tree a thread forked it)."""
    from edgeai.sandbox.seats import processes_of

    return processes_of(uid)


# -- the slot: the server's folder for one job -----------------------------------------
class _Slot:
    """One job's folder under ``slots/``, root's own: ``inputs/`` (hard links to the
    job's uploads, read-only) and the job's disk (``disk.img``, or ``work/`` where loop
    devices cannot be used). Opened once; every step below works from its descriptor."""

    def __init__(self, sandbox: Sandbox, inputs: dict[str, str], seat: Seat, disk_mb: int,
                 disk_mode: str):
        self.sandbox = sandbox
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.path = sandbox.slots_dir / self.name
        self.disk_mb = disk_mb
        self.image_fd = -1
        self.inputs_fd = -1
        self.capacity = disk_mb << 20
        self.held_back = 0
        self.job: dict[str, str] = {}
        os.mkdir(self.name, 0o711, dir_fd=sandbox.slots_fd)
        self.fd = os.open(self.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=sandbox.slots_fd)
        try:
            self._link_inputs(inputs)
            if disk_mode == "image":
                self.image_fd = disk.make_image(self.fd, "disk.img", disk_mb, seat.uid, seat.gid)
                self.capacity = disk.capacity_bytes(self.image_fd)
                # ext4 counts as free the blocks it holds back from writers.
                self.held_back = disk.free_bytes(self.image_fd) - self.capacity
                self.job = {"image": str(self.path / "disk.img")}
            else:
                os.mkdir("work", 0o700, dir_fd=self.fd)
                if seat.uid is not None:
                    os.chown("work", seat.uid, seat.gid or seat.uid, dir_fd=self.fd,
                             follow_symlinks=False)
                self.job = {"folder": str(self.path / "work")}
        except BaseException:
            self.remove()
            raise

    def _link_inputs(self, inputs: dict[str, str]) -> None:
        os.mkdir("inputs", 0o755, dir_fd=self.fd)
        self.inputs_fd = os.open("inputs", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, dir_fd=self.fd)
        for role, source in inputs.items():
            name = f"{role}.upload"
            try:
                os.link(source, name, dst_dir_fd=self.inputs_fd)
            except OSError:  # another file system: copy, from a descriptor of the source
                with open(source, "rb") as src:
                    out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                                  0o444, dir_fd=self.inputs_fd)
                    try:
                        while chunk := src.read(1 << 20):
                            os.write(out, chunk)
                    finally:
                        os.close(out)
            # Readable by the job's user, never writable (the job also sees it read-only).
            os.chmod(name, 0o444, dir_fd=self.inputs_fd, follow_symlinks=False)

    @property
    def disk_bytes(self) -> int:
        return self.disk_mb << 20

    def used_bytes(self) -> tuple[int, bool]:
        """(bytes the job's disk holds, whether that could be counted completely)."""
        if self.image_fd >= 0:
            return disk.allocated_bytes(self.image_fd), True
        try:
            work = os.open("work", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                           dir_fd=self.fd)
        except OSError:
            return 0, True
        try:
            used, _, complete = disk.tree_usage(work, limit_entries=200_000)
            return used, complete
        finally:
            os.close(work)

    def full(self, unmounted: bool = False) -> bool:
        """Whether the job has used its disk: the image is (almost) all allocated, or
        the folder holds more than the bound (or more than can be counted). Once the
        job's mount is gone (``unmounted``), the image's own free count says it too
        (blocks reserved with ``fallocate`` are never allocated in the image)."""
        used, complete = self.used_bytes()
        if self.image_fd >= 0:
            # What the fresh file system could hold, less a margin for the metadata its
            # files take as they are made: "full" is within 1 % of it.
            margin = max(2 << 20, self.capacity // 100)
            if used >= self.capacity - margin:
                return True
            try:
                return unmounted and disk.free_bytes(self.image_fd) <= self.held_back + margin
            except disk.DiskError:
                return False
        return used > self.disk_bytes or not complete

    def remove(self) -> None:
        """Delete the slot. The image and the input links are single entries of root's
        folder; only a ``work`` folder (no loop devices) is a tree the job shaped."""
        problems = []
        if self.image_fd >= 0:
            os.close(self.image_fd)
            self.image_fd = -1
        if self.inputs_fd >= 0:
            for entry in os.listdir(self.inputs_fd):
                try:
                    os.unlink(entry, dir_fd=self.inputs_fd)
                except OSError as error:
                    problems.append(f"inputs/{entry}: {error.strerror}")
            os.close(self.inputs_fd)
            self.inputs_fd = -1
        for name in ("disk.img",):
            try:
                os.unlink(name, dir_fd=self.fd)
            except FileNotFoundError:
                pass
        if self.job.get("folder"):
            removal = remove_tree(self.path / "work", quarantine=self.sandbox.trash_dir)
            problems.extend(removal.problems)
        for name in ("inputs",):
            try:
                os.rmdir(name, dir_fd=self.fd)
            except OSError:
                pass
        os.close(self.fd)
        try:
            os.rmdir(self.name, dir_fd=self.sandbox.slots_fd)
        except OSError:
            removal = remove_tree(self.path, quarantine=self.sandbox.trash_dir)
            problems.extend(removal.problems)
        if problems:
            log.warning("sandbox slot %s: %s", self.name, "; ".join(problems[:5]))


# -- one child process -----------------------------------------------------------------
class _Child:
    """One sandbox child: forked by a zygote or started fresh; its pipes and channel."""

    def __init__(self, sandbox: Sandbox, framework: str, slot: _Slot, seat: Seat,
                 staging_fd: int, stem: str, probe: bool = False,
                 cancel: threading.Event | None = None):
        self.sandbox = sandbox
        self.seat = seat
        self.framework = framework
        self.zygote: Zygote | None = None
        self.reply: Any = None  # the zygote's socket for this child's exit code
        self.proc: subprocess.Popen | None = None
        self.stderr_tail = bytearray()
        self.started = time.monotonic()
        self._precise_at, self._precise_mb = float("-inf"), 0.0
        self._code: int | None = None
        settings = {"framework": framework, "entry": sandbox.entry, "probe": probe,
                    "confine": sandbox.confine_spec(slot, seat)}
        channel_r, channel_w = os.pipe2(os.O_CLOEXEC)
        stdin_r, self.stdin_w = os.pipe2(os.O_CLOEXEC)
        self.stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
        try:
            zygote = None if probe else sandbox.zygote_for(framework, cancel)
            if zygote is not None:
                self.pid, self.pidfd, self.reply = zygote.fork(settings,
                                                               (channel_w, stdin_r, stderr_w))
                self.zygote = zygote
            else:
                settings["channel_fd"] = channel_w
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "edgeai.sandbox.child"], stdin=stdin_r,
                    stdout=stderr_w, stderr=stderr_w, pass_fds=(channel_w,), cwd="/",
                    env=sandbox.child_env(), start_new_session=True, close_fds=True)
                self.pid, self.pidfd = self.proc.pid, os.pidfd_open(self.proc.pid)
                os.write(self.stdin_w, (json.dumps(settings) + "\n").encode())
        except BaseException:
            for fd in (channel_r, self.stdin_w, self.stderr_r):
                os.close(fd)
            if self.proc is not None:
                self.proc.kill()
                self.proc.wait()
            raise
        finally:
            for fd in (channel_w, stdin_r, stderr_w):
                os.close(fd)
        self.reader = ChannelReader(channel_r, staging_fd, stem, slot.disk_bytes)
        self.channel_r = channel_r
        threading.Thread(target=self._keep_stderr_tail, daemon=True,
                         name="sandbox-stderr").start()

    def _keep_stderr_tail(self) -> None:
        try:
            while chunk := os.read(self.stderr_r, 65536):
                self.stderr_tail += chunk
                del self.stderr_tail[:-STDERR_TAIL_BYTES]
        except OSError:
            pass

    @property
    def confinement(self) -> dict[str, Any]:
        return self.reader.received.confinement or {}

    def exited(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the child to exit; True once it has."""
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))

    def returncode(self) -> int | None:
        """The exit code (negative: the signal), once known."""
        if self.proc is not None:
            return self.proc.poll()
        if self.reply is not None and self.exited(0):
            if self._code is None:
                self._code = exit_code(self.reply, 2.0)
            return self._code
        return None

    def send_job(self, job: PruneJob) -> None:
        """Hand the job over (stdin, one JSON line). Stdin stays open until the job is
        over: its closing tells the child's waiting process to end the job (see
        :func:`edgeai.sandbox.confine.become_init_of_pid_namespace`)."""
        data = (json.dumps({"job": job.to_dict()}) + "\n").encode()
        while data:
            data = data[os.write(self.stdin_w, data):]

    def processes(self) -> list[int]:
        """The job's processes: every process of its uid (and the tree below the child)."""
        pids = set(process_tree(self.pid)) if not self.exited(0) else set()
        if self.seat.uid is not None:
            pids.update(uid_processes(self.seat.uid))
        return sorted(pids)

    def memory_mb(self, proportional: bool = False) -> float:
        """What the job holds in memory now (see :func:`memory_mb`), and what its sockets
        may hold in the kernel (their count in its network namespace, each at most
        :data:`SOCKET_BYTES`)."""
        pids = (uid_processes(self.seat.uid) if self.seat.uid is not None
                else process_tree(self.pid))
        return memory_mb(pids, proportional) + self.sockets() * SOCKET_BYTES / (1 << 20)

    def sockets(self) -> int:
        """Sockets open in the job's network namespace (the kernel's own count, read
        through the child's /proc entry, which the job cannot change)."""
        try:
            with open(f"/proc/{self.pid}/net/sockstat", "rb") as handle:
                first = handle.readline().split()
            return int(first[2]) if first[:2] == [b"sockets:", b"used"] else 0
        except (OSError, ValueError, IndexError):
            return 0

    def over_memory(self, limit_mb: float) -> bool:
        """Whether the job holds more than ``limit_mb``: the quick count first, and only
        when that is over, the proportional one (at most once a second)."""
        if self.memory_mb() <= limit_mb:
            return False
        now = time.monotonic()
        if now - self._precise_at >= 1.0:
            self._precise_at, self._precise_mb = now, self.memory_mb(proportional=True)
        return self._precise_mb > limit_mb

    def kill(self) -> None:
        """Kill the child and everything of the job, wherever it forked from."""
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except (ProcessLookupError, OSError):
            pass
        for pid in process_tree(self.pid) if not self.exited(0) else ():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.seat.uid is not None:
            kill_uid(self.seat.uid)

    def log_tail(self, lines: int = 3) -> str:
        """The last ``lines`` lines the child wrote to stderr, bounded and cleaned."""
        text = bytes(self.stderr_tail).decode(errors="replace").strip().splitlines()
        return bounded(clean_text(" | ".join(text[-lines:]), MAX_LOG_TAIL_CHARS),
                       MAX_LOG_TAIL_CHARS)

    def close(self) -> None:
        """Kill what is left, collect the exit, close every descriptor."""
        self.kill()
        if not self.exited(10):
            log.error("sandbox child %s did not die", self.pid)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.reader.wait(10)
        for fd in (self.stdin_w, self.pidfd, self.channel_r):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.stdin_w = self.pidfd = self.channel_r = -1
        if self.reply is not None:
            self.reply.close()
        try:
            os.close(self.stderr_r)
        except OSError:
            pass


class Sandbox:
    """Starts confined children and runs jobs in them; safe to use from many threads.

    ``mode`` is ``strict`` (jobs that bring code need every wall) or ``weak``;
    ``skip`` names layers not to build (operators whose kernel misbehaves, tests);
    ``hidden`` are paths a child must not be able to read (the data dir), checked
    by every child after it confined itself. ``entry`` (``module:function``) replaces
    the engine inside the child; the confinement tests use it to run code no engine
    would run. ``warm_spares`` keeps a zygote per framework (off: a fresh interpreter
    per job); ``zygotes`` shares a pool of them between sandboxes (tests), else the
    sandbox has its own. ``uids`` is the range of per-job uids (``EDGEAI_SANDBOX_UIDS``).
    ``quarantine`` is where what cannot be removed is moved aside (the storage's, which
    every start tries to empty again; by default a folder of the sandbox's own).
    """

    def __init__(self, root: Path, limits: Limits, *, warm_spares: bool = True,
                 mode: str = "strict", skip: tuple[str, ...] = (),
                 hidden: tuple[str, ...] = (), extra_read_only: tuple[str, ...] = (),
                 entry: str | None = None, uids: str = DEFAULT_UIDS,
                 zygotes: ZygotePool | None = None, quarantine: Path | None = None):
        if mode not in MODES:
            raise ValueError(f"sandbox mode {mode!r}; allowed: {', '.join(MODES)}")
        self.root = Path(root).resolve()
        self.limits = limits
        self.warm_spares = warm_spares
        self.mode = mode
        self.skip = tuple(skip)
        self.hidden = tuple(str(Path(path).resolve()) for path in hidden)
        self.extra_read_only = tuple(str(path) for path in extra_read_only)
        self.entry = entry
        self.seats = Seats(parse_uid_range(uids) if "identity" not in self.skip else None,
                           threads=limits.threads)
        self.slots_dir = self.root / "slots"
        self.trash_dir = Path(quarantine) if quarantine is not None else self.root / "trash"
        for path in (self.root, self.slots_dir, self.trash_dir):
            path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)
        os.chmod(self.slots_dir, 0o711)  # without a view the job must reach its own slot
        os.chmod(self.trash_dir, 0o700)
        self.slots_fd = os.open(self.slots_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                | os.O_CLOEXEC)
        why_no_loop = disk.loop_devices_usable()
        if "view" in self.skip:
            why_no_loop = "the view is skipped (a job's disk is mounted inside it)"
        self.disk_mode = "folder" if why_no_loop else "image"
        self.disk_note = why_no_loop
        self._remove_orphan_slots()
        self._own_pool = zygotes is None
        self.pool = zygotes if zygotes is not None else ZygotePool()
        self._closed = False
        self.status: dict[str, Any] = {}

    # -- setup -------------------------------------------------------------
    def _remove_orphan_slots(self) -> None:
        """Delete slots left by server processes that no longer exist. Never raises:
        a slot that cannot be removed is moved aside and logged."""
        for slot in self.slots_dir.iterdir():
            owner = slot.name.split("-", 1)[0]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                removal = remove_tree(slot, quarantine=self.trash_dir)
                if removal.problems:
                    log.warning("orphan sandbox slot %s: %s", slot.name,
                                "; ".join(removal.problems[:5]))

    def confine_spec(self, slot: _Slot, seat: Seat) -> dict[str, Any]:
        """What the child passes to :func:`edgeai.sandbox.confine.confine`."""
        return {"parent_pid": os.getpid(), "limits": self.limits.child_limits(),
                "job": slot.job, "inputs": str(slot.path / "inputs"), "uid": seat.uid,
                "gid": seat.gid, "cpus": list(seat.cpus), "skip": list(self.skip),
                "hidden": list(self.hidden), "extra_read_only": list(self.extra_read_only),
                "tmpfs_mb": self.limits.tmpfs_mb}

    def child_env(self) -> dict[str, str]:
        """A scrubbed environment: no secrets, no database path, bounded threads."""
        return child_env(self.limits.threads)

    def bounds(self) -> dict[str, Any]:
        """The resource bounds every job gets here (``/healthz`` and every report)."""
        limits = self.limits
        disk_text = (f"{limits.disk_mb} MB" if limits.disk_mb else
                     "4 x the uploads + 1024 MB")
        return {
            "disk": {"mb": limits.disk_mb or None, "size": disk_text,
                     "enforced_by": ("the kernel (a loop-mounted ext4 image per job)"
                                     if self.disk_mode == "image" else
                                     f"the supervisor, walking the job's folder every "
                                     f"{WATCH_SECONDS} s ({self.disk_note})")},
            "memory": {"mb": limits.memory_mb, "shm_mb": limits.tmpfs_mb,
                       "enforced_by": "RLIMIT_DATA per process, and the supervisor summing "
                                      "every process of the job's uid (anonymous and shared "
                                      f"pages) every {WATCH_SECONDS} s; memfd and System V "
                                      "shared memory refused"},
            "processes": {"max": limits.processes,
                          "enforced_by": ("RLIMIT_NPROC of a uid per job "
                                          f"({self.seats.describe()['uids']})"
                                          if self.seats.uids else
                                          "RLIMIT_NPROC of the server's user (no uid per job "
                                          "without root)")},
            "cpu": {"threads": limits.threads, "cores": self.seats.cores,
                    "enforced_by": "sched_setaffinity per job (seats on distinct cores where "
                                   "there are enough), nice 10; seccomp refuses changing them"},
            "cgroups": cgroup_state(),
        }

    def probe(self, timeout: float = 60) -> dict[str, Any]:
        """Start a child that only confines itself and reports; remember and log what
        is in force (``self.status``, shown by ``/healthz`` and every job's report)."""
        confinement = self._probe_once(timeout)
        if confinement is None and self.disk_mode == "image":
            self.disk_mode, self.disk_note = "folder", "a loop-mounted disk failed in the probe"
            confinement = self._probe_once(timeout)
        if confinement is None:
            confinement = {"layers": {}, "notes": {"probe": "the probe did not start"}}
        missing = missing_walls(confinement.get("layers") or {})
        self.status = {"mode": self.mode, **confinement, "missing_walls": missing,
                       "code_jobs": "refused" if missing and self.mode == "strict" else "run",
                       "bounds": self.bounds()}
        layers = confinement.get("layers") or {}
        log.info("sandbox layers in force: %s", ", ".join(
            layer for layer, state in layers.items() if state) or "none")
        if missing and self.mode == "strict":
            log.error("sandbox: jobs that bring code (class files, SavedModels, datasets) "
                      "will be REFUSED: no layer provides %s (%s). Fix the kernel "
                      "features, or accept weaker confinement with EDGEAI_SANDBOX=weak.",
                      ", ".join(missing), confinement.get("notes"))
        elif missing:
            log.warning("!!! EDGEAI_SANDBOX=weak: jobs that bring code RUN although no "
                        "layer provides %s (%s). Uploaded code could reach this server's "
                        "files. !!!", ", ".join(missing), confinement.get("notes"))
        return self.status

    def _probe_once(self, timeout: float) -> dict[str, Any] | None:
        seat = self.seats.acquire(timeout)
        slot = child = None
        try:
            slot = _Slot(self, {}, seat, PROBE_DISK_MB, self.disk_mode)
            child = _Child(self, "probe", slot, seat, staging_fd=slot.fd, stem="probe",
                           probe=True)
            child.reader.ready.wait(timeout)
            if child.reader.received.confinement is None:
                log.warning("sandbox probe (%s disk): %s", self.disk_mode,
                            child.log_tail() or "no report")
            return child.reader.received.confinement
        finally:
            self._clean_up(child, slot, seat)

    # -- zygotes -----------------------------------------------------------
    def prepare(self, frameworks: tuple[str, ...]) -> None:
        """Start a zygote for each framework (server start-up), or attach to those of
        the gunicorn master: the first at normal priority, the others at the lowest
        while they preload, so that the first job's framework imports on a core of
        its own (the imports are seconds of CPU each)."""
        if not self.warm_spares:
            return
        for index, framework in enumerate(frameworks):
            self.pool.get(framework, self.child_env(), self.entry, low_priority=index > 0)

    prepare_spares = prepare

    def zygote_for(self, framework: str,
                   cancel: threading.Event | None = None) -> Zygote | None:
        """The framework's zygote, waiting while it starts; None where none can serve (a
        fresh interpreter is started instead). Raises :class:`JobFailed` when ``cancel``
        is set while it waits."""
        if not self.warm_spares or self._closed:
            return None
        zygote = self.pool.get(framework, self.child_env(), self.entry)
        if zygote is None:
            return None
        deadline = time.monotonic() + self.limits.spare_ready_seconds
        while not zygote.ready.wait(0.1) and time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                raise JobFailed("The server stopped while this job ran.", "stopped")
        if zygote.usable():
            return zygote
        log.warning("zygote %s cannot fork (%s): starting a fresh interpreter", framework,
                    zygote.why_not())
        return None

    def zygotes(self) -> dict[str, dict[str, Any]]:
        """Each zygote's state (``/healthz``, metrics): ready, fork-safe, memory."""
        return {zygote.framework: {"ready": zygote.usable(),
                                   "shared": zygote.proc is None,
                                   "rss_mb": round(zygote.rss_mb(), 1), **zygote.info}
                for zygote in self.pool.all()}

    # -- running -----------------------------------------------------------
    def run(self, job: PruneJob, staging: Path, *, brings_code: str | None = None,
            cancel: threading.Event | None = None,
            progress: ProgressListener | None = None) -> PruneResult:
        """Run ``job`` confined; put what it produced into ``staging`` (a server folder).

        ``job.inputs`` are server paths; the child sees links to them, read-only.
        ``brings_code`` says what in the job would run as code (None if nothing):
        such a job needs every wall. Setting ``cancel`` kills the child. ``progress``
        is called, about five times a second while the child runs, with the phase and
        fraction it last reported (only valid reports). Returns the result with every
        artifact in ``staging`` under the server's names. Raises :class:`JobFailed`
        with the reason on any failure.
        """
        staging = Path(staging)
        staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging_fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                             | os.O_CLOEXEC)
        try:
            seat = self.seats.acquire()
        except NoSeat as error:
            os.close(staging_fd)
            raise JobFailed(f"The server is busy: {error}. Submit the job again.",
                            "no_seat") from None
        slot = child = None
        try:
            slot = _Slot(self, job.inputs, seat, self._disk_mb(job), self.disk_mode)
            child = _Child(self, job.framework, slot, seat, staging_fd, job.output_stem,
                           cancel=cancel)
            self._await_ready(child, cancel)
            self._check_walls(child, brings_code)
            child.send_job(self._as_seen(job, child))
            self._wait(child, slot, cancel, progress)
            exited_at = time.monotonic()
            child.kill()  # the job is over: nothing of it may outlive its result
            child.reader.wait(10)
            result = self._result(child, slot, job, staging_fd)
            result.exited_at = exited_at
            return result
        except ZygoteUnavailable as error:
            raise JobFailed(f"Pruning failed: the pruning process could not start ({error}).",
                            "start") \
                from None
        finally:
            self._clean_up(child, slot, seat)
            os.close(staging_fd)

    def _clean_up(self, child: _Child | None, slot: _Slot | None, seat: Seat) -> None:
        """Kill what is left of the job, delete its slot, give its seat back; a step that
        fails is logged and never hides the job's own outcome."""
        for step in (child.close if child else None, slot.remove if slot else None,
                     lambda: self.seats.release(seat)):
            if step is None:
                continue
            try:
                step()
            except Exception:  # clean-up must go on, and never hide the outcome
                log.exception("sandbox clean-up after a job")

    def _disk_mb(self, job: PruneJob) -> int:
        if self.limits.disk_mb:
            return self.limits.disk_mb
        total = 0
        for path in job.inputs.values():
            try:
                total += os.stat(path).st_size
            except OSError:
                pass
        return disk.default_size_mb(total)

    def _await_ready(self, child: _Child, cancel: threading.Event | None = None) -> None:
        started = time.monotonic()
        while not child.reader.ready.wait(0.05):
            if cancel is not None and cancel.is_set():
                child.kill()
                raise JobFailed("The server stopped while this job ran.", "stopped")
            if child.exited(0) or time.monotonic() - started > self.limits.spare_ready_seconds:
                child.kill()
                raise JobFailed(self._death_reason(child, "the pruning process did not start"),
                                "start")
        if child.reader.received.confinement is None:
            child.kill()
            child.exited(2)
            raise JobFailed(self._death_reason(child, "the pruning process did not start"),
                            "start")

    def _check_walls(self, child: _Child, brings_code: str | None) -> None:
        missing = missing_walls(child.confinement.get("layers") or {})
        if brings_code and missing and self.mode == "strict":
            raise JobFailed(
                f"This job brings {brings_code}, which runs only inside the full sandbox, and "
                f"this server cannot build all of it: nothing provides {', '.join(missing)} "
                "isolation here. The server's operator can fix the kernel features (see the "
                "README's sandbox section) or set EDGEAI_SANDBOX=weak. Jobs whose files hold "
                "no code still run.", "refused_code")

    def _as_seen(self, job: PruneJob, child: _Child) -> PruneJob:
        """The job as the child sees it: its inputs in its ``inputs`` folder, its output
        folder in its own disk; a deadline for its optional steps (fine-tuning)."""
        confinement = child.confinement
        inputs_dir = str(confinement.get("inputs"))
        workdir = str(confinement.get("workdir"))
        deadline = time.time() + max(0.0, self.limits.timeout - 30)
        return replace(job, inputs={role: f"{inputs_dir}/{role}.upload" for role in job.inputs},
                       output_dir=f"{workdir}/out", options={**job.options, "deadline": deadline})

    def _wait(self, child: _Child, slot: _Slot, cancel: threading.Event | None,
              progress: ProgressListener | None) -> None:
        limits = self.limits
        deadline = time.monotonic() + limits.timeout
        while not child.exited(WATCH_SECONDS):
            if progress is not None:
                news = child.reader.progress()
                if news is not None:
                    progress(*news)
            stop = reason = None
            if child.reader.received.error:
                stop, reason = (f"Pruning failed: the job broke the sandbox's protocol: "
                                f"{child.reader.received.error}.", "protocol")
            elif cancel is not None and cancel.is_set():
                stop, reason = "The server stopped while this job ran.", "stopped"
            elif time.monotonic() > deadline:
                stop, reason = (f"The job took longer than the {limits.timeout} s limit "
                                "(EDGEAI_JOB_TIMEOUT) and was stopped.", "timeout")
            elif child.over_memory(limits.memory_mb):
                stop, reason = (f"The job used more than the {limits.memory_mb} MB memory "
                                "limit (EDGEAI_JOB_MEMORY_MB) and was stopped.", "memory")
            elif slot.full():
                stop, reason = self._disk_reason(slot), "disk"
            if stop:
                child.kill()
                raise JobFailed(stop, reason)

    def _disk_reason(self, slot: _Slot) -> str:
        setting = (f"EDGEAI_JOB_DISK_MB={self.limits.disk_mb}" if self.limits.disk_mb else
                   "EDGEAI_JOB_DISK_MB, by default 4 x the uploads + 1024 MB")
        return (f"The job filled its {slot.disk_mb} MB disk ({setting}) and was stopped.")

    def _result(self, child: _Child, slot: _Slot, job: PruneJob, staging_fd: int) -> PruneResult:
        received = child.reader.received
        if received.error:
            raise JobFailed(f"Pruning failed: the job broke the sandbox's protocol: "
                            f"{received.error}.", "protocol")
        result = received.result
        if result is None:
            crashed = self._death_reason(child, "the pruning process crashed")
            if slot.full(unmounted=True):
                raise JobFailed(f"{self._disk_reason(slot)} {crashed}", "disk")
            code = child.returncode()
            raise JobFailed(crashed, "cpu_time" if code == -signal.SIGXCPU else
                            "file_size" if code == -signal.SIGXFSZ else "crash")
        if not result.get("ok"):
            said = clean_text(result.get("error") or "Pruning failed for an unknown reason.",
                              MAX_ERROR_CHARS)
            if slot.full(unmounted=True):
                raise JobFailed(f"{self._disk_reason(slot)} What the job said: {said}", "disk")
            raise JobFailed(said)
        files = received.files
        if "model" not in files:
            raise JobFailed("The pruning process did not produce its model file.", "no_model")
        raw = result.get("report")
        if isinstance(raw, dict):
            raw = {**raw, "artifacts": self._artifacts(raw.get("artifacts"), files)}
        try:
            # The report is data: typed and bounded, with the server's own names for the
            # files (and its own account of the sandbox, set below), or the job fails.
            report = check_report({**raw, "sandbox": None} if isinstance(raw, dict) else raw)
        except ReportRejected as error:
            raise JobFailed(f"The job's report was refused: {error}", "report") from None
        for name in files.values():  # what the report does not list is not kept
            if name not in report["artifacts"].values():
                try:
                    os.unlink(name, dir_fd=staging_fd)
                except OSError:
                    pass
        report["sandbox"] = {**child.confinement, **_stats(result.get("stats")),
                             "bounds": self.bounds(), "disk_mb": slot.disk_mb,
                             "start_ms": round((child.reader.ready_at - child.started) * 1000, 1)
                             if child.reader.ready_at else None}
        return PruneResult(artifact=files["model"],
                           message=clean_text(result.get("message") or "", MAX_MESSAGE_CHARS),
                           report=report)

    @staticmethod
    def _artifacts(listed: Any, files: dict[str, str]) -> dict[str, str | None]:
        """The report's formats with the server's names of their files: the child names
        each format's file as it knew it, and sends a file once however many formats
        share it (a plan is both "model" and "plan"), so formats are matched to files
        through those names — compared, never used as paths. A format whose file never
        came has none; keys the channel would refuse are dropped."""
        listed = dict(itertools.islice(listed.items(), 64)) if isinstance(listed, dict) else {}
        by_child_name = {listed.get(key): name for key, name in files.items()
                         if isinstance(listed.get(key), str)}
        artifacts: dict[str, str | None] = {
            key: files.get(key) or (by_child_name.get(value) if isinstance(value, str)
                                    else None)
            for key, value in listed.items() if isinstance(key, str) and KEY.fullmatch(key)}
        artifacts["model"] = files["model"]
        return artifacts

    def _death_reason(self, child: _Child, what: str) -> str:
        code = child.returncode()
        if code is None:
            how = "it was stopped"
        elif code < 0:
            how = f"killed by {signal.Signals(-code).name}"
            if -code == signal.SIGXCPU:
                how += " (CPU time limit)"
            elif -code == signal.SIGXFSZ:
                how += " (file size limit)"
        else:
            how = f"exit code {code}"
        tail = child.log_tail()
        return f"Pruning failed: {what} ({how})." + (f" Last output: {tail}" if tail else "")

    def close(self) -> None:
        """Stop the zygotes (server shutdown), unless they are a shared pool's."""
        self._closed = True
        if self._own_pool:
            self.pool.close()
        try:
            os.close(self.slots_fd)
        except OSError:
            pass


def _stats(value: Any) -> dict[str, float]:
    """The child's own figures (warm-up, job seconds, peak memory), kept only as finite
    non-negative numbers under known names."""
    import math

    if not isinstance(value, dict):
        return {}
    return {key: round(float(value[key]), 3) for key in ("warm_up_seconds", "job_seconds",
                                                         "peak_rss_mb")
            if isinstance(value.get(key), (int, float)) and not isinstance(value[key], bool)
            and math.isfinite(value[key]) and 0 <= value[key] < 1e9}
