"""A job's disk: a file system of its own, of a fixed size, that the kernel bounds.

The server makes a sparse image file per job (``EDGEAI_JOB_DISK_MB``; by default
four times the job's uploads plus 1 GB) and formats it as ext4 with a bounded
number of files (:func:`make_image`). The child, still root and in its own mount
namespace, attaches the image to a free loop device and mounts it (:func:`attach`)
as the job's ``/job``: bytes and files past the size fail with ``ENOSPC`` — there is
no overshoot to police — and the mount exists only in the child's namespace, so the
server never has the job's file system mounted at all. When the job's last process
exits, the namespace and its mount go, the loop device clears itself
(``LO_FLAGS_AUTOCLEAR``), and deleting the image gives the disk back in one step,
whatever the job built inside it (a tree 10,000 levels deep is one file to the server).

The file system is mounted with ``discard``, so what the job deletes is punched out
of the sparse image: the image's allocated size is what the job holds, and the
supervisor reads it through the descriptor it made the image with
(:func:`allocated_bytes`), against what the fresh file system could hold
(:func:`capacity_bytes`, from its superblock) to tell a job that filled its disk.

Where loop devices cannot be used (a server that is not root, no /dev/loop-control,
no mkfs.ext4), the job gets a plain folder on the server's disk and the supervisor
walks it to enforce the same bound, stopping a job within one poll of passing it.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import stat
import subprocess
import time

LOOP_SET_FD, LOOP_CLR_FD, LOOP_SET_STATUS64 = 0x4C00, 0x4C01, 0x4C04
LOOP_CONFIGURE, LOOP_CTL_GET_FREE = 0x4C0A, 0x4C82
LO_FLAGS_AUTOCLEAR = 4
MS_NOSUID, MS_NODEV = 2, 4
# One file per 16 KiB of disk, at least 4,096 and at most a million.
BYTES_PER_INODE = 16 << 10
DEFAULT_EXTRA_MB = 1024


class DiskError(OSError):
    """The job's disk could not be made or attached; ``str()`` says why."""


class _LoopInfo64(ctypes.Structure):
    _fields_ = [("lo_device", ctypes.c_uint64), ("lo_inode", ctypes.c_uint64),
                ("lo_rdevice", ctypes.c_uint64), ("lo_offset", ctypes.c_uint64),
                ("lo_sizelimit", ctypes.c_uint64), ("lo_number", ctypes.c_uint32),
                ("lo_encrypt_type", ctypes.c_uint32), ("lo_encrypt_key_size", ctypes.c_uint32),
                ("lo_flags", ctypes.c_uint32), ("lo_file_name", ctypes.c_uint8 * 64),
                ("lo_crypt_name", ctypes.c_uint8 * 64), ("lo_encrypt_key", ctypes.c_uint8 * 32),
                ("lo_init", ctypes.c_uint64 * 2)]


class _LoopConfig(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_uint32), ("block_size", ctypes.c_uint32),
                ("info", _LoopInfo64), ("reserved", ctypes.c_uint64 * 8)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]


