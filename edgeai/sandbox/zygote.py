"""A fork server per framework: every job gets a fresh process in milliseconds.

A child never serves two jobs (the next job must not meet the last one's code), so
every job needs a new process — and a new interpreter that imports TensorFlow or
torch costs seconds of CPU. A *zygote* (as Android's, Chromium's, CPython's
``multiprocessing`` forkserver and gunicorn's ``--preload`` do it) pays that once:
a process per framework imports the framework and what a job will need, starts no
thread and runs nothing of any job, and forks a child per job. The child is a copy
of a warm interpreter, single-threaded after the fork, and confines itself exactly
as a freshly started one does (:mod:`edgeai.sandbox.confine`) before it runs any
job code; nothing of one job can reach the zygote or the next job (the child drops
to its own uid, in its own namespaces, before the job is even sent to it).

Fork safety is checked, not assumed: a zygote whose preloading started a thread
(forking a multi-threaded process copies one thread and every lock the others
held) says so in its ready message and forks nothing; the supervisor then starts
a fresh interpreter per job instead. ``import tensorflow`` and ``import keras``
start no thread; running a Keras model does (TensorFlow's thread pools), so the
TensorFlow zygote only imports and the child warms up (~0.2 s). torch starts no
thread even when tracing and exporting a model, so the torch zygote warms up fully.

Protocol, on a ``SOCK_SEQPACKET`` socket pair (the zygote's descriptor 0):
the server sends ``{"op": "fork", "id": n, "settings": {...}}`` with three
descriptors (the child's channel, stdin and stderr); the zygote answers
``{"forked": n, "pid": pid}`` with a pidfd of the child, and later
``{"exited": pid, "code": code}`` when it has reaped it. When the server's end
closes, the zygote exits, and its children die with it.
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 1 << 20
STDERR_TAIL_BYTES = 8192


# -- the zygote process ---------------------------------------------------------------
def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _preload(settings: dict[str, Any]) -> dict[str, Any]:
    """Import (and, where that starts no thread, warm up) what a job will need."""
    started = time.perf_counter()
    from edgeai.sandbox import child as _child  # noqa: F401 - the child's code, imported
    from edgeai.sandbox import confine as _confine  # noqa: F401
    framework = settings["framework"]
    warmed = False
    if framework in ("tensorflow", "pytorch", "onnx"):
        from edgeai.pruning import get_engine

        engine = get_engine(framework)
        warmed = engine.preload()
    if settings.get("entry"):
        module = settings["entry"].partition(":")[0]
        __import__(module)
    return {"preload_seconds": round(time.perf_counter() - started, 3), "warmed": warmed,
            "threads": _threads()}


def _reseed() -> None:
    """Every fork would otherwise share the zygote's random state."""
    import random

    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(int.from_bytes(os.urandom(4), "little"))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.seed()


