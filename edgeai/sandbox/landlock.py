"""Landlock (Linux >= 5.13): an unprivileged, path-based allow-list the kernel enforces.

Once :func:`restrict` has run, the calling thread and everything it starts may
touch the file system only beneath the paths it allowed, with the rights it
allowed; TCP bind/connect are denied outright (ABI >= 4), and signals and
abstract Unix sockets cannot reach processes outside the domain (ABI >= 6).
A Landlock domain binds the *calling thread* and its future children, so it is
applied while the sandbox child is still single-threaded (before a framework
starts its thread pools). Bindings are plain ``ctypes`` syscalls: no package,
and the syscall numbers are the same on every architecture.
"""
from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Iterable

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1

# File-system rights, by the ABI version that introduced them.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
# Rights that make sense on a file (the kernel refuses the others on a non-directory).
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ_ONLY = EXECUTE | READ_FILE | READ_DIR
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
PR_SET_NO_NEW_PRIVS = 38


class LandlockError(OSError):
    """Landlock is missing or a rule could not be added."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _fail(what: str) -> LandlockError:
    code = ctypes.get_errno()
    return LandlockError(f"landlock {what}: {os.strerror(code)}")


def abi_version() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is missing or disabled."""
    version = _libc.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                            ctypes.c_uint32(CREATE_RULESET_VERSION))
    return max(0, int(version))


def handled_fs_rights(abi: int) -> int:
    """Every file-system right ``abi`` knows (all of them are denied unless allowed)."""
    return max(mask for version, mask in _FS_BY_ABI.items() if version <= abi)


def restrict(read_only: Iterable[str], writable: Iterable[str]) -> dict:
    """Allow only reading/executing beneath ``read_only`` and everything beneath
    ``writable``; deny TCP and scope signals and abstract sockets where the ABI can.

    Paths that do not exist are skipped. Sets ``no_new_privs`` (Landlock requires
    it of an unprivileged caller). Returns what is enforced
    (``{"abi": 7, "fs": True, "net": True, "scoped": True}``); raises
    :class:`LandlockError` where Landlock is unavailable.
    """
    abi = abi_version()
    if abi < 1:
        raise LandlockError("Landlock is not available (Linux 5.13+ with landlock in "
                               "the lsm= boot list)")
    fs_rights = handled_fs_rights(abi)
    attr = _RulesetAttr(handled_access_fs=fs_rights,
                        handled_access_net=(NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 else 0,
                        scoped=(SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = _libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                            ctypes.c_uint32(0))
    if ruleset < 0:
        raise _fail("create_ruleset")
    try:
        for paths, rights in ((read_only, READ_ONLY), (writable, fs_rights)):
            for path in paths:
                _allow(int(ruleset), path, rights & fs_rights)
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise _fail("no_new_privs")
        if _libc.syscall(SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise _fail("restrict_self")
    finally:
        os.close(ruleset)
    return {"abi": abi, "fs": True, "net": abi >= 4, "scoped": abi >= 6}


def _allow(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= FILE_RIGHTS
        rule = _PathBeneathAttr(allowed_access=rights, parent_fd=fd)
        if _libc.syscall(SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH),
                         ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            raise _fail(f"add_rule {path}")
    finally:
        os.close(fd)
