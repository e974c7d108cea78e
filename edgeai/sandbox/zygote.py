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
ONNX Runtime's import starts a thread: the ONNX zygote leaves it to the child.

Who owns the zygotes: under gunicorn with :mod:`edgeai.gunicorn_config` (``make run``,
``edgeai serve``), the master starts one zygote per framework before it forks its
workers, and every worker uses them (:func:`start_shared`, :func:`shared_sockets`):
one set per server, started before the workers even boot. Anywhere else (``edgeai
worker``, the local CLI, tests, a plain ``gunicorn wsgi:app``) a process starts its
own (:class:`ZygotePool`). Zygotes after the first preload at the lowest priority, so
the first framework imports on a core of its own.

Protocol, on a ``SOCK_SEQPACKET`` socket (the zygote's descriptor 0), which several
processes may share: every request carries its own reply socket, the last descriptor
it sends. ``{"op": "hello"}`` is answered ``{"ready": info}`` once the zygote has
preloaded. ``{"op": "fork", "settings": {...}}`` with the child's channel, stdin and
stderr is answered ``{"forked": pid}`` with a pidfd of the child, and later, on the
same reply socket, ``{"exited": pid, "code": code}`` when it has reaped it. When
every end of its request socket is closed, the zygote exits, and its children die
with it.
"""
from __future__ import annotations

import gc
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
# Where a gunicorn master tells its workers which descriptors reach its zygotes.
SHARED_ENV = "EDGEAI_ZYGOTES"


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
    # What the imports made lives as long as every child: out of the collector's sight,
    # a child's collections do not walk (and so copy) the hundreds of thousands of
    # objects it shares with the zygote (CPython's advice for a server that forks).
    gc.collect()
    gc.freeze()
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
        channel, stdin, stderr = fds[:3]
        os.dup2(stdin, 0)
        os.dup2(stderr, 1)
        os.dup2(stderr, 2)
        os.dup2(channel, 3)
        os.closerange(4, os.sysconf("SC_OPEN_MAX"))  # the zygote's sockets, every reply
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


def _answer(reply: socket.socket, message: dict[str, Any],
            fds: list[int] | None = None) -> bool:
    """Send on a reply socket; False when its asker is gone (never an error here)."""
    try:
        _send(reply, message, fds)
        return True
    except OSError:
        return False


def serve(settings: dict[str, Any]) -> int:
    """The zygote's loop (see the module docstring); returns its exit code.

    The zygote ends when every end of its request socket is closed, however the
    server ended. (Not a parent-death signal: that fires when the *thread* that
    started the zygote exits.)"""
    sock = socket.socket(fileno=0)
    if os.getppid() != settings["parent_pid"]:
        return 0  # the server died before we started
    if settings.get("low_priority"):
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    info = _preload(settings)
    if settings.get("low_priority"):
        os.setpriority(os.PRIO_PROCESS, 0, 0)  # its children start from the usual
    info["fork_safe"] = info["threads"] == 1
    info["pid"] = os.getpid()
    replies: dict[int, socket.socket] = {}
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
            _reap(replies)
        if sock not in readable:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST_BYTES, 4)
        except OSError:
            return 0
        if not data:
            return 0  # every server process is gone; our children die with us (their
            # parent-death signal is ours: this process has one thread)
        _handle(data, fds, info, replies)


def _handle(data: bytes, fds: list[int], info: dict[str, Any],
            replies: dict[int, socket.socket]) -> None:
    """Answer one request (its reply socket is the last descriptor): ``hello`` with
    ``info``; ``fork`` (three descriptors for the child) with the child's pid and a
    pidfd, its reply socket kept in ``replies`` for its exit; anything else refused."""
    try:
        request = json.loads(data)
    except ValueError:
        request = {}
    if not fds:
        return
    reply = socket.socket(fileno=fds[-1])
    if request.get("op") == "hello" and len(fds) == 1:
        _answer(reply, {"ready": info})
        reply.close()
        return
    if request.get("op") != "fork" or len(fds) != 4 or not info["fork_safe"]:
        for fd in fds[:-1]:
            os.close(fd)
        _answer(reply, {"refused": "not fork-safe" if not info["fork_safe"] else
                        "a malformed request"})
        reply.close()
        return
    pid = os.fork()
    if pid == 0:
        _become_child(request, fds)
    for fd in fds[:-1]:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    try:
        _answer(reply, {"forked": pid}, [pidfd])
    finally:
        os.close(pidfd)
    replies[pid] = reply


def _reap(replies: dict[int, socket.socket]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reply = replies.pop(pid, None)
        if reply is not None:
            _answer(reply, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})
            reply.close()


def main() -> int:
    """``python -m edgeai.sandbox.zygote SETTINGS``: the request socket is fd 0.
    Exits without the interpreter's teardown (seconds with a framework loaded: every
    stop of a server would wait for it)."""
    code = serve(json.loads(sys.argv[1]))
    sys.stderr.flush()
    os._exit(code)


# -- the server's side ----------------------------------------------------------------
class ZygoteUnavailable(RuntimeError):
    """The zygote cannot fork (not started, not fork-safe, dead); ``str()`` says why."""


def spawn(framework: str, env: dict[str, str], entry: str | None = None,
          low_priority: bool = False) -> tuple[subprocess.Popen, socket.socket]:
    """Start a zygote process; return it and the server's end of its request socket."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    settings = {"framework": framework, "entry": entry, "parent_pid": os.getpid(),
                "low_priority": low_priority}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeai.sandbox.zygote", json.dumps(settings)],
            stdin=theirs, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/",
            env=env, start_new_session=True, close_fds=True)
    finally:
        theirs.close()
    return proc, ours


