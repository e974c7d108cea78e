"""The walls a sandbox child builds around itself before it touches a job.

Assume the job's code runs, whatever it is: a class file, a pickle, a
SavedModel graph. What stops it is this module, built from the kernel's own
mechanisms and applied in the child's first lines, while it is still a single
thread (so every thread a framework starts later inherits every layer):

``view``      a mount namespace whose root is an empty in-memory folder holding
              read-only binds of what Python needs (the system's libraries, the
              interpreter, its packages, edgeai) and one writable folder, the
              job's *slot*; the data dir, the database, other jobs, the server's
              home and temp dirs simply do not exist there.
``pid``       a PID namespace: the job is process 1 of its own tree, other
              processes cannot be named, and ``/proc`` shows only the job's.
``network``   an empty network namespace (not even the server's loopback).
``identity``  an unprivileged uid/gid (``nobody`` when the server is root; in a
              user namespace otherwise), no capabilities, ``no_new_privs``.
``landlock``  the same allow-list again, enforced by Landlock: reads under the
              view, writes only in the slot and the private temp folders; TCP
              denied; signals and abstract sockets scoped to the job.
``seccomp``   system calls that cross those walls fail (:mod:`.seccomp`).

Each layer is read back from the kernel afterwards (``/proc/self/status``, the
mounts actually visible, the interfaces actually present) and reported; the
supervisor decides from that report, not from what was attempted, whether a job
that brings code may run in this child.
"""
from __future__ import annotations

import ctypes
import os
import signal
import site
import stat
import sys
from pathlib import Path
from typing import Any

from edgeai.sandbox import landlock, seccomp
from edgeai.sandbox.limits import limit_processes, set_limits

LAYERS = ("view", "pid", "network", "identity", "landlock", "seccomp")

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE = 1024, 2048, 4096, 16384, 1 << 18
MS_RELATIME, MNT_DETACH = 1 << 21, 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine)

# What the job's view holds besides the interpreter (read-only, where present).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf",
             "host.conf", "hosts", "mime.types")
SYS_DIRS = ("/sys/devices/system/cpu", "/sys/devices/system/node")
DEVICES = ("null", "zero", "full", "random", "urandom")
WRITABLE_DEVICES = ("/dev/null", "/dev/zero", "/dev/full")
# The empty folder the private root is assembled on, inside the new mount namespace only.
NEW_ROOT = "/tmp"
# Where the slot appears in the view: no path of the host's shows through.
JOB_DIR = "/job"
# A file only the private root has: proof that the view is the root.
VIEW_MARKER = "/.edgeai-job-view"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]


class ConfinementError(OSError):
    """A layer could not be built; ``str()`` says which and why."""


