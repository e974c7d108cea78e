"""Runs one pruning job in a confined child process and returns its result.

Each job gets a fresh child (``python -m edgeai.sandbox.child``) that applies its
own limits, drops root, leaves the network namespace where the kernel allows,
and dies with the server. To keep framework import time out of a job's latency,
one *spare* child per framework is started ahead of time and waits, already
confined and warm, for the next job; a spare serves exactly one job, then a new
spare replaces it. A crash, a timeout, a memory bomb or a fork bomb in the child
fails that job with a reason and nothing else.
"""
from __future__ import annotations

import json
import logging
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgeai.pruning import PruneJob, PruneResult

log = logging.getLogger(__name__)

PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
_PASSTHROUGH_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "LD_LIBRARY_PATH")


class JobFailed(Exception):
    """The job ended without a result; ``str()`` is the reason shown to the user."""


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

    def child_limits(self) -> dict[str, int]:
        """The rlimits the child sets on itself."""
        return {
            "memory_mb": self.memory_mb,
            # CPU seconds: all threads count, and the spare's warm-up too.
            "cpu_seconds": (self.timeout + self.spare_ready_seconds) * max(1, self.threads) + 60,
            "file_mb": self.file_mb,
            "open_files": self.open_files,
            "processes": self.processes,
        }


def sandbox_user() -> tuple[int, int] | None:
    """The (uid, gid) jobs run as when the server is root: ``nobody``; else None."""
    if os.getuid() != 0:
        return None
    name = os.environ.get("EDGEAI_SANDBOX_USER", "nobody")
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


class SandboxSetupError(RuntimeError):
    """The sandbox cannot work with this data dir (raised at start-up)."""


def check_reachable(path: Path, uid: int, gid: int) -> None:
    """Raise :class:`SandboxSetupError` unless ``uid`` may traverse every folder down to
    ``path``: the child drops to that user and must reach its own folder."""
    for folder in [*reversed(Path(path).resolve().parents), Path(path).resolve()]:
        info = folder.stat()
        if info.st_uid == uid:
            bit = 0o100
        elif info.st_gid == gid:
            bit = 0o010
        else:
            bit = 0o001
        if not info.st_mode & bit:
            raise SandboxSetupError(
                f"The sandbox user (uid {uid}) cannot reach {path}: {folder} is mode "
                f"{oct(info.st_mode & 0o777)}. Put EDGEAI_DATA_DIR under folders others may "
                f"traverse (chmod o+x {folder}), or set EDGEAI_SANDBOX_USER.")


def interpreter_unreachable(uid: int, gid: int) -> str | None:
    """Why ``uid`` could not run this Python (its stdlib, packages or edgeai), or None."""
    import sysconfig

    paths = sysconfig.get_paths()
    folders = {Path(paths["stdlib"]), Path(paths["purelib"]), Path(paths["platlib"]),
               Path(PACKAGE_PARENT)}
    for folder in sorted(folders):
        try:
            check_reachable(folder, uid, gid)
        except SandboxSetupError as error:
            return (f"{error} Python or its packages live where the sandbox user cannot read "
                    "them, so jobs cannot drop root here; the other limits still apply. "
                    "Install Python where others can read it to get the privilege drop.")
    return None


class _Child:
    """One sandbox child process, from spawn to exit."""

    def __init__(self, sandbox: "Sandbox", framework: str):
        self.framework = framework
        self.log_path = sandbox.log_dir / f"{framework}-{os.getpid()}-{time.monotonic_ns()}.log"
        settings = {
            "framework": framework,
            "parent_pid": os.getpid(),
            "limits": sandbox.limits.child_limits(),
            "isolate_network": sandbox.isolate_network,
            "idle_dir": str(sandbox.idle_dir),
            "privilege_note": sandbox.privilege_note,
            "uid": sandbox.user[0] if sandbox.user else None,
            "gid": sandbox.user[1] if sandbox.user else None,
        }
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgeai.sandbox.child", json.dumps(settings)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                cwd=sandbox.idle_dir, env=sandbox.child_env(), start_new_session=True,
                close_fds=True,
            )
        self.ready = threading.Event()
        threading.Thread(target=self._await_ready, daemon=True, name="sandbox-ready").start()

    def _await_ready(self) -> None:
        for raw in self.proc.stdout:
            if raw.strip() == b"ready":
                self.ready.set()
                break
        # Drain whatever else the child prints so it can never block on a full pipe.
        for _ in self.proc.stdout:
            pass

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Kill the child and anything it started (its own session)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.error("sandbox child %s did not die", self.proc.pid)

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
        self.log_path.unlink(missing_ok=True)


