"""Seats: what each running job owns alone on this host — a uid and a set of cores.

Every job runs as a uid of its own, taken from a small range
(``EDGEAI_SANDBOX_UIDS``, default 64000-64063), so that the kernel's per-user
budgets are per job: ``RLIMIT_NPROC`` counts the processes and threads of one
user, and one job's thousand sleeping threads must not stop another job's threads
from starting. The seat's cores (``EDGEAI_JOB_THREADS`` of them) are chosen so
that jobs running at the same time do not share cores where there are enough:
seat *i* takes the *i*-th group of cores, and the lowest free seat is taken first.

A seat is held with an exclusive ``flock`` on a file named after its uid in a
host-wide folder (``/run/edgeai/seats`` for root): every server process, worker and
test on the host shares the range, and a process that dies releases its seats with
its descriptors. Before a seat is handed out, any process still running as its uid
(a job that outlived a killed server) is killed: a uid is never shared by two jobs.
"""
from __future__ import annotations

import fcntl
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_UIDS = "64000-64063"


class NoSeat(RuntimeError):
    """Every seat of the range is taken (more jobs at once than uids in the range)."""


def parse_uid_range(text: str) -> range:
    """``"64000-64063"`` (inclusive) or ``"64000"`` as a range of uids; raises ValueError."""
    first, sep, last = text.strip().partition("-")
    low, high = int(first), int(last) if sep else int(first)
    if not 0 < low <= high < 2**31 - 1:
        raise ValueError(f"not a uid range: {text!r} (e.g. {DEFAULT_UIDS})")
    return range(low, high + 1)


def seats_folder() -> Path:
    """The host-wide folder of seat locks: /run/edgeai/seats for root, else one per user."""
    if os.geteuid() == 0:
        base = Path("/run/edgeai") if os.path.isdir("/run") else Path("/var/run/edgeai")
    else:
        base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) \
            / f"edgeai-{os.geteuid()}"
    folder = base / "seats"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def processes_of(uid: int) -> list[int]:
    """Pids of the live processes whose real uid is ``uid`` (read from /proc; zombies,
    dead and waiting for their parent to reap them, are not counted)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as handle:
                state = b""
                for line in handle:
                    if line.startswith(b"State:"):
                        state = line.split()[1]
                    elif line.startswith(b"Uid:"):
                        if int(line.split()[1]) == uid and state not in (b"Z", b"X"):
                            pids.append(int(entry.name))
                        break
        except (OSError, ValueError, IndexError):
            pass
    return pids


def kill_uid(uid: int, timeout: float = 5.0) -> bool:
    """SIGKILL every process running as ``uid`` until none is left (or ``timeout``);
    True when none is left. Only for a seat's uid, never the server's."""
    if uid in (0, os.getuid()):
        raise ValueError(f"refusing to kill every process of uid {uid}")
    deadline = time.monotonic() + timeout
    while True:
        pids = processes_of(uid)
        if not pids:
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


@dataclass
class Seat:
    """One held seat: the job's ``uid`` (and gid, the same number), its ``cpus``."""

    index: int
    uid: int | None
    cpus: tuple[int, ...]
    _fd: int = field(default=-1, repr=False)

    @property
    def gid(self) -> int | None:
        return self.uid


class Seats:
    """Hands out seats: a uid from ``uids`` (None when the server is not root: a user
    namespace can map only the server's own uid) and ``threads`` cores each."""

    def __init__(self, uids: range | None, threads: int = 1, folder: Path | None = None):
        self.uids = uids if os.geteuid() == 0 else None
        self.threads = max(1, threads)
        self.cores = sorted(os.sched_getaffinity(0))
        self.folder = folder or seats_folder()
        self._lock = threading.Lock()
        self.size = len(self.uids) if self.uids is not None else 256

    def cpus_for(self, index: int) -> tuple[int, ...]:
        """The cores of seat ``index``: its group of ``threads`` cores, round robin."""
        per = min(self.threads, len(self.cores))
        groups = max(1, len(self.cores) // per)
        start = (index % groups) * per
        return tuple(self.cores[start:start + per])

    def describe(self) -> dict:
        """What /healthz and the reports say about per-job processes and cores."""
        return {"uids": f"{self.uids.start}-{self.uids.stop - 1}" if self.uids else None,
                "cores": self.cores, "threads_per_job": self.threads}

    def acquire(self, timeout: float = 30.0) -> Seat:
        """Take the lowest free seat, waiting up to ``timeout`` seconds for one; raises
        :class:`NoSeat`. Processes left running as the seat's uid are killed first."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                for index in range(self.size):
                    seat = self._try(index)
                    if seat is not None:
                        return seat
            if time.monotonic() > deadline:
                raise NoSeat(f"all {self.size} sandbox seats are taken "
                             "(EDGEAI_SANDBOX_UIDS is smaller than the jobs running at once)")
            time.sleep(0.05)

    def _try(self, index: int) -> Seat | None:
        name = str(self.uids[index]) if self.uids is not None else f"seat-{index}"
        fd = os.open(self.folder / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        uid = self.uids[index] if self.uids is not None else None
        if uid is not None and not kill_uid(uid):
            os.close(fd)  # something of this uid will not die: never share it
            return None
        return Seat(index=index, uid=uid, cpus=self.cpus_for(index), _fd=fd)

    def release(self, seat: Seat) -> None:
        """Give the seat back, after every process of its uid is gone."""
        if seat.uid is not None:
            kill_uid(seat.uid)
        if seat._fd >= 0:
            os.close(seat._fd)
            seat._fd = -1