def default_size_mb(input_bytes: int) -> int:
    """The default disk of a job: four times its uploads plus 1 GB."""
    return 4 * (-(-input_bytes // (1 << 20))) + DEFAULT_EXTRA_MB


def loop_devices_usable() -> str | None:
    """Why this host cannot give jobs loop-mounted disks, or None when it can."""
    if os.geteuid() != 0:
        return "the server is not root (loop devices and mounts need it)"
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control (the loop module is not loaded)"
    if shutil.which("mkfs.ext4") is None and not os.path.exists("/sbin/mkfs.ext4"):
        return "mkfs.ext4 is missing (Debian's e2fsprogs)"
    return None


def make_image(dir_fd: int, name: str, size_mb: int, uid: int | None, gid: int | None) -> int:
    """Create ``name`` in the folder ``dir_fd`` (the server's own) as a sparse ext4 image
    of ``size_mb`` whose root folder belongs to ``uid``; return a descriptor of it (kept
    by the supervisor to read the allocated size). Raises :class:`DiskError`."""
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        os.ftruncate(fd, size_mb << 20)
        inodes = max(4096, min(1_000_000, (size_mb << 20) // BYTES_PER_INODE))
        owner = f",root_owner={uid}:{gid}" if uid is not None else ""
        # mke2fs writes through /proc/self/fd: the image is never reached by a path
        # that anything else could change.
        done = subprocess.run(
            [shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4", "-q", "-F", "-O",
             "^has_journal", "-m", "0", "-N", str(inodes),
             "-E", f"lazy_itable_init=1,nodiscard{owner}", f"/proc/self/fd/{fd}"],
            pass_fds=(fd,), capture_output=True, timeout=60, check=False)
        if done.returncode != 0:
            raise DiskError(f"mkfs.ext4 failed: {done.stderr.decode(errors='replace')[-300:]}")
        return fd
    except BaseException:
        os.close(fd)
        raise


def capacity_bytes(fd: int) -> int:
    """Bytes of data the fresh ext4 image behind ``fd`` can hold (its free blocks, read
    from its superblock; read only by the server, before the job has touched it).
    Raises :class:`DiskError` when it is not an ext file system."""
    block = os.pread(fd, 1024, 1024)
    if len(block) < 60 or int.from_bytes(block[56:58], "little") != 0xEF53:
        raise DiskError("the job's disk image has no ext4 superblock")
    blocks = int.from_bytes(block[4:8], "little")
    free_blocks = int.from_bytes(block[12:16], "little")
    block_size = 1024 << int.from_bytes(block[24:28], "little")
    # ext4 keeps min(4096 blocks, 2 %) back from writers for its own metadata.
    return (free_blocks - min(4096, blocks // 50)) * block_size


def free_bytes(fd: int) -> int:
    """Bytes the image behind ``fd`` has free, from its superblock: exact once the job's
    mount is gone (the kernel writes the counts when it unmounts), which is when the
    supervisor asks. Counts blocks a job reserved with ``fallocate`` and never wrote,
    which the image's allocated size does not show. Raises :class:`DiskError`."""
    block = os.pread(fd, 1024, 1024)
    if len(block) < 0x160 or int.from_bytes(block[56:58], "little") != 0xEF53:
        raise DiskError("the job's disk image has no ext4 superblock")
    free_blocks = int.from_bytes(block[12:16], "little")
    free_blocks |= int.from_bytes(block[0x158:0x15C], "little") << 32
    return free_blocks * (1024 << int.from_bytes(block[24:28], "little"))


def allocated_bytes(fd: int) -> int:
    """Bytes the image behind ``fd`` holds on the server's disk (its allocated blocks)."""
    return os.fstat(fd).st_blocks * 512


def attach(image_fd: int, target: str) -> str:
    """Attach the image open at ``image_fd`` to a free loop device and mount it on
    ``target`` (in the caller's mount namespace; root only); return the device's path.
    The device detaches itself when the mount goes. Raises :class:`DiskError`."""
    if not stat.S_ISREG(os.fstat(image_fd).st_mode):
        raise DiskError("the job's disk image is not a plain file")
    device, device_fd = _bind_free_device(image_fd)
    try:
        if _libc.mount(device.encode(), target.encode(), b"ext4", MS_NOSUID | MS_NODEV,
                       b"discard") != 0:
            raise DiskError(f"mount {device} on {target}: "
                            f"{os.strerror(ctypes.get_errno())}")
    finally:
        os.close(device_fd)  # the mount holds the device now; autoclear on its release
    return device


def _bind_free_device(image_fd: int) -> tuple[str, int]:
    control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(50):  # another process may take the same free device first
            number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
            device = f"/dev/loop{number}"
            try:
                device_fd = _open_device(device)
            except OSError:
                continue
            config = _LoopConfig(fd=image_fd, block_size=0)
            config.info.lo_flags = LO_FLAGS_AUTOCLEAR
            try:
                fcntl.ioctl(device_fd, LOOP_CONFIGURE, bytes(config))
                return device, device_fd
            except OSError as error:
                os.close(device_fd)
                if error.errno == errno.EBUSY:
                    time.sleep(0.002)
                    continue
                raise DiskError(f"loop device {device}: {error.strerror}") from None
        raise DiskError("no free loop device after 50 tries")
    finally:
        os.close(control)


def _open_device(device: str) -> int:
    for _ in range(100):  # udev may create the node a moment after GET_FREE
        try:
            return os.open(device, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            time.sleep(0.002)
    raise FileNotFoundError(device)


def tree_usage(dir_fd: int, limit_entries: int, max_pending: int = 1024,
               ) -> tuple[int, int, bool]:
    """(bytes allocated, entries, complete) of the folder tree behind ``dir_fd``, walked
    by descriptors without following links. The walk stops at ``limit_entries`` entries
    or ``max_pending`` folders waiting to be read, and then says it is not complete
    (the caller treats that as over the bound). For hosts without loop devices, where
    the job's folder is on the server's disk."""
    total, entries, complete = 0, 0, True
    stack = [os.dup(dir_fd)]
    try:
        while stack:
            if entries >= limit_entries:
                complete = False
                break
            fd = stack.pop()
            try:
                with os.scandir(fd) as listing:
                    for entry in listing:
                        entries += 1
                        try:
                            info = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        total += info.st_blocks * 512
                        if stat.S_ISDIR(info.st_mode):
                            if len(stack) >= max_pending:
                                complete = False
                                continue
                            try:
                                stack.append(os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY
                                                     | os.O_NOFOLLOW | os.O_CLOEXEC,
                                                     dir_fd=fd))
                            except OSError:
                                pass
            except OSError:
                pass
            finally:
                os.close(fd)
    finally:
        for fd in stack:
            os.close(fd)
    return total, entries, complete