def _become_child(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked process: take the three descriptors as 3 (channel), 0 and 1/2,
    close everything else of the zygote's, and run the child; never returns."""
    code = 70
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        channel, stdin, stderr = fds
        os.dup2(stdin, 0)
        os.dup2(stderr, 1)
        os.dup2(stderr, 2)
        os.dup2(channel, 3)
        os.closerange(4, os.sysconf("SC_OPEN_MAX"))
        _reseed()
        from edgeai.sandbox.child import run_child

        settings = dict(request["settings"])
        settings["confine"] = {**settings["confine"], "parent_pid": os.getppid()}
        code = run_child(settings, forked=True)
    except BaseException:  # noqa: BLE001 - whatever happens, never return into the zygote
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
        os._exit(code)


def _send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def serve(settings: dict[str, Any]) -> int:
    """The zygote's loop (see the module docstring); returns its exit code.

    The zygote ends when the server's end of its socket closes, however the server
    ended. (Not a parent-death signal: that fires when the *thread* that started the
    zygote exits, and a server starts zygotes from short-lived threads.)"""
    sock = socket.socket(fileno=0)
    if os.getppid() != settings["parent_pid"]:
        return 0  # the server died before we started
    info = _preload(settings)
    info["fork_safe"] = info["threads"] == 1
    info["pid"] = os.getpid()
    _send(sock, {"ready": info})
    if not info["fork_safe"]:
        return 0
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    while True:
        readable, _, _ = select.select([sock, wake_r], [], [])
        if wake_r in readable:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            _reap(sock)
        if sock in readable:
            try:
                data, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST_BYTES, 3)
            except OSError:
                return 0
            if not data:
                return 0  # the server is gone; our children die with us (their
                # parent-death signal is ours: this process has one thread)
            try:
                request = json.loads(data)
            except ValueError:
                request = {}
            if request.get("op") != "fork" or len(fds) != 3:
                for fd in fds:
                    os.close(fd)
                continue
            pid = os.fork()
            if pid == 0:
                sock.close()
                _become_child(request, fds)
            for fd in fds:
                os.close(fd)
            pidfd = os.pidfd_open(pid)
            try:
                _send(sock, {"forked": request.get("id"), "pid": pid}, [pidfd])
            finally:
                os.close(pidfd)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def main() -> int:
    """``python -m edgeai.sandbox.zygote SETTINGS``: the socket to the server is fd 0.
    Exits without the interpreter's teardown (seconds with a framework loaded: every
    stop of a server would wait for it)."""
    code = serve(json.loads(sys.argv[1]))
    sys.stderr.flush()
    os._exit(code)


# -- the server's side ----------------------------------------------------------------
class ZygoteUnavailable(RuntimeError):
    """The zygote cannot fork (not started, not fork-safe, dead); ``str()`` says why."""


