"""What one job may use: resource limits the sandbox child sets on itself."""
from __future__ import annotations

import resource
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What one job may use."""

    timeout: int = 1800
    memory_mb: int = 8192
    threads: int = 1
    file_mb: int = 4096
    open_files: int = 512
    processes: int = 1024
    spare_ready_seconds: int = 120
    # The job's own disk (its folder and /tmp); 0: four times its uploads plus 1 GB.
    disk_mb: int = 0
    # /dev/shm, the one in-memory folder of the job's view (counted apart from memory_mb).
    tmpfs_mb: int = 64

    def child_limits(self) -> dict[str, int]:
        """The rlimits the child sets on itself."""
        return {
            "memory_mb": self.memory_mb,
            # CPU seconds: all threads count, and the child's warm-up too.
            "cpu_seconds": (self.timeout + self.spare_ready_seconds) * max(1, self.threads) + 60,
            "file_mb": self.file_mb,
            "open_files": self.open_files,
            "processes": self.processes,
        }


def limits_from_settings(settings) -> Limits:
    """Build :class:`Limits` from the service settings."""
    return Limits(timeout=settings.job_timeout, memory_mb=settings.job_memory_mb,
                  threads=settings.job_threads, disk_mb=settings.job_disk_mb)


def set_limits(limits: dict[str, int]) -> None:
    """Apply resource limits (``memory_mb``, ``cpu_seconds``, ``file_mb``, ``open_files``)
    and forbid core dumps. ``processes`` is applied by :func:`limit_processes` once the
    process no longer runs as root (the kernel ignores RLIMIT_NPROC for root)."""
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


def limit_processes(limits: dict[str, int]) -> None:
    """RLIMIT_NPROC: processes and threads of the job's user."""
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))
