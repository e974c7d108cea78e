"""Files on disk: one folder per transaction under ``EDGEAI_DATA_DIR/jobs`` (the default).

Layout of ``jobs/<txid>/``::

    inputs/<role>.upload   the client's files, stored under server-made names
    staging[-<run>]/       what a run produced, checked, before publishing
    result/<filename>      the artifact(s), renamed into place once complete

beside ``incoming/`` (uploads being received) and ``quarantine/`` (what a removal
could not delete, moved aside: see :func:`edgeai.sandbox.removal.remove_tree`).

A running job never sees any of this: the sandbox links its inputs into the
child's own slot (``sandbox/slots/``) and moves the outputs back into ``staging``.

Client file names never reach a path: the txid (a uuid the server made, checked
by :func:`transaction_dir`) maps to the folder, and roles are fixed words.

Several processes share one data dir (gunicorn's workers; an API and a worker), and
any of them may be killed outright. A process therefore holds an exclusive ``flock``
on each staging folder of its running jobs and on each upload it is receiving, for as
long as it uses them: the kernel drops the lock when the process dies, however it
dies, so :meth:`LocalStorage.remove_leftovers` can tell a dead run's folder from a
live one without asking which process is which (pids are reused, and a data dir may
be shared by processes of other PID namespaces).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from edgeai.sandbox.removal import remove_tree
from edgeai.storage.base import (
    Download,
    FileStore,
    check_filename,
    check_role,
    check_txid,
)

CHUNK = 1024 * 1024
# An empty transaction folder younger than this is left alone: a submission may be about
# to store its uploads in it.
LEFTOVER_GRACE_SECONDS = 120.0
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

log = logging.getLogger(__name__)


def _lock_free(fd: int) -> bool:
    """Take the exclusive flock of ``fd`` if no one holds it; whether we got it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class LocalStorage(FileStore):
    """Paths and file operations for transactions; the state is the root and the locks
    this process holds on its runs' staging folders."""

    def __init__(self, data_dir: Path):
        self.root = Path(data_dir).resolve()
        self.jobs = self.root / "jobs"
        self.incoming = self.root / "incoming"
        self.quarantine = self.root / "quarantine"
        for path in (self.jobs, self.incoming):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Traverse-only: the sandbox's slots live below (see edgeai.sandbox).
        os.chmod(self.root, 0o711)
        self._held: dict[str, int] = {}  # staging folder -> the descriptor holding its lock
        self._held_lock = threading.Lock()

    def describe(self) -> str:
        return f"folder {self.jobs}"

    def check(self) -> None:
        """Nothing to check: the folders were made above."""

    def transaction_dir(self, txid: str) -> Path:
        """Return the folder of ``txid``; raises ValueError unless it is a uuid."""
        return self.jobs / check_txid(txid)

    def input_path(self, txid: str, role: str) -> Path:
        """Where the upload for ``role`` (a fixed word such as ``weights``) lives."""
        return self.transaction_dir(txid) / "inputs" / f"{check_role(role)}.upload"

    def work_dir(self, txid: str, run: str = "") -> Path:
        """The server's staging folder for one run of ``txid`` (created empty, and locked
        by this process until :meth:`remove_work`). Raises OSError if it cannot be."""
        path = self._staging(txid, run)
        for _ in range(3):
            self._release(path)
            self._remove(path)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:  # another remover's quarantine race; try again
                continue
            fd = os.open(path, _DIR_FLAGS)
            # Blocking: a start-up sweep that took the new, empty folder for a dead run's
            # holds the lock only while it removes it; then this descriptor is stale.
            fcntl.flock(fd, fcntl.LOCK_EX)
            held, now = os.fstat(fd), _lstat(path)
            if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                with self._held_lock:
                    self._held[str(path)] = fd
                return path
            os.close(fd)
        raise OSError(errno.EAGAIN, f"could not make the staging folder {path}")

    def _release(self, path: Path) -> None:
        """Drop this process's lock on a staging folder (if it holds one)."""
        with self._held_lock:
            fd = self._held.pop(str(path), None)
        if fd is not None:
            os.close(fd)

    def _remove(self, path: Path) -> None:
        """Remove a folder a job or a crash could have shaped (see remove_tree); what
        cannot be deleted goes to the quarantine, and is logged there."""
        remove_tree(path, quarantine=self.quarantine)

    def _staging(self, txid: str, run: str) -> Path:
        if run and not run.isalnum():
            raise ValueError(f"not a run name: {run!r}")
        return self.transaction_dir(txid) / (f"staging-{run}" if run else "staging")

    def result_dir(self, txid: str) -> Path:
        """The folder that holds finished artifacts of ``txid``."""
        return self.transaction_dir(txid) / "result"

    def result_path(self, txid: str, filename: str) -> Path:
        """Path of one artifact; raises ValueError if ``filename`` is not a bare name."""
        return self.result_dir(txid) / check_filename(filename)

    def new_incoming_file(self) -> IO[bytes]:
        """A temporary file on the data volume for Werkzeug to stream an upload into,
        locked by this process until it is closed (and so deleted).

        Being on the same file system lets :meth:`store_upload` link it into
        place instead of copying it.
        """
        handle = tempfile.NamedTemporaryFile(dir=self.incoming, prefix="upload-", delete=True)
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # new and ours: never waits
        return handle

    def store_upload(self, txid: str, role: str, stream: IO[bytes]) -> int:
        """Put an uploaded stream at :meth:`input_path`; return its size in bytes.

        A stream Werkzeug spooled into :meth:`new_incoming_file` is hard-linked
        (no copy); anything else is copied in chunks, never read whole.
        """
        dest = self.input_path(txid, role)
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = getattr(stream, "name", None)
        if isinstance(name, str) and Path(name).parent == self.incoming and os.path.exists(name):
            stream.flush()
            os.link(name, dest)
        else:
            stream.seek(0)
            with open(dest, "wb") as out:
                shutil.copyfileobj(stream, out, CHUNK)
        return dest.stat().st_size

    def fetch_inputs(self, txid: str, roles: Iterable[str], scratch: Path) -> dict[str, Path]:
        """The inputs in place: they are local already."""
        paths = {role: self.input_path(txid, role) for role in roles}
        return {role: path for role, path in paths.items() if path.exists()}

    def publish(self, txid: str, produced: Path, filename: str) -> Path:
        """Move a finished artifact into the result folder atomically.

        The bytes are synced before the rename, so a reader can never see a
        half-written model under the final name.
        """
        final = self.result_path(txid, filename)
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = final.with_name(f".{filename}.partial")
        shutil.copyfile(produced, staging) if produced.stat().st_dev != final.parent.stat().st_dev \
            else os.replace(produced, staging)
        with open(staging, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(staging, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final

    def open_download(self, txid: str, filename: str) -> Download | None:
        """The artifact's path (sent with the kernel's help), or None if it is gone."""
        path = self.result_path(txid, filename)
        return Download(source=path) if path.is_file() else None

    def remove_artifacts(self, txid: str, filenames: Iterable[str]) -> None:
        for filename in filenames:
            self.result_path(txid, filename).unlink(missing_ok=True)

    def remove_work(self, txid: str, run: str = "") -> None:
        """Delete the staging folder of one run of ``txid`` (after the run ends)."""
        path = self._staging(txid, run)
        self._remove(path)
        self._release(path)

    def remove_inputs(self, txid: str) -> None:
        """Delete the uploads of ``txid`` once its job has ended."""
        self._remove(self.transaction_dir(txid) / "inputs")

    def remove_results(self, txid: str) -> None:
        """Delete artifacts and inputs of ``txid`` (retention expiry)."""
        base = self.transaction_dir(txid)
        for part in ("result", "inputs"):
            self._remove(base / part)

    def remove_transaction(self, txid: str) -> None:
        """Delete everything stored for ``txid`` (a submission that never got queued)."""
        self._remove(self.transaction_dir(txid))

    def remove_leftovers(self) -> list[str]:
        """Delete what processes that died (``kill -9``, a power cut) left in the data
        dir: staging folders of runs (their fetched inputs and outputs) that no live
        process holds, uploads being received by a process that is gone, transaction
        folders left empty; and retry what the quarantine holds. Returns what it
        removed. Never raises for what the folders hold."""
        removed: list[str] = []

        def sweep(path: Path, remove: Callable[[Path], bool]) -> None:
            try:
                if remove(path):
                    removed.append(str(path))
            except OSError as error:  # one odd entry must not stop the sweep or the start
                log.warning("leftover %s: %s", path, error)

        for txid_dir in _entries(self.jobs):
            if not _UUID.match(txid_dir.name) or not txid_dir.is_dir():
                continue
            for entry in _entries(txid_dir):
                if entry.name.startswith("staging"):
                    sweep(entry, self._abandoned)
            sweep(txid_dir, _remove_if_empty_and_old)
        for entry in _entries(self.incoming):
            if entry.name.startswith("upload-"):
                sweep(entry, self._upload_abandoned)
        for entry in _entries(self.quarantine):
            sweep(entry, _remove_quarantined)
        if removed:
            log.info("removed %d leftover(s) of processes that died: %s", len(removed),
                     ", ".join(removed[:10]) + (" ..." if len(removed) > 10 else ""))
        return removed

    def _abandoned(self, folder: Path) -> bool:
        """Remove ``folder`` (a staging folder) if no live process holds its lock;
        whether it was removed. A link or a file in its place is removed too."""
        try:
            fd = os.open(folder, _DIR_FLAGS)
        except FileNotFoundError:
            return False
        except OSError:  # not a folder: nobody's run
            self._remove(folder)
            return True
        try:
            if not _lock_free(fd):
                return False  # a live run's
            # Held while removing: a run creating this very folder now waits for us.
            self._remove(folder)
            return True
        finally:
            os.close(fd)

    def _upload_abandoned(self, path: Path) -> bool:
        """Delete ``path`` (an upload being received) if no live process holds its lock;
        whether it was deleted. (Should this catch a live upload between its creation
        and its lock, its receiver finds the name gone and copies from the open file
        instead of linking it: :meth:`store_upload`.)"""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        except OSError:  # a link or worse: not a file of ours
            self._remove(path)
            return True
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or not _lock_free(fd):
                return False
            now = _lstat(path)
            if now is not None and (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino):
                path.unlink(missing_ok=True)
                return True
            return False
        finally:
            os.close(fd)


def _remove_if_empty_and_old(folder: Path) -> bool:
    """Remove a transaction folder left empty (its run's folder gone, nothing stored
    locally), unless it is young: a submission may be about to fill it."""
    if not _older_than(folder, LEFTOVER_GRACE_SECONDS):
        return False
    try:
        folder.rmdir()  # only when nothing is left in it
        return True
    except OSError:
        return False


def _remove_quarantined(entry: Path) -> bool:
    """Try again to remove what an earlier removal moved aside."""
    if remove_tree(entry).removed:
        return True
    log.warning("quarantine: %s still cannot be removed (see the log of its removal); "
                "delete it by hand", entry)
    return False


def _entries(folder: Path) -> list[Path]:
    """The entries of ``folder`` (none if it is missing or unreadable)."""
    try:
        return [folder / name for name in os.listdir(folder)]
    except OSError:
        return []


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _older_than(path: Path, seconds: float) -> bool:
    """Whether ``path`` was last modified more than ``seconds`` ago (False if gone)."""
    info = _lstat(path)
    return info is not None and time.time() - info.st_mtime > seconds
