"""Runs one job in a confined child process and brings back only what it should.

Each child is started with its own empty *slot* folder, the one place it may
write, and confines itself (:mod:`edgeai.sandbox.confine`) before it imports its
framework. To keep the framework's import out of a job's latency, one *spare*
child per framework is started ahead of time and waits, already confined and
warm; when a job comes, its inputs are linked into that spare's slot and the
job is handed over. A child serves one job, then exits; its slot is deleted.

Everything the child leaves behind is hostile input: the result file is read
without following links and with a size bound, artifacts must be plain files
with bare names, and text that reaches the client is bounded in length. Before
a job that brings code (a class file, a SavedModel, a pickle) is handed to a
child, the child's own report of its layers must show every wall in force, or
the job is refused (``EDGEAI_SANDBOX=weak`` lets it run anyway, announced).
"""
from __future__ import annotations

import json
import logging
import math
import os
import pwd
import shutil
import signal
import stat
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
from edgeai.pruning.progress import JOB_PHASES
from edgeai.sandbox.limits import Limits

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
}
MAX_RESULT_BYTES = 16 << 20
MAX_PROGRESS_BYTES = 512
MAX_MESSAGE_CHARS = 64 * 1024
MAX_ERROR_CHARS = 2000
MAX_LOG_TAIL_CHARS = 600
STDERR_TAIL_BYTES = 8192


class JobFailed(Exception):
    """The job ended without a result; ``str()`` is the reason shown to the user."""


def missing_walls(layers: dict[str, Any]) -> list[str]:
    """The walls (see :data:`WALLS`) that no layer in ``layers`` provides."""
    missing = [wall for wall, provided_by in WALLS.items()
               if not any(layers.get(layer) for layer in provided_by)]
    landlock = layers.get("landlock") or {}
    if "network" in missing and landlock.get("net") and layers.get("seccomp"):
        missing.remove("network")  # TCP denied by Landlock, other families by seccomp
    return missing


def sandbox_user() -> tuple[int, int] | None:
    """The (uid, gid) jobs run as when the server is root (``EDGEAI_SANDBOX_USER``,
    default ``nobody``); None otherwise."""
    if os.getuid() != 0:
        return None
    entry = pwd.getpwnam(os.environ.get("EDGEAI_SANDBOX_USER", "nobody"))
    return entry.pw_uid, entry.pw_gid


ProgressListener = Callable[[str, "float | None"], None]


class SlotFileError(Exception):
    """A file the child left in its slot cannot be taken: ``kind`` is "missing",
    "unusable" (not a plain file, or too big) or "unreadable" (not JSON)."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


def read_slot_json(path: Path, limit: int) -> Any:
    """The JSON in ``path``, a file the child wrote: untrusted, so opened without
    following a link or blocking on a pipe, and taken only as a plain file of at most
    ``limit`` bytes. Raises :class:`SlotFileError` saying what was wrong."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        raise SlotFileError("missing") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            raise SlotFileError("unusable")
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        raise SlotFileError("unusable") from None
    finally:
        os.close(fd)
    if size > limit:  # it grew after the fstat
        raise SlotFileError("unusable")
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        raise SlotFileError("unreadable") from None


def read_progress(slot: Path) -> tuple[str, float | None] | None:
    """The child's ``progress.json`` in ``slot`` as (phase, fraction), or None when it
    is missing or anything about it is off: read by :func:`read_slot_json` (at most
    :data:`MAX_PROGRESS_BYTES`), a JSON object whose ``phase`` is one of the pipeline's
    (:data:`edgeai.pruning.progress.JOB_PHASES`) and whose ``progress`` is null or a
    finite number in [0, 1]. Anything else is ignored, never an error.
    """
    try:
        payload = read_slot_json(slot / "progress.json", MAX_PROGRESS_BYTES)
    except SlotFileError:
        return None
    if not isinstance(payload, dict) or payload.get("phase") not in JOB_PHASES:
        return None
    fraction = payload.get("progress")
    if fraction is None:
        return payload["phase"], None
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not math.isfinite(fraction) or not 0 <= fraction <= 1:
        return None
    return payload["phase"], float(fraction)