def _check(result: int, what: str) -> None:
    if result != 0:
        raise ConfinementError(f"{what}: {os.strerror(ctypes.get_errno())}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    def encoded(text: str | None) -> bytes | None:
        return text.encode() if text is not None else None

    _check(_libc.mount(encoded(source), encoded(target), encoded(fstype), flags, encoded(data)),
           f"mount {source or ''} on {target}")


# -- process --------------------------------------------------------------------
def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies.

    Without it a job's child would outlive a killed server and keep burning CPU
    on a job the restarted server will run again. The setting is cleared by a
    change of credentials, so it is armed again after :func:`drop_identity`.
    """
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(70)  # the parent died before prctl took effect


def single_threaded() -> bool:
    """True when this process has exactly one thread (layers bind later threads too)."""
    return len(os.listdir("/proc/self/task")) == 1


def enter_namespaces(view: bool, pid: bool, network: bool) -> dict[str, str]:
    """Unshare the requested namespaces; return ``{layer: why it is missing}``.

    As root each namespace is asked for on its own, so one the kernel refuses
    does not cost the others. Without root all of them come in one user
    namespace, in which this process keeps its own uid and, until
    :func:`drop_identity`, holds capabilities over the new namespaces only.
    """
    wanted = {"view": (CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS) if view else 0,
              "pid": CLONE_NEWPID if pid else 0, "network": CLONE_NEWNET if network else 0}
    missing = {}
    if os.geteuid() == 0:
        for layer, flags in wanted.items():
            if flags and _libc.unshare(flags) != 0:
                missing[layer] = f"unshare refused: {os.strerror(ctypes.get_errno())}"
        return missing
    flags = CLONE_NEWUSER | wanted["view"] | wanted["pid"] | wanted["network"]
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(flags) != 0:
        why = (f"an unprivileged user namespace was refused "
               f"({os.strerror(ctypes.get_errno())})")
        return {layer: why for layer, wanted_flags in wanted.items() if wanted_flags}
    for path, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{path}", "w") as handle:
            handle.write(text)
    return {}


def become_init_of_pid_namespace() -> None:
    """Fork into the new PID namespace. The parent stays behind only to wait: it
    exits as its child does (same code or signal), so the server sees one process.

    It also watches the job's stdin, whose only writer is the supervisor: when that
    end closes (the job is over, or the server process died without a word), it kills
    the namespace's first process, and with it everything in the namespace. A child
    forked by a zygote that other server processes share outlives the one that asked
    for it otherwise."""
    child = os.fork()
    if child == 0:
        return
    # Only stdin (watched, never read) and stderr stay open here: the job's channel
    # and pipes must end when the job does, not when this waiting process does.
    os.closerange(1, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    import select

    pidfd = os.pidfd_open(child)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(0, 0)  # no events asked for: hang-ups and errors are always told
    while True:
        try:
            events = dict(poller.poll())
        except InterruptedError:
            continue
        if pidfd in events:
            break
        if events.get(0, 0) & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
            os.kill(child, signal.SIGKILL)
            poller.unregister(0)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 70)


# -- the view -------------------------------------------------------------------
def interpreter_paths(hidden: tuple[str, ...] = ()) -> list[str]:
    """Folders this Python needs to run and import edgeai and its packages.

    Besides the prefixes and site-packages, every folder on ``sys.path`` (packages a
    ``.pth`` file adds), except one that holds a ``hidden`` path or edgeai itself: a
    folder holding edgeai is a checkout (its README, its configuration, perhaps the
    data dir), so only the package folder is bound from it.
    """
    import edgeai

    package = str(Path(edgeai.__file__).resolve().parent)
    site_dirs = {os.path.normpath(p) for p in site.getsitepackages()}

    def inside(path: str, folder: str) -> bool:
        return path == folder or path.startswith(folder.rstrip("/") + "/")

    def allowed(path: str) -> bool:
        if not os.path.isdir(path) or path == "/":
            return False
        if any(inside(os.path.normpath(h), path) for h in hidden):
            return False
        return path in site_dirs or path == package or not inside(package, path)

    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                  package, *site_dirs,
                  *(os.path.abspath(p) for p in sys.path if p and p != os.getcwd())}
    return _outermost(path for path in map(os.path.normpath, candidates) if allowed(path))


def _outermost(paths: Any) -> list[str]:
    """Drop paths that lie inside another path of the list."""
    kept: list[str] = []
    for path in sorted({os.path.normpath(p) for p in paths}, key=len):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def read_only_paths(extra: tuple[str, ...] = (), hidden: tuple[str, ...] = ()) -> list[str]:
    """Everything the job may read: system libraries, the interpreter, ``extra``."""
    system = [p for p in SYSTEM_DIRS if os.path.isdir(p) and not os.path.islink(p)]
    return _outermost([*system, *interpreter_paths(hidden), *extra,
                       *(p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p)])


def _locked_flags(fd: int) -> int:
    """Mount flags of the source that a bind's remount must keep (noexec and friends)."""
    flags = os.fstatvfs(fd).f_flag
    result = 0
    for st_flag, ms_flag in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV),
                             (os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME),
                             (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME)):
        if flags & st_flag:
            result |= ms_flag
    return result