class Zygote:
    """A zygote process for one framework, as the server sees it; thread-safe.

    ``env`` is the children's scrubbed environment (the zygote's children inherit it),
    ``entry`` a ``module:function`` the children run instead of an engine (tests).
    """

    def __init__(self, framework: str, env: dict[str, str], entry: str | None = None):
        self.framework = framework
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        settings = {"framework": framework, "entry": entry, "parent_pid": os.getpid()}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeai.sandbox.zygote", json.dumps(settings)],
            stdin=theirs, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/",
            env=env, start_new_session=True, close_fds=True)
        theirs.close()
        self.sock = ours
        self.info: dict[str, Any] = {}
        self.ready = threading.Event()
        self.stderr_tail = bytearray()
        self._lock = threading.Lock()
        self._next_id = 0
        self._forks: dict[int, tuple[threading.Event, list[Any]]] = {}
        self._exits: dict[int, int] = {}
        self._exit_events: dict[int, threading.Event] = {}
        self._closed = False
        threading.Thread(target=self._read, daemon=True, name=f"zygote-{framework}").start()
        threading.Thread(target=self._keep_stderr, daemon=True,
                         name=f"zygote-{framework}-stderr").start()

    # -- reading its messages ----------------------------------------------------
    def _keep_stderr(self) -> None:
        try:
            for chunk in iter(lambda: self.proc.stderr.read1(65536), b""):
                self.stderr_tail += chunk
                del self.stderr_tail[:-STDERR_TAIL_BYTES]
        except (OSError, ValueError):
            pass

    def _read(self) -> None:
        try:
            while True:
                data, fds, _, _ = socket.recv_fds(self.sock, 65536, 1)
                if not data:
                    break
                message = json.loads(data)
                if "ready" in message:
                    self.info = message["ready"]
                    self.info["start_seconds"] = round(time.monotonic() - self.started, 3)
                    self.ready.set()
                elif "forked" in message:
                    with self._lock:
                        waiting = self._forks.pop(message["forked"], None)
                        self._exit_events.setdefault(message["pid"], threading.Event())
                    if waiting is None:
                        for fd in fds:
                            os.close(fd)
                    else:
                        waiting[1].extend([message["pid"], fds[0] if fds else -1])
                        waiting[0].set()
                elif "exited" in message:
                    with self._lock:
                        self._exits[message["exited"]] = message["code"]
                        event = self._exit_events.setdefault(message["exited"],
                                                             threading.Event())
                    event.set()
        except (OSError, ValueError):
            pass
        finally:
            self.ready.set()
            with self._lock:
                self._closed = True
                for event, _ in self._forks.values():
                    event.set()
                for event in self._exit_events.values():
                    event.set()

    # -- asking ----------------------------------------------------------------
    def usable(self) -> bool:
        """Ready, alive and fork-safe."""
        return (self.ready.is_set() and not self._closed and self.proc.poll() is None
                and bool(self.info.get("fork_safe")))

    def why_not(self) -> str:
        """Why :meth:`usable` is False, in words."""
        if not self.ready.is_set():
            return "still importing its framework"
        if self.info and not self.info.get("fork_safe"):
            return (f"not fork-safe: preloading {self.framework} started "
                    f"{self.info.get('threads')} threads")
        tail = bytes(self.stderr_tail).decode(errors="replace").strip().splitlines()[-2:]
        return f"exited ({self.proc.poll()}): {' | '.join(tail)}"

    def fork(self, settings: dict[str, Any], fds: tuple[int, int, int],
             timeout: float = 30.0) -> tuple[int, int]:
        """Fork a child that runs :func:`edgeai.sandbox.child.run_child` with
        ``settings`` and ``fds`` (channel, stdin, stderr); return (pid, pidfd).
        Raises :class:`ZygoteUnavailable`."""
        if not self.usable():
            raise ZygoteUnavailable(self.why_not())
        event, answer = threading.Event(), []
        with self._lock:
            self._next_id += 1
            request_id = self._next_id
            self._forks[request_id] = (event, answer)
        try:
            _send(self.sock, {"op": "fork", "id": request_id, "settings": settings}, list(fds))
        except OSError as error:
            with self._lock:
                self._forks.pop(request_id, None)
            raise ZygoteUnavailable(f"the zygote is gone ({error.strerror})") from None
        if not event.wait(timeout) or not answer:
            with self._lock:
                self._forks.pop(request_id, None)
            raise ZygoteUnavailable("the zygote did not fork in time")
        pid, pidfd = answer
        if pidfd < 0:
            raise ZygoteUnavailable("the zygote sent no pidfd")
        return pid, pidfd

    def exit_code(self, pid: int, timeout: float) -> int | None:
        """The exit code of child ``pid`` once the zygote reaped it (negative: the
        signal), or None if not known within ``timeout``."""
        with self._lock:
            event = self._exit_events.setdefault(pid, threading.Event())
        event.wait(timeout)
        with self._lock:
            code = self._exits.pop(pid, None)
            if code is not None:
                self._exit_events.pop(pid, None)
            return code

    def rss_mb(self) -> float:
        """The zygote's resident memory, MB."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, ValueError):
            pass
        return 0.0

    def close(self) -> None:
        """Stop the zygote (its children die with it)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()


class ZygotePool:
    """The zygotes of one server process (or shared by several sandboxes in tests), one
    per (framework, entry, environment); a dead one is replaced when next asked for."""

    def __init__(self) -> None:
        self._zygotes: dict[tuple, Zygote] = {}
        self._lock = threading.Lock()
        self._closed = False

    def get(self, framework: str, env: dict[str, str], entry: str | None) -> Zygote | None:
        """The zygote for ``framework`` (started now if there is none or it died); None
        once the pool is closed."""
        key = (framework, entry, tuple(sorted(env.items())))
        with self._lock:
            if self._closed:
                return None
            zygote = self._zygotes.get(key)
            if zygote is not None and zygote.ready.is_set() and zygote.proc.poll() is not None:
                log.warning("zygote %s died (%s); starting another", framework,
                            zygote.why_not())
                zygote.close()
                zygote = None
            if zygote is None:
                zygote = self._zygotes[key] = Zygote(framework, env, entry)
            return zygote

    def all(self) -> list[Zygote]:
        """The zygotes started so far."""
        with self._lock:
            return list(self._zygotes.values())

    def close(self) -> None:
        """Stop every zygote."""
        with self._lock:
            self._closed = True
            zygotes, self._zygotes = list(self._zygotes.values()), {}
        for zygote in zygotes:
            zygote.close()


if __name__ == "__main__":
    sys.exit(main())