class Sandbox:
    """Starts confined children and runs jobs in them; safe to use from many threads."""

    def __init__(self, root: Path, limits: Limits, *, warm_spares: bool = True,
                 isolate_network: bool = True):
        self.root = Path(root)
        self.limits = limits
        self.warm_spares = warm_spares
        self.isolate_network = isolate_network
        self.user = sandbox_user()
        self.idle_dir = self.root / "idle"
        self.log_dir = self.root / "logs"
        for path in (self.root, self.idle_dir, self.log_dir):
            path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)
        os.chmod(self.log_dir, 0o700)
        self.privilege_note = None
        if self.user:
            check_reachable(self.root, *self.user)
            self.privilege_note = interpreter_unreachable(*self.user)
            if self.privilege_note:
                log.warning("Sandbox children keep root: %s", self.privilege_note)
                self.user = None
        self._own(self.idle_dir)
        self._spares: dict[str, _Child] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- setup -------------------------------------------------------------
    def _own(self, path: Path) -> None:
        """Give ``path`` to the sandbox user (when dropping root), private otherwise."""
        os.chmod(path, 0o700)
        if self.user:
            os.chown(path, *self.user)

    def child_env(self) -> dict[str, str]:
        """A scrubbed environment: no secrets, no database path, bounded threads."""
        threads = str(self.limits.threads)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(self.idle_dir),
            "TMPDIR": str(self.idle_dir),
            "PYTHONPATH": PACKAGE_PARENT,
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
            "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            "TF_NUM_INTRAOP_THREADS": threads,
            "TF_NUM_INTEROP_THREADS": threads,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "TF_ENABLE_ONEDNN_OPTS": "0",
            "KERAS_BACKEND": "tensorflow",
            "CUDA_VISIBLE_DEVICES": "",
        }
        env.update({k: os.environ[k] for k in _PASSTHROUGH_ENV if k in os.environ})
        return env

    def prepare_spares(self, frameworks: tuple[str, ...]) -> None:
        """Start a warm spare for each framework now (server start-up)."""
        if not self.warm_spares:
            return
        for framework in frameworks:
            with self._lock:
                if framework not in self._spares and not self._closed:
                    self._spares[framework] = _Child(self, framework)

    def _take_child(self, framework: str) -> _Child:
        with self._lock:
            child = self._spares.pop(framework, None)
            if self.warm_spares and not self._closed:
                self._spares[framework] = _Child(self, framework)
        if child is None or not child.alive():
            if child is not None:
                child.close()
            child = _Child(self, framework)
        return child

    # -- running -----------------------------------------------------------
    def run(self, job: PruneJob, workdir: Path,
            cancel: threading.Event | None = None) -> PruneResult:
        """Run ``job`` confined in ``workdir`` (which must hold its inputs).

        Returns the result with ``artifact`` relative to ``job.output_dir``.
        Raises :class:`JobFailed` with the reason on any failure.
        """
        workdir = Path(workdir)
        self._own(workdir)
        for path in workdir.rglob("*"):
            if self.user:
                os.chown(path, *self.user)
        child = self._take_child(job.framework)
        try:
            return self._supervise(child, job, workdir, cancel)
        finally:
            child.close()

    def _supervise(self, child: _Child, job: PruneJob, workdir: Path,
                   cancel: threading.Event | None) -> PruneResult:
        limits = self.limits
        started = time.monotonic()
        while not child.ready.wait(0.2):
            if not child.alive() or time.monotonic() - started > limits.spare_ready_seconds:
                child.kill()
                raise JobFailed(self._death_reason(child, "the pruning process did not start"))
        try:
            child.proc.stdin.write((json.dumps({"job": job.to_dict(), "workdir": str(workdir)})
                                    + "\n").encode())
            child.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            child.kill()
            raise JobFailed(self._death_reason(child, "the pruning process exited early")) from None
        deadline = time.monotonic() + limits.timeout
        while True:
            try:
                child.proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if cancel is not None and cancel.is_set():
                child.kill()
                raise JobFailed("The server stopped while this job ran.")
            if time.monotonic() > deadline:
                child.kill()
                raise JobFailed(f"The job took longer than the {limits.timeout} s limit "
                                "(EDGEAI_JOB_TIMEOUT) and was stopped.")
            if child.rss_mb() > limits.memory_mb:
                child.kill()
                raise JobFailed(f"The job used more than the {limits.memory_mb} MB memory limit "
                                "(EDGEAI_JOB_MEMORY_MB) and was stopped.")
        result_path = workdir / "result.json"
        if not result_path.is_file():
            raise JobFailed(self._death_reason(child, "the pruning process crashed"))
        try:
            payload = json.loads(result_path.read_text())
        except (OSError, ValueError):
            raise JobFailed("The pruning process wrote an unreadable result.") from None
        if not payload.get("ok"):
            raise JobFailed(str(payload.get("error") or "Pruning failed for an unknown reason."))
        artifact = str(payload["artifact"])
        if Path(artifact).name != artifact or not (Path(job.output_dir) / artifact).is_file():
            raise JobFailed("The pruning process did not produce its model file.")
        return PruneResult(artifact=artifact, message=str(payload.get("message", "")),
                           report=payload.get("report") or {})

    def _death_reason(self, child: _Child, what: str) -> str:
        code = child.proc.poll()
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
        """Stop the spares (server shutdown)."""
        with self._lock:
            self._closed = True
            spares, self._spares = list(self._spares.values()), {}
        for child in spares:
            child.kill()
            child.close()


def limits_from_settings(settings) -> Limits:  # noqa: ANN001 - edgeai.config.Settings
    """Build :class:`Limits` from the service settings."""
    return Limits(timeout=settings.job_timeout, memory_mb=settings.job_memory_mb,
                  threads=settings.job_threads)


__all__ = ["JobFailed", "Limits", "Sandbox", "SandboxSetupError", "check_reachable",
           "limits_from_settings", "sandbox_user"]