def _bind(fd: int, target: str, flags: int) -> None:
    """Bind what ``fd`` refers to onto ``target`` (created as a folder or an empty file),
    then remount it with ``flags`` added to those it must keep."""
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        if not os.path.exists(target):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | flags | _locked_flags(fd))


def _users_file(uid: int, gid: int) -> tuple[str, str]:
    users = {0: ("root", 0, "/root"), 65534: ("nobody", 65534, "/nonexistent")}
    users.setdefault(uid, ("edgeai-job", gid, "/tmp"))
    passwd = "".join(f"{name}:x:{u}:{g}::{home}:/usr/sbin/nologin\n"
                     for u, (name, g, home) in sorted(users.items()))
    groups = {0: "root", 65534: "nogroup"}
    groups.setdefault(gid, "edgeai-job")
    group = "".join(f"{name}:x:{g}:\n" for g, name in sorted(groups.items()))
    return passwd, group


def _open_sources(read_only: list[str]) -> list[tuple[int, str, int]]:
    """(descriptor, path in the view, mount flags) of the host's paths the view binds."""
    sources: list[tuple[int, str, int]] = []

    def source(path: str, flags: int) -> None:
        try:
            sources.append((os.open(path, os.O_PATH | os.O_CLOEXEC), path, flags))
        except FileNotFoundError:
            pass

    read_only_flags = MS_RDONLY | MS_NOSUID | MS_NODEV
    for path in read_only:
        source(path, read_only_flags)
    for path in SYS_DIRS:
        source(path, read_only_flags | MS_NOEXEC)
    for name in ETC_FILES:
        source(f"/etc/{name}", read_only_flags | MS_NOEXEC)
    for name in DEVICES:
        source(f"/dev/{name}", MS_NOSUID | MS_NOEXEC)
    return sources


