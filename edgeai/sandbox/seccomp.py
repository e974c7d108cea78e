"""A seccomp filter: the system calls a pruning job never needs fail with EPERM.

Built with libseccomp (Debian's ``libseccomp2``, which apt itself depends on)
through ``ctypes``; libseccomp turns names into numbers for the running
architecture and kills a process that switches to a foreign one (x32, i386).
The filter is a deny-list on purpose: TensorFlow and torch use several hundred
system calls, and what they use changes between releases; what is denied here
are the calls that cross the job's walls — debugging or reading other
processes, namespaces and mounts, kernel keys, BPF, perf, io_uring (which
bypasses seccomp), module and clock changes, every socket family but ``AF_UNIX``
(the job's network is already an empty namespace), and the calls that would take
more of the host than the job was given: widening its cores or raising its
priority, memory no process's RSS shows (memfd, System V shared memory, socket and
pipe buffers grown past their defaults), and leaving the death signal that ties it
to its parent.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket

ACT_ALLOW = 0x7FFF0000
CMP_NE, CMP_EQ, CMP_MASKED_EQ = 1, 4, 7
ATTR_CTL_NNP = 3

DENIED = (
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # namespaces, mounts and roots
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "mount_setattr",
    "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick",
    "open_by_handle_at", "name_to_handle_at",
    # kernel facilities a job has no use for
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "fanotify_init",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl", "lookup_dcookie",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "ioperm", "iopl",
    "vhangup", "uselib", "personality", "nfsservctl",
    # the job's share of the host: cores, priority and memory the kernel would not count
    # (a memfd or System V segment written but never mapped is in no process's RSS)
    "sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr",
    "setpriority", "ioprio_set", "memfd_create", "memfd_secret", "shmget",
    "migrate_pages", "move_pages",
)
PR_SET_PDEATHSIG = 1
SO_SNDBUF, SO_RCVBUF, SO_SNDBUFFORCE, SO_RCVBUFFORCE = 7, 8, 32, 33
F_SETPIPE_SZ = 1031
# clone() with any of these flags would start a new namespace.
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                         0x20000000, 0x40000000, 0x00000080)


class SeccompError(OSError):
    """libseccomp is missing or the filter could not be loaded."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as error:
        raise SeccompError(f"libseccomp is not installed ({error}); install the "
                              "libseccomp2 package") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    return lib


def install() -> dict:
    """Load the filter into the calling thread (and every thread it starts later).

    Returns ``{"denied": <count of calls denied>}``. Raises :class:`SeccompError`.
    """
    lib = _library()
    ctx = lib.seccomp_init(ACT_ALLOW)
    if not ctx:
        raise SeccompError("seccomp_init failed")
    try:
        lib.seccomp_attr_set(ctx, ATTR_CTL_NNP, 1)
        denied = 0

        def rule(name: str, action: int, *compare: _ArgCmp) -> None:
            nonlocal denied
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:  # not a system call on this architecture
                return
            array = (_ArgCmp * len(compare))(*compare) if compare else None
            code = lib.seccomp_rule_add_array(ctx, action, number, len(compare), array)
            if code < 0:
                raise SeccompError(f"seccomp rule for {name}: error {-code}")
            denied += 1

        for name in DENIED:
            rule(name, _errno_action(errno.EPERM))
        unix_only = _ArgCmp(0, CMP_NE, socket.AF_UNIX, 0)
        rule("socket", _errno_action(errno.EAFNOSUPPORT), unix_only)
        rule("socketpair", _errno_action(errno.EAFNOSUPPORT), unix_only)
        # The job dies with the process that waits for it: it may not opt out.
        rule("prctl", _errno_action(errno.EPERM), _ArgCmp(0, CMP_EQ, PR_SET_PDEATHSIG, 0))
        # Kernel memory no RSS shows: socket buffers and pipes keep their default sizes
        # (the supervisor counts a job's sockets at those sizes).
        for option in (SO_SNDBUF, SO_RCVBUF, SO_SNDBUFFORCE, SO_RCVBUFFORCE):
            rule("setsockopt", _errno_action(errno.EPERM),
                 _ArgCmp(1, CMP_EQ, socket.SOL_SOCKET, 0), _ArgCmp(2, CMP_EQ, option, 0))
        rule("fcntl", _errno_action(errno.EPERM), _ArgCmp(1, CMP_EQ, F_SETPIPE_SZ, 0))
        for flag in CLONE_NAMESPACE_FLAGS:
            rule("clone", _errno_action(errno.EPERM), _ArgCmp(0, CMP_MASKED_EQ, flag, flag))
        # clone3 passes its flags in memory a filter cannot read: answer ENOSYS so the
        # C library falls back to clone(), whose flags the rules above do see.
        rule("clone3", _errno_action(errno.ENOSYS))
        code = lib.seccomp_load(ctx)
        if code < 0:
            raise SeccompError(f"seccomp_load: error {-code}")
        return {"denied": denied}
    finally:
        lib.seccomp_release(ctx)