class Zygote:
    """A zygote for one framework, as one server process sees it; thread-safe.

    Either started by this process (``proc``; :meth:`start`), or one a gunicorn
    master started and shares with its workers (``proc`` is None; :meth:`attach`).
    """

    def __init__(self, framework: str, sock: socket.socket,
                 proc: subprocess.Popen | None = None):
        self.framework = framework
        self.sock = sock
        self.proc = proc
        self.started = time.monotonic()
        self.info: dict[str, Any] = {}
        self.ready = threading.Event()
        self.broken: str | None = None
        self.stderr_tail = bytearray()
        if proc is not None and proc.stderr is not None:
            threading.Thread(target=self._keep_stderr, daemon=True,
                             name=f"zygote-{framework}-stderr").start()
        threading.Thread(target=self._hello, daemon=True, name=f"zygote-{framework}").start()

    @classmethod
    def start(cls, framework: str, env: dict[str, str], entry: str | None = None,
              low_priority: bool = False) -> Zygote:
        """Start a zygote of this process's own."""
        proc, sock = spawn(framework, env, entry, low_priority)
        return cls(framework, sock, proc)

    @classmethod
    def attach(cls, framework: str, fd: int) -> Zygote:
        """Use the zygote whose request socket is ``fd`` (inherited from a gunicorn
        master): the master owns it, this process only asks it to fork."""
        return cls(framework, socket.socket(fileno=os.dup(fd)))

    # -- asking it ---------------------------------------------------------------
    def _keep_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        try:
            for chunk in iter(lambda: self.proc.stderr.read1(65536), b""):  # type: ignore
                self.stderr_tail += chunk
                del self.stderr_tail[:-STDERR_TAIL_BYTES]
        except (OSError, ValueError):
            pass

    def _request(self, message: dict[str, Any], fds: list[int],
                 timeout: float | None) -> tuple[dict[str, Any], list[int], socket.socket]:
        """Send ``message`` with ``fds`` and a new reply socket; return the first answer,
        the descriptors it carried, and the reply socket (for later answers)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            try:
                _send(self.sock, message, [*fds, theirs.fileno()])
            finally:
                theirs.close()
            ours.settimeout(timeout)
            data, received, _, _ = socket.recv_fds(ours, 65536, 1)
        except (OSError, TimeoutError) as error:
            ours.close()
            raise ZygoteUnavailable(f"the zygote did not answer ({error})") from None
        if not data:
            ours.close()
            raise ZygoteUnavailable("the zygote is gone")
        try:
            return json.loads(data), received, ours
        except ValueError:
            ours.close()
            raise ZygoteUnavailable("the zygote answered nonsense") from None

    def _hello(self) -> None:
        try:
            answer, _, reply = self._request({"op": "hello"}, [], None)
            reply.close()
            self.info = answer.get("ready") or {}
            self.info["start_seconds"] = round(time.monotonic() - self.started, 3)
        except ZygoteUnavailable as error:
            self.broken = str(error)
        finally:
            self.ready.set()

    def usable(self) -> bool:
        """Ready, alive and fork-safe."""
        alive = self.proc is None or self.proc.poll() is None
        return (self.ready.is_set() and not self.broken and alive
                and bool(self.info.get("fork_safe")))

    def why_not(self) -> str:
        """Why :meth:`usable` is False, in words."""
        if not self.ready.is_set():
            return "still importing its framework"
        if self.info and not self.info.get("fork_safe"):
            return (f"not fork-safe: preloading {self.framework} started "
                    f"{self.info.get('threads')} threads")
        tail = bytes(self.stderr_tail).decode(errors="replace").strip().splitlines()[-2:]
        code = self.proc.poll() if self.proc is not None else None
        return f"{self.broken or 'exited'} ({code}): {' | '.join(tail)}"

    def fork(self, settings: dict[str, Any], fds: tuple[int, int, int],
             timeout: float = 30.0) -> tuple[int, int, socket.socket]:
        """Fork a child that runs :func:`edgeai.sandbox.child.run_child` with
        ``settings`` and ``fds`` (channel, stdin, stderr); return its pid, a pidfd of it,
        and the socket its exit code will come on (:func:`exit_code`). Raises
        :class:`ZygoteUnavailable`."""
        if not self.usable():
            raise ZygoteUnavailable(self.why_not())
        answer, received, reply = self._request({"op": "fork", "settings": settings},
                                                list(fds), timeout)
        if "forked" not in answer or not received:
            reply.close()
            for fd in received:
                os.close(fd)
            if answer.get("refused"):
                raise ZygoteUnavailable(f"the zygote refused: {answer['refused']}")
            self.broken = "the zygote sent no pidfd"
            raise ZygoteUnavailable(self.broken)
        return int(answer["forked"]), received[0], reply

    def rss_mb(self) -> float:
        """The zygote's resident memory, MB."""
        pid = self.info.get("pid")
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, ValueError):
            pass
        return 0.0

    def close(self) -> None:
        """Stop using it; a zygote of this process's own is stopped (its children die
        with it)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR) if self.proc is not None else None
        except OSError:
            pass
        self.sock.close()
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()


def exit_code(reply: socket.socket, timeout: float) -> int | None:
    """The exit code (negative: the signal) the zygote reports on a fork's reply socket
    once it has reaped the child, or None if not known within ``timeout``."""
    try:
        reply.settimeout(timeout)
        data = reply.recv(65536)
        message = json.loads(data) if data else {}
    except (OSError, TimeoutError, ValueError):
        return None
    code = message.get("code") if isinstance(message, dict) else None
    return code if isinstance(code, int) else None


# -- zygotes shared by a gunicorn master's workers --------------------------------------
def start_shared(frameworks: tuple[str, ...], env: dict[str, str]) -> list[subprocess.Popen]:
    """In a gunicorn master, before it forks its workers: start one zygote per
    framework (the first at normal priority, the others at the lowest while they
    preload) and tell the workers where they are (:data:`SHARED_ENV`). The request
    sockets stay open in the master and are inherited by every worker it forks."""
    processes, fds = [], []
    for index, framework in enumerate(frameworks):
        proc, sock = spawn(framework, env, low_priority=index > 0)
        fd = sock.detach()
        os.set_inheritable(fd, True)
        processes.append(proc)
        fds.append(f"{framework}={fd}")
    os.environ[SHARED_ENV] = ",".join(fds)
    return processes


def shared_sockets() -> dict[str, int]:
    """The request sockets of the zygotes this process's gunicorn master shares, by
    framework (empty outside such a worker)."""
    found = {}
    for item in os.environ.get(SHARED_ENV, "").split(","):
        framework, _, fd = item.partition("=")
        if framework and fd.isdigit():
            try:
                os.fstat(int(fd))
            except OSError:
                continue
            found[framework] = int(fd)
    return found


class ZygotePool:
    """The zygotes one server process uses (or several sandboxes share, in tests), one
    per (framework, entry, environment): those of its gunicorn master where there are,
    else its own; a dead one is replaced by one of its own when next asked for."""

    def __init__(self, shared: bool = True) -> None:
        self._zygotes: dict[tuple, Zygote] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._shared = shared_sockets() if shared else {}

    def get(self, framework: str, env: dict[str, str], entry: str | None,
            low_priority: bool = False) -> Zygote | None:
        """The zygote for ``framework`` (started now if there is none or it died); None
        once the pool is closed."""
        key = (framework, entry, tuple(sorted(env.items())))
        with self._lock:
            if self._closed:
                return None
            zygote = self._zygotes.get(key)
            if zygote is not None and zygote.ready.is_set() and not zygote.usable() and \
                    (zygote.broken or (zygote.proc is not None and zygote.proc.poll() is not None)):
                log.warning("zygote %s is gone (%s); starting one of this process's own",
                            framework, zygote.why_not())
                zygote.close()
                self._shared.pop(framework, None)
                zygote = None
            if zygote is None:
                if entry is None and framework in self._shared:
                    zygote = Zygote.attach(framework, self._shared[framework])
                else:
                    zygote = Zygote.start(framework, env, entry, low_priority)
                self._zygotes[key] = zygote
            return zygote

    def all(self) -> list[Zygote]:
        """The zygotes asked for so far."""
        with self._lock:
            return list(self._zygotes.values())

    def close(self) -> None:
        """Stop using every zygote (stopping this process's own)."""
        with self._lock:
            self._closed = True
            zygotes, self._zygotes = list(self._zygotes.values()), {}
        for zygote in zygotes:
            zygote.close()


if __name__ == "__main__":
    sys.exit(main())
