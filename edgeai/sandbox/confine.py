"""Confinement a sandbox child applies to itself before it reads any job.

Doing it in the child's first lines (rather than in a ``preexec_fn``) keeps the
server's threads out of the fork-exec window. Runs before the framework is
imported, so every limit also binds the framework.
"""
from __future__ import annotations

import ctypes
import os
import resource
import signal
from typing import Any

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
NOBODY_UID = 65534


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when the server dies.

    Without it a job's child would outlive a killed server and keep burning
    CPU on a job the restarted server will run again.
    """
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(70)


def isolate_network() -> bool:
    """Move into a new, empty network namespace; return False where not permitted."""
    return _libc().unshare(CLONE_NEWNET) == 0


def set_limits(limits: dict[str, int]) -> None:
    """Apply resource limits (``memory_mb``, ``cpu_seconds``, ``file_mb``, ``open_files``,
    ``processes``) and forbid core dumps."""
    memory = limits["memory_mb"] * 1024 * 1024
    # RLIMIT_DATA bounds what the job can really allocate; TensorFlow's import
    # reserves ~2.1 GB of address space it never touches, so RLIMIT_AS is only
    # a loose backstop above it.
    resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    address_space = max(2 * memory, memory + (6 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    cpu = limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    size = limits["file_mb"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # RLIMIT_NPROC counts the user's processes and threads; the kernel ignores it
    # for root, so it binds once drop_privileges() has run.
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` with no supplementary groups (only when running as root)."""
    if os.getuid() != 0:
        return
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() == 0:
        raise RuntimeError("could not drop root privileges")
