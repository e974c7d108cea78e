"""Pruning on this machine with no server: the server's pipeline in the server's sandbox.

A :class:`LocalJob` checks its parameters and files with the API's own readers
(:func:`edgeai.api.params.read_params`, :func:`~edgeai.api.params.read_files`),
builds the engine's job with the queue's :func:`edgeai.queue.build_job` and runs
it with :meth:`edgeai.sandbox.Sandbox.run`, as a server worker does, in a
throw-away data folder. It answers the same questions as :class:`edgeai.client.Job`
(``status()``, ``wait()``, ``download()``, ``cancel()``, ``report``), so
``edgeai prune`` drives either the same way. The sandbox needs root or user
namespaces, as on a server.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeai.client import (
    TERMINAL_STATES,
    JobFailed,
    ProgressCallback,
    as_callback,
    job_state,
    safe_file_name,
    save_chunks,
)
from edgeai.db.models import STATUS_CODES

log = logging.getLogger(__name__)


def checked_params(framework: str, files: Mapping[str, Path],
                   raw: Mapping[str, str]) -> dict[str, Any]:
    """The job's parameters as the server would store them, after the server's checks
    of the parameters and the files. Raises :class:`edgeai.errors.BadRequest`."""
    from werkzeug.datastructures import FileStorage

    from edgeai.api.params import inspect_uploads, read_files, read_params
    from edgeai.pruning import spec_for

    spec = spec_for(framework)
    handles = {role: open(path, "rb") for role, path in files.items()}
    try:
        uploads = {role: FileStorage(stream=handle, filename=Path(files[role]).name, name=role)
                   for role, handle in handles.items()}
        read_files(spec.files, uploads, {})
        values = read_params(spec.params, raw, set(uploads), spec.checker())
        inspect_uploads(spec.inspect, values, uploads)
        return values
    finally:
        for handle in handles.values():
            handle.close()


class LocalJob:
    """One prune run here, in a background thread; see the module docstring.

    ``files`` are the inputs by role (``model``, or ``weights`` and ``class_def``;
    ``dataset``, ``plan``), ``raw`` the parameters as query text. Settings
    (limits, sandbox mode) come from the ``EDGEAI_*`` environment. Raises
    :class:`edgeai.errors.BadRequest` for a parameter or file the server would refuse.
    """

    txid = "local"

    def __init__(self, framework: str, files: Mapping[str, Path], raw: Mapping[str, str]):
        self.framework = framework
        self.files = {role: Path(path) for role, path in files.items()}
        self.params = checked_params(framework, self.files, raw)
        self.folder = Path(tempfile.mkdtemp(prefix="edgeai-local-"))
        self.folder.chmod(0o711)  # the sandbox user reaches its slot through it
        self.staging = self.folder / "work"
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        # Notified on every change: a waiting display sees each phase, however short.
        self._changed = threading.Condition(self._lock)
        self.last_status: dict[str, Any] = {"status": "1", "state": "queued", "txid": self.txid,
                                            "phase": "queued", "progress": None,
                                            "message": "Starting the sandbox."}
        self._thread = threading.Thread(target=self._run, name="edgeai-local", daemon=True)
        self._thread.start()

    def _set(self, **values: Any) -> None:
        with self._lock:
            self.last_status = {**self.last_status, **values}
            self.last_status["status"] = STATUS_CODES[self.last_status["state"]]
            self._changed.notify_all()

    def _run(self) -> None:
        from edgeai.config import load_settings
        from edgeai.db import Transaction
        from edgeai.pruning import get_engine
        from edgeai.queue import build_job
        from edgeai.runner import sandbox_for
        from edgeai.sandbox import JobFailed as SandboxJobFailed

        started = time.time()
        try:
            settings = load_settings().replace(data_dir=self.folder / "data", warm_spares=False)
            sandbox = sandbox_for(settings)
            inputs = self._copy_inputs()
            row = Transaction(framework=self.framework, params=self.params,
                              input_names={role: path.name for role, path in self.files.items()})
            job = build_job(row, inputs)
            self._set(state="running", phase=None, started_at=started, message="Pruning.")
            try:
                result = sandbox.run(job, self.staging, cancel=self._cancel,
                                     brings_code=get_engine(self.framework).untrusted_code(job),
                                     progress=self._progress)
            finally:
                sandbox.close()
            report = dict(result.report)
            report["artifacts"] = {**(report.get("artifacts") or {}), "model": result.artifact}
            self._set(state="done", phase="done", progress=1.0, message=result.message,
                      filename=result.artifact, report=report, finished_at=time.time())
        except SandboxJobFailed as error:
            self._set(state="failed", message=str(error), finished_at=time.time())
        except Exception as error:  # every run ends in a terminal state
            log.exception("local run")
            self._set(state="failed", finished_at=time.time(),
                      message=f"Internal error while pruning: {type(error).__name__}: {error}")

    def _progress(self, phase: str, fraction: float | None) -> None:
        """What the sandboxed child reports, shown as a server's status shows it."""
        self._set(phase=phase, progress=fraction)

    def _copy_inputs(self) -> dict[str, Path]:
        """Copies of the user's files: the sandbox makes its inputs read-only and links
        them, which must not touch the originals."""
        fetched = self.staging / "fetched"
        fetched.mkdir(parents=True)
        copies = {}
        for role, path in self.files.items():
            copies[role] = fetched / f"{role}{path.suffix}"
            shutil.copyfile(path, copies[role])
        return copies

    def status(self) -> dict[str, Any]:
        """The run's status, shaped like the server's status body."""
        with self._lock:
            return dict(self.last_status)

    @property
    def report(self) -> dict[str, Any] | None:
        """The typed report once the run is done (None before)."""
        return self.status().get("report")

    def wait(self, progress: bool | ProgressCallback = False, timeout: float | None = None,
             poll: float = 0.5) -> dict[str, Any]:
        """Wait for the run to end; return its final status (see
        :meth:`edgeai.client.Job.wait`): ``progress`` gets the status at once, on every
        change (each phase, however short) and at least every ``poll`` seconds. Raises
        JobFailed or TimeoutError."""
        report = as_callback(progress)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            alive = self._thread.is_alive()
            status = self.status()
            if report:
                report(status)
            if not alive or job_state(status) in TERMINAL_STATES:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"local run still {job_state(status)} after {timeout} s")
            with self._changed:
                if self.last_status == status:
                    self._changed.wait(poll)
        self._thread.join(poll)  # it ends right after its last change
        if status["state"] != "done":
            raise JobFailed(str(status.get("message")), None, status)
        return status

    def download(self, path: str | Path, format: str | None = None, *,
                 overwrite: bool = False) -> Path:
        """Copy the pruned model (or ``format``) to ``path`` (a folder keeps the artifact's
        name), never over an existing file unless ``overwrite``, as
        :meth:`edgeai.client.Job.download`. Raises JobFailed when the run is not done or
        made no such file, OutputExists, ClientError for a name the client will not use."""
        status = self.status()
        artifacts = (status.get("report") or {}).get("artifacts") or {}
        name = artifacts.get(format or "model")
        if status["state"] != "done" or not name:
            raise JobFailed(f"No {format or 'model'} file: the run is {status['state']}; "
                            f"made: {', '.join(k for k, v in artifacts.items() if v) or 'none'}.",
                            None, status)
        name = safe_file_name(name)
        target = Path(path)
        if target.is_dir():
            target = target / name
        with open(self.staging / name, "rb") as source:
            return save_chunks(iter(lambda: source.read(1 << 20), b""), target, overwrite)

    def cancel(self) -> dict[str, Any]:
        """Stop the run (its sandboxed child is killed)."""
        self._cancel.set()
        return {"message": "Cancelled."}

    def close(self) -> None:
        """Stop the run if it still goes and delete its folder."""
        self._cancel.set()
        self._thread.join(30)
        from edgeai.sandbox.removal import remove_tree

        remove_tree(self.folder)  # the job's child wrote in it: any depth, any links
