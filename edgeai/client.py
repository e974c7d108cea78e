"""A Python client for an edgeai server: submit, follow, download, cancel.

    from edgeai import Client
    job = Client("http://127.0.0.1:5000", client_id, secret).prune("model.h5", percent=0.4)
    job.wait(progress=True)          # raises JobFailed with the server's reason
    job.download("out.h5")
    job.report                       # params, MACs, sizes, per-layer channels

One :class:`Client` method per call of the API; a :class:`Job` follows one
transaction. Every error is a :class:`ClientError` carrying the server's own
message: :class:`AuthError` (the key was refused), :class:`ServerUnreachable`
(no answer at the URL) and :class:`JobFailed` (the job ended failed or expired).
Only ``requests`` is imported here: no Flask, TensorFlow or torch.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote

import requests

CLIENT_ID_HEADER = "X-IBM-Client-Id"
CLIENT_SECRET_HEADER = "X-IBM-Client-Secret"
TERMINAL_STATES = ("done", "failed", "expired")
# The guide's status codes, for servers whose status carries no ``state``.
STATES_BY_STATUS = {"0": "done", "1": "queued", "2": "running", "-1": "failed"}
# Files a PyTorch submission may carry; a Keras one carries ``model`` instead.
TORCH_FILES = ("weights", "class_def")
# The call a model file goes to, by its extension (Keras files: tf_prune).
MODEL_CALLS = {".pt2": "pt_prune", ".onnx": "onnx_prune"}
OPTIONAL_FILES = ("dataset", "plan")
CHUNK_BYTES = 1 << 20
# How long a status call asks the server to hold it while the job runs (the server's
# maximum is 30 s); with a progress display, the poll interval instead.
LONG_POLL_SECONDS = 25.0
# A progress display's first held call, in seconds; each next one holds half as long
# again, up to the poll interval: a job that ends within a second still shows its
# phases, and a long one is asked about once a poll interval.
FIRST_PROGRESS_HOLD = 0.2

ProgressCallback = Callable[[dict[str, Any]], None]


class ClientError(Exception):
    """The server refused a call or a job did not succeed; ``str()`` is the server's
    message. ``status_code`` is the HTTP status (None when there was no answer) and
    ``body`` the decoded JSON answer, if any."""

    def __init__(self, message: str, status_code: int | None = None,
                 body: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.body = dict(body or {})


class AuthError(ClientError):
    """The server refused the API key (HTTP 401 or 403)."""


class ServerUnreachable(ClientError):
    """Nothing answered at the server's URL (connection refused, DNS, timeout)."""


class KeyFileError(ClientError):
    """The key file cannot be used (others can read it, or it is not JSON)."""


class JobFailed(ClientError):
    """The job ended ``failed`` (or ``expired``); ``str()`` is the server's reason and
    ``body`` the last status."""


class OutputExists(ClientError, FileExistsError):
    """A download would replace a file that exists (pass ``overwrite=True`` to allow it)."""


# What a terminal would act on rather than show: escape sequences (CSI ``ESC [ ... final``,
# OSC/DCS/SOS/PM/APC strings up to BEL or ST, two-character ``ESC x``), C0 controls but
# tab and newline, DEL, C1 controls (0x9b is a CSI on its own) and the bidirectional
# overrides that make text read other than it shows.
_TERMINAL_CONTROLS = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?|\x9b[0-?]*[ -/]*[@-~]?"
    r"|\x1b[\]PX^_][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
    "|[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
MAX_FILE_NAME_BYTES = 255


def terminal_text(value: Any) -> str:
    """``value`` as text that is safe to print on a terminal: everything a terminal would
    interpret (see ``_TERMINAL_CONTROLS``) removed, tab and newline kept. Everything the
    server says is printed through this: it is data, not commands for the terminal."""
    return _TERMINAL_CONTROLS.sub("", str(value))