def bounded(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying so."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + f" ... [{len(text) - limit} more]"


class _Child:
    """One sandbox child process and its slot, from spawn to exit."""

    def __init__(self, sandbox: Sandbox, framework: str, probe: bool = False):
        self.framework = framework
        self.sandbox = sandbox
        self.slot = sandbox.new_slot()
        self.confinement: dict[str, Any] = {}
        # The last bytes the child wrote to stderr, for the reason of a crash: a pipe
        # into memory, so a chatty or hostile job cannot fill the server's disk.
        self.stderr_tail = bytearray()
        settings = {"framework": framework, "entry": sandbox.entry,
                    "confine": sandbox.confine_spec(self.slot)}
        argv = [sys.executable, "-m", "edgeai.sandbox.child", json.dumps(settings)]
        self.proc = subprocess.Popen(
            [*argv, "--probe"] if probe else argv, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/", env=sandbox.child_env(),
            start_new_session=True, close_fds=True)
        self.ready = threading.Event()
        threading.Thread(target=self._await_ready, daemon=True, name="sandbox-ready").start()
        threading.Thread(target=self._keep_stderr_tail, daemon=True,
                         name="sandbox-stderr").start()

    def _keep_stderr_tail(self) -> None:
        try:
            for chunk in iter(lambda: self.proc.stderr.read1(65536), b""):
                self.stderr_tail += chunk
                del self.stderr_tail[:-STDERR_TAIL_BYTES]
        except (OSError, ValueError):  # the pipe was closed: the child is gone
            pass

    def _await_ready(self) -> None:
        try:
            for raw in self.proc.stdout:
                word, _, payload = raw.strip().partition(b" ")
                if word == b"ready":
                    try:
                        self.confinement = json.loads(payload[:MAX_RESULT_BYTES])
                    except ValueError:
                        self.confinement = {}
                    self.ready.set()
                    break
            # Drain whatever else the child prints (in chunks: no line is ever held whole)
            # so that it can never block on a full pipe.
            for _ in iter(lambda: self.proc.stdout.read1(65536), b""):
                pass
        except (OSError, ValueError):  # the pipe was closed: the child is gone
            pass

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _tree(self) -> list[int]:
        """The child and all its descendants (the job's PID namespace included)."""
        pids, queue = [], [self.proc.pid]
        while queue:
            pid = queue.pop()
            pids.append(pid)
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as handle:
                    queue.extend(int(p) for p in handle.read().split())
            except (OSError, ValueError):
                pass
        return pids

    def kill(self) -> None:
        """Kill the child and anything it started, even a process that left its session."""
        tree = self._tree()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.error("sandbox child %s did not die", self.proc.pid)

    def rss_mb(self) -> float:
        """Resident memory of the child's whole process tree, in MB."""
        total = 0
        for pid in self._tree():
            try:
                with open(f"/proc/{pid}/status") as handle:
                    for line in handle:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
            except (OSError, ValueError):
                pass
        return total / 1024

    def log_tail(self, lines: int = 3) -> str:
        """The last ``lines`` lines the child wrote to stderr, bounded."""
        text = bytes(self.stderr_tail).decode(errors="replace").strip().splitlines()
        return bounded(" | ".join(text[-lines:]), MAX_LOG_TAIL_CHARS)

    def close(self) -> None:
        """Release the pipes and delete the slot (the child is dead by now)."""
        if self.alive():
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
        shutil.rmtree(self.slot, ignore_errors=True)


class Sandbox:
    """Starts confined children and runs jobs in them; safe to use from many threads.

    ``mode`` is ``strict`` (jobs that bring code need every wall) or ``weak``;
    ``skip`` names layers not to build (operators whose kernel misbehaves, tests);
    ``hidden`` are paths a child must not be able to read (the data dir), checked
    by every child after it confined itself. ``entry`` (``module:function``) replaces
    the engine inside the child; the confinement tests use it to run code no engine
    would run.
    """

    def __init__(self, root: Path, limits: Limits, *, warm_spares: bool = True,
                 mode: str = "strict", skip: tuple[str, ...] = (),
                 hidden: tuple[str, ...] = (), extra_read_only: tuple[str, ...] = (),
                 entry: str | None = None):
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
        self.user = sandbox_user()
        self.slots_dir = self.root / "slots"
        for path in (self.root, self.slots_dir):
            path.mkdir(parents=True, exist_ok=True)
            # Traverse-only: without a view (a kernel that refuses one) the sandbox user
            # must still reach its own slot; it can never list what else is here.
            os.chmod(path, 0o711)
        self._remove_orphan_slots()
        self._spares: dict[str, _Child] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.status: dict[str, Any] = {}

    # -- setup -------------------------------------------------------------
    def _remove_orphan_slots(self) -> None:
        """Delete slots left by server processes that no longer exist."""
        for slot in self.slots_dir.iterdir():
            owner = slot.name.split("-", 1)[0]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                shutil.rmtree(slot, ignore_errors=True)

    def new_slot(self) -> Path:
        """An empty folder that only the sandbox user may use."""
        slot = self.slots_dir / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        slot.mkdir(mode=0o700)
        if self.user:
            os.chown(slot, *self.user)
        return slot

    def confine_spec(self, slot: Path) -> dict[str, Any]:
        """What the child passes to :func:`edgeai.sandbox.confine.confine`."""
        return {"parent_pid": os.getpid(), "limits": self.limits.child_limits(),
                "slot": str(slot), "uid": self.user[0] if self.user else None,
                "gid": self.user[1] if self.user else None, "skip": list(self.skip),
                "hidden": list(self.hidden), "extra_read_only": list(self.extra_read_only),
                "tmpfs_mb": self.limits.tmpfs_mb}

    def child_env(self) -> dict[str, str]:
        """A scrubbed environment: no secrets, no database path, bounded threads."""
        threads = str(self.limits.threads)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
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

    def probe(self, timeout: float = 60) -> dict[str, Any]:
        """Start a child that only confines itself and reports; remember and log what
        is in force (``self.status``, shown by ``/healthz`` and every job's report)."""
        child = _Child(self, "probe", probe=True)
        try:
            child.ready.wait(timeout)
            confinement = child.confinement or {
                "layers": {}, "notes": {"probe": child.log_tail() or "the probe did not start"}}
        finally:
            child.close()
        missing = missing_walls(confinement.get("layers") or {})
        self.status = {"mode": self.mode, **confinement, "missing_walls": missing,
                       "code_jobs": "refused" if missing and self.mode == "strict" else "run"}
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
    def run(self, job: PruneJob, staging: Path, *, brings_code: str | None = None,
            cancel: threading.Event | None = None,
            progress: ProgressListener | None = None) -> PruneResult:
        """Run ``job`` confined; move what it produced into ``staging`` (a server folder).

        ``job.inputs`` are server paths; the child gets links to them in its slot.
        ``brings_code`` says what in the job would run as code (None if nothing):
        such a job needs every wall. Setting ``cancel`` kills the child. ``progress``
        is called, about five times a second while the child runs, with the phase and
        fraction it last reported (:func:`read_progress`; only valid reports). Returns
        the result with ``artifact`` (and every file named in ``report["artifacts"]``)
        in ``staging``. Raises :class:`JobFailed` with the reason on any failure.
        """
        child = self._take_child(job.framework)
        try:
            self._await_ready(child)
            self._check_walls(child, brings_code)
            return self._supervise(child, self._hand_over(child, job), Path(staging), cancel,
                                   progress)
        finally:
            child.close()

    def _await_ready(self, child: _Child) -> None:
        started = time.monotonic()
        while not child.ready.wait(0.2):
            if not child.alive() or time.monotonic() - started > self.limits.spare_ready_seconds:
                child.kill()
                raise JobFailed(self._death_reason(child, "the pruning process did not start"))

    def _check_walls(self, child: _Child, brings_code: str | None) -> None:
        missing = missing_walls(child.confinement.get("layers") or {})
        if brings_code and missing and self.mode == "strict":
            raise JobFailed(
                f"This job brings {brings_code}, which runs only inside the full sandbox, and "
                f"this server cannot build all of it: nothing provides {', '.join(missing)} "
                "isolation here. The server's operator can fix the kernel features (see the "
                "README's sandbox section) or set EDGEAI_SANDBOX=weak. Jobs whose files hold "
                "no code still run.")

    def _hand_over(self, child: _Child, job: PruneJob) -> PruneJob:
        """Link the inputs into the child's slot; return the job as the child sees it
        (the slot is ``/job`` in the child's view)."""
        inputs_dir, output_dir = child.slot / "inputs", child.slot / "out"
        inputs_dir.mkdir(mode=0o755)
        output_dir.mkdir(mode=0o700)
        if self.user:
            os.chown(output_dir, *self.user)
        seen_as = child.confinement.get("workdir") or str(child.slot)
        inputs = {}
        for role, source in job.inputs.items():
            target = inputs_dir / f"{role}.upload"
            try:
                os.link(source, target)
            except OSError:  # another file system
                shutil.copyfile(source, target)
            os.chmod(target, 0o444)  # readable by the sandbox user, never writable
            inputs[role] = f"{seen_as}/inputs/{target.name}"
        # The job may plan its optional steps (fine-tuning) against its time limit.
        deadline = time.time() + max(0.0, self.limits.timeout - 30)
        return replace(job, inputs=inputs, output_dir=f"{seen_as}/out",
                       options={**job.options, "deadline": deadline})

    def _supervise(self, child: _Child, job: PruneJob, staging: Path,
                   cancel: threading.Event | None,
                   progress: ProgressListener | None) -> PruneResult:
        try:
            child.proc.stdin.write((json.dumps({"job": job.to_dict()}) + "\n").encode())
            child.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            child.kill()
            raise JobFailed(self._death_reason(child, "the pruning process exited early")) from None
        self._wait(child, cancel, progress)
        payload = self._read_result(child)
        if not payload.get("ok"):
            raise JobFailed(bounded(payload.get("error") or "Pruning failed for an unknown "
                                    "reason.", MAX_ERROR_CHARS))
        report = payload.get("report") if isinstance(payload.get("report"), dict) else {}
        artifact = payload.get("artifact")
        names = {artifact, *(name for name in (report.get("artifacts") or {}).values() if name)}
        moved = {name: self._collect(child.slot / "out", str(name), staging) for name in names}
        if not moved.get(artifact):
            raise JobFailed("The pruning process did not produce its model file.")
        report["artifacts"] = {key: name if moved.get(name) else None
                               for key, name in (report.get("artifacts") or {}).items()}
        return PruneResult(artifact=str(artifact),
                           message=bounded(payload.get("message") or "", MAX_MESSAGE_CHARS),
                           report=report)

    def _wait(self, child: _Child, cancel: threading.Event | None,
              progress: ProgressListener | None) -> None:
        limits = self.limits
        deadline = time.monotonic() + limits.timeout
        while True:
            try:
                child.proc.wait(timeout=0.2)
                return
            except subprocess.TimeoutExpired:
                pass
            if progress is not None:
                news = read_progress(child.slot)
                if news is not None:
                    progress(*news)
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

    def _read_result(self, child: _Child) -> dict[str, Any]:
        """The child's ``result.json``, read by :func:`read_slot_json` (at most
        :data:`MAX_RESULT_BYTES`) and a JSON object, or the job fails saying why."""
        try:
            payload = read_slot_json(child.slot / "result.json", MAX_RESULT_BYTES)
        except SlotFileError as error:
            if error.kind == "missing":
                raise JobFailed(self._death_reason(child, "the pruning process crashed")) \
                    from None
            raise JobFailed(f"The pruning process wrote an {error.kind} result.") from None
        if not isinstance(payload, dict):
            raise JobFailed("The pruning process wrote an unreadable result.")
        return payload

    def _collect(self, output_dir: Path, name: str, staging: Path) -> bool:
        """Move ``output_dir/name`` into ``staging`` if it is a plain file with a bare
        name (never a link, a device or a second name of another file)."""
        if not name or Path(name).name != name or name.startswith("."):
            return False
        source = output_dir / name
        try:
            info = os.lstat(source)
        except OSError:
            return False
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            return False
        staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = staging / name
        try:
            os.rename(source, target)
        except OSError:
            shutil.copyfile(source, target, follow_symlinks=False)
        # The child is dead and ``staging`` is the server's own: no link can appear here.
        os.chmod(target, 0o600)
        if os.getuid() == 0:
            os.chown(target, 0, 0)
        return True

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
            child.close()