class JobFolders:
    """The job's own places, opened before the view is built (they may lie under the
    host's /tmp, which the view's assembly covers): its disk — an image to mount, or
    a folder on the server's disk — and the folder of its inputs, bound read-only."""

    def __init__(self, job: dict[str, Any], inputs: str | None):
        self.image_fd = self.folder_fd = self.inputs_fd = -1
        if job.get("image"):
            self.image_fd = os.open(job["image"], os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        else:
            self.folder_fd = os.open(job["folder"], os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
                                     | os.O_CLOEXEC)
        if inputs:
            self.inputs_fd = os.open(inputs, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
                                     | os.O_CLOEXEC)

    def close(self) -> None:
        for fd in (self.image_fd, self.folder_fd, self.inputs_fd):
            if fd >= 0:
                os.close(fd)


def _mount_job(folders: JobFolders, root: str, uid: int, gid: int) -> None:
    """The job's disk at ``root``/job with ``inputs`` (read-only), ``out`` and ``.tmp``
    in it (the last two the job's), and the view's /tmp bound to that ``.tmp``, so the
    job's temporary files count against its disk, not the host's memory."""
    job = root + JOB_DIR
    os.makedirs(job, mode=0o755, exist_ok=True)
    if folders.image_fd >= 0:
        from edgeai.sandbox.disk import attach

        attach(folders.image_fd, job)
    else:
        _bind(folders.folder_fd, job, MS_NOSUID | MS_NODEV)
    for name in ("out", ".tmp"):
        path = f"{job}/{name}"
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chown(path, uid, gid)
    if folders.inputs_fd >= 0:
        _bind(folders.inputs_fd, f"{job}/inputs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(f"{root}/tmp", mode=0o755, exist_ok=True)
    _mount(f"{job}/.tmp", f"{root}/tmp", None, MS_BIND)


def _assemble(sources: list[tuple[int, str, int]], folders: JobFolders, uid: int, gid: int,
              tmpfs_mb: int, with_proc: bool) -> None:
    """Build the private root on :data:`NEW_ROOT`: in-memory folders, the binds, the
    job's disk, the system's symlinks, /dev's links, a minimal /etc, and /proc of the
    PID namespace."""
    _mount("tmpfs", NEW_ROOT, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=8m")
    for folder, options in (("dev", "mode=0755,size=64k"),
                            ("dev/shm", f"mode=1777,size={tmpfs_mb}m")):
        os.makedirs(f"{NEW_ROOT}/{folder}", mode=0o755, exist_ok=True)
        _mount("tmpfs", f"{NEW_ROOT}/{folder}", "tmpfs", MS_NOSUID | MS_NODEV, options)
    # The job's disk (and the view's /tmp on it) first: a bind under /tmp (a checkout or
    # a virtualenv there) then lands on top of it instead of being hidden by it.
    _mount_job(folders, NEW_ROOT, uid, gid)
    for fd, path, flags in sources:
        _bind(fd, NEW_ROOT + path, flags)
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            os.symlink(os.readlink(path), NEW_ROOT + path)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{NEW_ROOT}/dev/{name}")
    passwd, group = _users_file(uid, gid)
    os.makedirs(f"{NEW_ROOT}/etc", mode=0o755, exist_ok=True)
    with open(NEW_ROOT + VIEW_MARKER, "w") as handle:
        handle.write("This root holds only what a pruning job needs.\n")
    for name, text in (("passwd", passwd), ("group", group), ("hostname", "edgeai-job\n")):
        with open(f"{NEW_ROOT}/etc/{name}", "w") as handle:
            handle.write(text)
    if with_proc:
        os.makedirs(f"{NEW_ROOT}/proc", mode=0o555, exist_ok=True)
        _mount("proc", f"{NEW_ROOT}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def build_view(job: dict[str, Any], inputs: str | None, read_only: list[str], uid: int,
               gid: int, tmpfs_mb: int, with_proc: bool) -> None:
    """Replace this mount namespace's root by a private one (see the module docstring).

    The job's disk appears as :data:`JOB_DIR`. Every source is opened before anything
    is mounted, so a source under ``/tmp`` (where the new root is assembled) stays
    reachable; the descriptors are closed before the job can see them (an open
    folder outside the root would be a way out). Raises :class:`ConfinementError`.
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Opened in this mount namespace (a bind's source must be of it), before the new
    # root covers the host's /tmp.
    sources = _open_sources(read_only)
    folders = JobFolders(job, inputs)
    try:
        _assemble(sources, folders, uid, gid, tmpfs_mb, with_proc)
    finally:
        folders.close()
        for fd, _, _ in sources:
            os.close(fd)
    os.chdir(NEW_ROOT)
    if SYS_PIVOT_ROOT is None:
        raise ConfinementError(f"pivot_root: unknown on {os.uname().machine}")
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach the old root")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _libc.sethostname(b"edgeai-job", 10)


# -- identity -------------------------------------------------------------------
class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _drop_capabilities(keep_working_set: bool) -> None:
    """Empty the bounding and ambient sets and, unless ``keep_working_set`` (a setuid
    away from root follows and clears them), the effective/permitted/inheritable sets."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    if not keep_working_set:
        data = (_CapData * 2)()
        _check(_libc.capset(ctypes.byref(_CapHeader(0x20080522, 0)), data), "capset")


def drop_identity(uid: int | None, gid: int | None) -> None:
    """Become ``uid``/``gid`` with no groups (when root), drop every capability and set
    ``no_new_privs``. Raises :class:`ConfinementError` if root could be regained."""
    if os.getuid() == 0 and uid is not None:
        _drop_capabilities(keep_working_set=True)
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    else:
        _drop_capabilities(keep_working_set=False)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    if 0 in os.getresuid():
        raise ConfinementError("still root after the drop")


def interpreter_reachable(paths: list[str], uid: int, gid: int) -> str | None:
    """Why ``uid`` could not reach ``paths`` through the host's folders, or None."""
    for path in paths:
        for folder in [*reversed(Path(path).parents), Path(path)]:
            info = folder.stat()
            bit = 0o100 if info.st_uid == uid else 0o010 if info.st_gid == gid else 0o001
            if not info.st_mode & bit:
                return f"{folder} is mode {oct(info.st_mode & 0o777)}"
    return None


# -- reading the layers back ----------------------------------------------------
def kernel_status() -> dict[str, str]:
    """Fields of ``/proc/self/status`` (uids, capabilities, no_new_privs, seccomp)."""
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def network_interfaces() -> list[str]:
    """Names of the network interfaces this process can see."""
    try:
        with open("/proc/self/net/dev") as handle:
            return sorted(line.split(":")[0].strip() for line in handle.readlines()[2:])
    except OSError:
        import socket

        return sorted(name for _, name in socket.if_nameindex())


def readable(path: str) -> bool:
    """Whether this process can list (a folder) or open (a file) ``path``."""
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            os.close(os.open(path, os.O_RDONLY))
        return True
    except OSError:
        return False


def identity_in_force() -> tuple[bool, int]:
    """(no uid 0, no capability in any set, no_new_privs), and the real uid."""
    status = kernel_status()
    uids = [int(v) for v in status["Uid"].split()]
    caps = [int(status[key], 16) for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb")]
    return (0 not in uids and not any(caps) and status.get("NoNewPrivs") == "1"), uids[0]


# -- all of it --------------------------------------------------------------------
class _Layers:
    """What :func:`confine` built so far, and why a layer is missing."""

    def __init__(self, skip: set[str]):
        self.skip = skip
        self.state: dict[str, Any] = dict.fromkeys(LAYERS, False)
        self.notes: dict[str, str] = {}

    def wanted(self, layer: str) -> bool:
        if layer in self.skip:
            self.notes[layer] = "skipped (EDGEAI_SANDBOX_SKIP)"
            return False
        return layer not in self.notes

    def attempt(self, layer: str, build: Any) -> None:
        """Run ``build()`` for ``layer`` unless skipped; a failure becomes its note."""
        if not self.wanted(layer):
            return
        try:
            self.state[layer] = build() or True
        except OSError as error:
            self.notes[layer] = str(error)


def confine(spec: dict[str, Any]) -> dict[str, Any]:
    """Build every layer ``spec`` asks for; return what is in force and why not.

    ``spec`` keys: ``parent_pid``, ``limits`` (see :mod:`.limits`), ``job`` (the job's
    disk: ``{"image": path}`` of an ext4 image to mount, or ``{"folder": path}``),
    ``inputs`` (the folder of its inputs, bound read-only), ``uid``/``gid`` (the job's
    own, when the server is root), ``cpus`` (the cores the job may run on), ``skip``
    (layer names not to build), ``extra_read_only``, ``hidden`` (paths that must not
    be readable afterwards), ``tmpfs_mb`` (/dev/shm). Must run while single-threaded.
    In a PID namespace this forks: the caller continues as the namespace's first
    process. Returns ``{"layers": {layer: state}, "uid": int, "notes": {layer: why
    missing}, "workdir": the job's folder as the job sees it, "inputs": its inputs'
    folder, "disk": "image" or "folder", "cpus": [...]}``.
    """
    if not single_threaded():
        raise ConfinementError("confinement must run before any thread starts")
    layers = _Layers(set(spec.get("skip") or ()))
    die_with_parent(spec["parent_pid"])
    set_limits(spec["limits"])
    os.nice(10)  # below the server: status calls stay fast while a job computes
    if spec.get("cpus"):
        os.sched_setaffinity(0, spec["cpus"])  # seccomp forbids widening it later
    layers.notes.update(enter_namespaces(*(layer not in layers.skip
                                           for layer in ("view", "pid", "network"))))
    if layers.wanted("pid"):
        become_init_of_pid_namespace()
        layers.state["pid"] = os.getpid() == 1
    uid, gid = spec.get("uid"), spec.get("gid")
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    read_only = read_only_paths(tuple(spec.get("extra_read_only") or ()),
                                tuple(spec.get("hidden") or ()))
    layers.attempt("view", lambda: build_view(spec["job"], spec.get("inputs"), read_only, uid,
                                              gid, spec.get("tmpfs_mb", 64),
                                              with_proc=bool(layers.state["pid"])))
    workdir, inputs = _job_folders(spec, layers, uid, gid)
    if layers.wanted("network"):
        layers.state["network"] = network_interfaces() == ["lo"]
    if not layers.state["view"] and (why := interpreter_reachable(read_only, uid, gid)):
        layers.notes.setdefault("identity", f"without the view the sandbox user cannot run "
                                            f"Python ({why}); the job keeps the server's user")
    layers.attempt("identity", lambda: drop_identity(spec.get("uid"), spec.get("gid")))
    die_with_parent()
    layers.attempt("landlock", lambda: landlock.restrict(
        *landlock_rules(workdir, read_only, bool(layers.state["view"]), inputs)))
    layers.attempt("seccomp", seccomp.install)
    if os.getuid() != 0:
        limit_processes(spec["limits"])
    _read_back(layers, tuple(spec.get("hidden") or ()))
    return {"layers": layers.state, "uid": os.getuid(), "notes": layers.notes,
            "workdir": workdir, "inputs": inputs,
            "disk": "image" if spec["job"].get("image") else "folder",
            "cpus": sorted(os.sched_getaffinity(0))}


def _job_folders(spec: dict[str, Any], layers: _Layers, uid: int,
                 gid: int) -> tuple[str, str | None]:
    """(the job's folder, its inputs' folder) as the job sees them: in the view, its
    mounted disk; without, the server's folder (its ``out`` and ``.tmp`` made the job
    user's). Raises ConfinementError for a disk image, which only the view can mount."""
    if layers.state["view"]:
        return JOB_DIR, f"{JOB_DIR}/inputs"
    if not spec["job"].get("folder"):
        raise ConfinementError("the job's disk image can be mounted only in the view "
                               f"({layers.notes.get('view', 'skipped')})")
    workdir = spec["job"]["folder"]
    for name in ("out", ".tmp"):
        os.makedirs(f"{workdir}/{name}", mode=0o700, exist_ok=True)
        os.chown(f"{workdir}/{name}", uid, gid)
    return workdir, spec.get("inputs")


def _read_back(layers: _Layers, hidden: tuple[str, ...]) -> None:
    """Replace what was attempted by what the kernel says is in force."""
    visible = [path for path in hidden if readable(path)]
    if visible:  # neither file-system layer holds, whatever it claims
        for layer in ("view", "landlock"):
            layers.state[layer] = False
            layers.notes.setdefault(layer, "readable despite the confinement: "
                                    + ", ".join(visible))
    layers.state["view"] = bool(layers.state["view"]) and os.path.exists(VIEW_MARKER)
    layers.state["identity"], _ = identity_in_force()
    layers.state["seccomp"] = kernel_status().get("Seccomp") == "2"
    for layer in LAYERS:
        if not layers.state[layer]:
            layers.notes.setdefault(layer, "not in force")


def landlock_rules(workdir: str, read_only: list[str], view_built: bool,
                   inputs: str | None = None) -> tuple[list[str], list[str]]:
    """(read-only, writable) paths for Landlock: the whole view when there is one, the
    same list as the view's binds otherwise."""
    if view_built:
        return ["/"], [workdir, "/tmp", "/dev/shm", *WRITABLE_DEVICES]
    readable_paths = [*read_only, *SYS_DIRS, *(f"/etc/{name}" for name in ETC_FILES),
                      *(f"/dev/{name}" for name in DEVICES), "/proc/self", "/proc/cpuinfo",
                      "/proc/meminfo", "/proc/stat", *([inputs] if inputs else [])]
    return readable_paths, [workdir, *WRITABLE_DEVICES]