def safe_file_name(name: Any) -> str:
    """``name`` if it is a file name the client may create from what a server said: a
    bare name (no folder), not hidden, no control characters, at most 255 bytes.
    Raises ClientError saying why not."""
    text = name if isinstance(name, str) else ""
    if not text or text in (".", "..") or text.startswith(".") or "/" in text \
            or "\\" in text or terminal_text(text) != text or "\t" in text or "\n" in text \
            or len(text.encode("utf-8", "surrogateescape")) > MAX_FILE_NAME_BYTES:
        raise ClientError(f"The server named the file {terminal_text(repr(name))[:80]}, which "
                          "is not a plain file name; pass a file path to download() "
                          "instead of a folder.")
    return text


def save_chunks(chunks: Iterable[bytes], target: Path, overwrite: bool = False) -> Path:
    """Write ``chunks`` to ``target`` whole or not at all: into a new temporary file
    beside it, then linked into place (or, with ``overwrite``, renamed over it). Raises
    OutputExists when ``target`` exists and ``overwrite`` is false (checked when the
    file is placed, so a file that appears meanwhile is not replaced either)."""
    target = Path(target)
    if not overwrite and os.path.lexists(target):
        raise OutputExists(f"{target} exists; not replaced (overwrite=True replaces it).")
    handle, temporary = tempfile.mkstemp(dir=target.parent or ".",
                                         prefix=f".{target.name[:100]}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        if overwrite:
            os.replace(temporary, target)
            return target
        try:
            os.link(temporary, target)  # fails if anything has that name now
        except FileExistsError:
            raise OutputExists(f"{target} exists; not replaced (overwrite=True replaces "
                               "it).") from None
        except OSError:  # a file system without hard links
            if os.path.lexists(target):
                raise OutputExists(f"{target} exists; not replaced.") from None
            os.replace(temporary, target)
        return target
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def job_state(status: Mapping[str, Any]) -> str:
    """The state named in a status body: queued, running, done, failed or expired."""
    return str(status.get("state") or STATES_BY_STATUS.get(str(status.get("status")), "unknown"))


def query_value(value: Any) -> str:
    """A parameter as the server reads it: lists comma-joined, booleans true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, set)):
        return ",".join(str(item) for item in value)
    return str(value)


class PlainProgress:
    """A progress callback that writes one plain line, e.g. ``[  3.1s] running  pruning
    40%``, when the state, phase or progress changes (and every ``every`` seconds)."""

    def __init__(self, stream: IO[str] | None = None, every: float = 10.0):
        self.stream = stream
        self.every = every
        self.started = time.monotonic()
        self.shown: tuple[Any, ...] | None = None
        self.shown_at = 0.0

    def __call__(self, status: dict[str, Any]) -> None:
        now = time.monotonic()
        seen = (job_state(status), status.get("phase"), status.get("progress"))
        if seen == self.shown and now - self.shown_at < self.every:
            return
        self.shown, self.shown_at = seen, now
        stream = self.stream or sys.stderr
        stream.write(progress_line(status, now - self.started) + "\n")
        stream.flush()


def progress_line(status: Mapping[str, Any], elapsed: float) -> str:
    """The plain line :func:`print_progress` writes for ``status`` after ``elapsed`` s
    (the server's words made safe to print: :func:`terminal_text`)."""
    state, phase = terminal_text(job_state(status))[:40], status.get("phase")
    parts = [f"[{elapsed:5.1f}s]", f"{state:<8}"]
    if phase and phase != state:  # "queued" and "done" are phases too
        parts.append(f"{terminal_text(phase)[:40]:<11}")
    fraction = status.get("progress")
    if isinstance(fraction, (int, float)):
        parts.append(f"{round(100 * float(fraction)):3d}%")
    return " ".join(parts).rstrip()


def as_callback(progress: bool | ProgressCallback) -> ProgressCallback | None:
    """What ``wait(progress=...)`` calls with each status: the callable given, plain
    lines on stderr for True, nothing for False."""
    if callable(progress):
        return progress
    return PlainProgress() if progress else None


def config_path(env: Mapping[str, str]) -> Path:
    """Where the key file lives: ``$XDG_CONFIG_HOME/edgeai/config.json``."""
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "edgeai" / "config.json"


def load_key(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The API key: ``EDGEAI_CLIENT_ID``/``EDGEAI_CLIENT_SECRET``, else the key file.

    Raises KeyFileError when the file is readable by group or others, or unreadable.
    """
    client_id, secret = env.get("EDGEAI_CLIENT_ID"), env.get("EDGEAI_CLIENT_SECRET")
    path = config_path(env)
    if (client_id and secret) or not path.exists():
        return client_id, secret
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyFileError(f"{path} holds your API secret but other users can read it "
                           f"(mode {mode:o}); run: chmod 600 {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise KeyFileError(f"{path} is not readable JSON: {error}") from None
    if not isinstance(data, dict):
        raise KeyFileError(f'{path} must hold {{"client_id": ..., "client_secret": ...}}')
    return client_id or data.get("client_id"), secret or data.get("client_secret")


class Client:
    """One edgeai server and one API key.

    Without ``client_id`` and ``secret`` the key comes from :func:`load_key`
    (``EDGEAI_CLIENT_ID``/``EDGEAI_CLIENT_SECRET``, else the key file); a server with
    ``EDGEAI_AUTH=off`` needs none. ``timeout`` bounds each HTTP call (uploads and
    downloads stream). Raises KeyFileError for a key file others can read.
    """

    def __init__(self, url: str, client_id: str | None = None, secret: str | None = None,
                 *, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if client_id is None and secret is None:
            client_id, secret = load_key(os.environ)
        if client_id:
            self.session.headers[CLIENT_ID_HEADER] = client_id
        if secret:
            self.session.headers[CLIENT_SECRET_HEADER] = secret
        self.session.headers["Accept"] = "application/json"
        # Whether status calls may ask the server to wait (False once it refused ``wait``).
        self.long_polls = True

    def request(self, method: str, call: str, *, stream: bool = False,
                **kwargs: Any) -> requests.Response:
        """Make one API call (``call`` is e.g. ``"status"``); return the answer when it is
        2xx. Raises AuthError, ServerUnreachable or ClientError with the server's message."""
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self.session.request(method, f"{self.url}/api/{call}", stream=stream,
                                            **kwargs)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise ServerUnreachable(f"No answer from the edgeai server at {self.url}: "
                                    f"{type(error).__name__}.") from error
        if response.ok:
            return response
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        message = body.get("message") or f"HTTP {response.status_code}: {response.text[:300]}"
        error_class = AuthError if response.status_code in (401, 403) else ClientError
        raise error_class(str(message), response.status_code, body)

    def prune(self, model: str | os.PathLike[str] | None = None, percent: float | None = None,
              **params: Any) -> Job:
        """Submit a model for pruning; return its :class:`Job`.

        A Keras file (``.h5``, ``.keras``, ``.zip``) goes to ``tf_prune``, an ONNX file
        (``.onnx``) to ``onnx_prune``, a torch.export program (``.pt2``) to ``pt_prune``;
        passing ``weights=`` and ``class_def=`` instead submits a PyTorch state_dict and
        its class file to ``pt_prune`` (see :meth:`prune_torch`). ``dataset=`` and
        ``plan=`` are files; every other
        keyword is a query parameter passed through as the server reads it
        (``ommitted=["fc1"]``, ``round_to=8``, ``target="macs:0.5"``,
        ``formats="tflite"``, ``measure=False``...). Raises ClientError (400 says which
        parameter is wrong and what is allowed), AuthError or ServerUnreachable.
        """
        if percent is not None:
            params["percent"] = percent
        files = {role: params.pop(role) for role in (*TORCH_FILES, *OPTIONAL_FILES)
                 if params.get(role) is not None}
        if any(role in files for role in TORCH_FILES):
            if model is not None:
                raise ValueError("Pass either a model file or weights= and class_def= for a "
                                 "PyTorch model, not both.")
            return self._submit("pt_prune", files, params)
        if model is None:
            raise ValueError("Pass the model file (Keras, ONNX, or a .pt2 program), or "
                             "weights= and class_def= for a PyTorch model.")
        call = MODEL_CALLS.get(Path(model).suffix.lower(), "tf_prune")
        return self._submit(call, {"model": model, **files}, params)

    def prune_torch(self, weights: str | os.PathLike[str], class_def: str | os.PathLike[str],
                    *, model_name: str = "Net", input_size: str | tuple[int, ...] = "1,28,28",
                    percent: float | None = None, **params: Any) -> Job:
        """Submit a PyTorch state_dict and its class file; see :meth:`prune`."""
        return self.prune(percent=percent, weights=weights, class_def=class_def,
                          model_name=model_name, input_size=input_size, **params)

    def _submit(self, call: str, files: Mapping[str, Any], params: Mapping[str, Any]) -> Job:
        query = {name: query_value(value) for name, value in params.items()
                 if value is not None}
        with ExitStack() as stack:
            upload = {role: (Path(path).name, stack.enter_context(open(path, "rb")))
                      for role, path in files.items()}
            body = self.request("POST", call, params=query, files=upload).json()
        return Job(self, str(body["txid"]))

    def job(self, txid: str) -> Job:
        """The :class:`Job` for a transaction submitted earlier (by this key)."""
        return Job(self, txid)


class Job:
    """One transaction on the server, followed by its ``txid``."""

    def __init__(self, client: Client, txid: str):
        self.client = client
        self.txid = txid
        self.last_status: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Job(txid={self.txid!r}, state={job_state(self.last_status)!r})"

    def status(self, wait: float = 0.0) -> dict[str, Any]:
        """The server's status body (``status``, ``state``, ``message``, ``report``
        when done, and ``phase``/``progress`` where the server reports them).

        ``wait`` > 0 asks the server to answer as soon as the job ends, or after
        ``wait`` seconds (at most 30) while it is queued or running; a server that does
        not know ``wait`` (an older one) is asked again without it.
        """
        params: dict[str, Any] = {"txid": self.txid}
        if wait > 0 and self.client.long_polls:
            wait = min(wait, 30.0)  # the server's bound
            params["wait"] = f"{wait:g}"
        try:
            response = self.client.request("GET", "status", params=params,
                                           timeout=self.client.timeout + float(wait))
        except ClientError as error:
            if "wait" not in params or error.status_code != 400 \
                    or "unknown parameter 'wait'" not in error.message:
                raise
            self.client.long_polls = False
            response = self.client.request("GET", "status", params={"txid": self.txid})
        self.last_status = response.json()
        return self.last_status

    @property
    def state(self) -> str:
        """queued, running, done, failed or expired (asks the server)."""
        return job_state(self.status())

    @property
    def report(self) -> dict[str, Any] | None:
        """The typed report of a finished job (None until it is done)."""
        status = self.last_status if job_state(self.last_status) == "done" else self.status()
        return status.get("report")

    def updates(self, poll: float = 1.0, timeout: float | None = None,
                hold: float | None = None, now: bool = False,
                ramp: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield each status until the job ends (the last one yielded is terminal).

        Each status call asks the server to hold it up to ``hold`` seconds (default
        ``poll``) and answer as soon as the job ends, so the end is seen at once; a
        status at least every ``poll`` seconds otherwise. ``now`` makes the first call
        answer at once (a progress display shows the job was taken before it ends).
        ``ramp``: the first held call holds this long (and the pace is this), each next
        one half as long again, up to ``hold`` and ``poll``.
        Raises TimeoutError after ``timeout`` seconds, or ClientError from a call.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        hold = poll if hold is None else hold
        pace = poll if ramp is None else min(ramp, poll)
        first = now
        while True:
            asked = time.monotonic()
            left = 0.0 if first else (hold if ramp is None else min(hold, pace))
            if deadline is not None:
                left = min(left, deadline - asked)
            status = self.status(wait=max(0.0, left))
            yield status
            if job_state(status) in TERMINAL_STATES:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.txid} still {job_state(status)} after "
                                   f"{timeout} s")
            # A server that answered before ``poll`` (an older one, or one busy with
            # other waiting calls) did not hold the call: poll at the usual pace.
            if not first:
                time.sleep(max(0.0, pace - (time.monotonic() - asked)))
                pace = min(poll, pace * 1.5)
            first = False

    def wait(self, progress: bool | ProgressCallback = False, timeout: float | None = None,
             poll: float = 1.0) -> dict[str, Any]:
        """Wait until the job ends (status long-polls: its end is seen at once); return
        its final status.

        ``progress=True`` prints a line to stderr when the state, phase or progress
        changes, the first at once; a callable gets every status instead (the first at
        once, then after 0.2 s, 0.3 s, ... up to every ``poll`` seconds).
        Raises JobFailed with the server's reason if the job failed or expired,
        TimeoutError after ``timeout``.
        """
        report = as_callback(progress)
        status: dict[str, Any] = {}
        for status in self.updates(poll, timeout, hold=poll if report else LONG_POLL_SECONDS,
                                   now=bool(report),
                                   ramp=FIRST_PROGRESS_HOLD if report else None):
            if report:
                report(status)
        if job_state(status) != "done":
            raise JobFailed(str(status.get("message") or f"job {self.txid} "
                                f"{job_state(status)}"), None, status)
        return status

    def download(self, path: str | os.PathLike[str] = ".", format: str | None = None, *,
                 overwrite: bool = False) -> Path:
        """Stream the pruned model (or ``format``: tflite, onnx, state_dict, pt2...) to
        ``path``; a folder gets the server's file name (a bare name only: see
        :func:`safe_file_name`). Returns the file written. An existing file is never
        replaced unless ``overwrite``.

        Raises OutputExists (the file exists), ClientError (409 while not done, 400 for
        a format the job lacks, a file name the client will not use).
        """
        params = {"txid": self.txid, **({"format": format} if format else {})}
        target = Path(path)
        if not target.is_dir() and not overwrite and os.path.lexists(target):
            raise OutputExists(f"{target} exists; not replaced (overwrite=True replaces it).")
        with self.client.request("GET", "download", params=params, stream=True) as response:
            if target.is_dir():
                target = target / self._served_name(response, format)
            return save_chunks(response.iter_content(CHUNK_BYTES), target, overwrite)

    def _served_name(self, response: requests.Response, format: str | None) -> str:
        """The file name the server gives (Content-Disposition, else the status's
        ``filename`` for the model), checked by :func:`safe_file_name`."""
        header = response.headers.get("Content-Disposition", "")
        encoded = re.search(r"filename\*\s*=\s*UTF-8''([^;]+)", header, re.IGNORECASE)
        plain = re.search(r'filename\s*=\s*(?:"([^"]*)"|([^;]*))', header, re.IGNORECASE)
        if encoded:
            try:
                name = unquote(encoded.group(1).strip(), errors="strict")
            except UnicodeDecodeError:
                name = None
        elif plain:
            name = (plain.group(1) if plain.group(1) is not None else plain.group(2)).strip()
        elif format in (None, "model"):
            name = (self.last_status or self.status()).get("filename")
        else:
            name = None
        return safe_file_name(name)

    def cancel(self) -> dict[str, Any]:
        """Ask the server to cancel the job (``POST /api/cancel``); return its answer.

        Raises ClientError with the server's message (e.g. the job already ended).
        """
        return self.client.request("POST", "cancel", params={"txid": self.txid}).json()
