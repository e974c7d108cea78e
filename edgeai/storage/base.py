"""The storage interface: what the API and the runner ask of wherever files live.

A transaction's files are its uploads (``inputs``, one per role such as
``weights``), stored when it is submitted and deleted when its job ends, and its
artifacts (``result``, bare file names the server made), published whole when its
job is done and deleted when they expire. Two stores implement it:
:class:`edgeai.storage.local.LocalStorage` (a folder, the default) and
:class:`edgeai.storage.s3.S3Storage` (a bucket shared by every host).

Whatever the store, jobs run on local files: :meth:`FileStore.fetch_inputs` puts
a job's inputs where the sandbox can link them into its child's slot, and
:meth:`FileStore.work_dir` is a local folder for what the child produced.

Client file names never reach a path or a key: the txid (a uuid the server made,
checked by :func:`check_txid`) names the transaction, roles are fixed words, and
artifact names are bare names the server made (:func:`check_filename`).
"""
from __future__ import annotations

import secrets
import string
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol


class Readable(Protocol):
    """A stream the API can send: read in chunks, closed by the response."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class StorageError(RuntimeError):
    """The store cannot be used (unreachable, no such bucket, refused credentials)."""


def check_txid(txid: str) -> str:
    """Return ``txid``; raises ValueError unless it is a uuid in canonical form."""
    if str(uuid.UUID(txid)) != txid:
        raise ValueError("txid is not in canonical uuid form")
    return txid


def check_filename(filename: str) -> str:
    """Return ``filename``; raises ValueError unless it is a bare, visible file name of at
    most 255 bytes without control characters (it goes into a path, a key and a
    Content-Disposition header)."""
    if not filename or Path(filename).name != filename or filename.startswith(".") \
            or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in filename) \
            or len(filename.encode("utf-8", "surrogateescape")) > 255:
        raise ValueError(f"not a bare file name: {filename!r}")
    return filename


def check_role(role: str) -> str:
    """Return ``role``; raises ValueError unless it is a plain word (``weights``)."""
    if not role.isidentifier():
        raise ValueError(f"not a role name: {role!r}")
    return role


@dataclass(frozen=True)
class Download:
    """How the API sends an artifact: exactly one of ``source`` (a local path, or a
    readable stream of ``size`` bytes that the response closes) and ``url`` (a
    presigned address to redirect the client to)."""

    source: Path | Readable | None = None
    size: int | None = None
    url: str | None = None


class FileStore(ABC):
    """Where transactions' files live; see the module docstring."""

    @abstractmethod
    def describe(self) -> str:
        """A line for the start-up log: which store, where (never a credential)."""

    @abstractmethod
    def check(self) -> None:
        """Make sure the store can be used now (at start-up); raises StorageError."""

    @abstractmethod
    def new_incoming_file(self) -> IO[bytes]:
        """A local temporary file for Werkzeug to stream an upload into."""

    @abstractmethod
    def store_upload(self, txid: str, role: str, stream: IO[bytes]) -> int:
        """Store an uploaded stream as ``role``'s input of ``txid``, never holding it
        whole in memory; return its size in bytes."""

    @abstractmethod
    def fetch_inputs(self, txid: str, roles: Iterable[str], scratch: Path) -> dict[str, Path]:
        """The stored inputs of ``txid`` among ``roles``, as local files (fetched into
        ``scratch``, a run's :meth:`work_dir`, when the store is remote). Roles with
        no stored file are left out."""

    @abstractmethod
    def work_dir(self, txid: str, run: str = "") -> Path:
        """A new, empty local folder for one run (``run``) of ``txid``."""

    @abstractmethod
    def publish(self, txid: str, produced: Path, filename: str) -> Path | None:
        """Make the local file ``produced`` the artifact ``filename`` of ``txid``,
        atomically: a reader sees the whole file under that name, or nothing. Returns
        the artifact's local path, where it has one."""

    @abstractmethod
    def open_download(self, txid: str, filename: str) -> Download | None:
        """How to send the artifact ``filename`` of ``txid``; None if it is gone."""

    @abstractmethod
    def remove_artifacts(self, txid: str, filenames: Iterable[str]) -> None:
        """Delete these artifacts of ``txid`` (a run whose result was discarded)."""

    @abstractmethod
    def remove_work(self, txid: str, run: str = "") -> None:
        """Delete a run's local work folder."""

    @abstractmethod
    def remove_inputs(self, txid: str) -> None:
        """Delete the uploads of ``txid`` once its job has ended."""

    @abstractmethod
    def remove_results(self, txid: str) -> None:
        """Delete artifacts and inputs of ``txid`` (retention expiry)."""

    @abstractmethod
    def remove_transaction(self, txid: str) -> None:
        """Delete everything stored for ``txid`` (a submission that never got queued)."""

    @abstractmethod
    def remove_leftovers(self) -> list[str]:
        """Delete what dead processes sharing this host's data dir left there (a run's
        staging folder and its fetched inputs, an upload being received), never what a
        live process uses; called when a server or worker starts. Returns what was
        removed; never raises for what the folders hold."""


_ALPHABET = string.ascii_lowercase + string.digits + "_"


def artifact_stem() -> str:
    """A name like the guide's ``tmp7d8tkpfs``: ``tmp`` and 8 random characters."""
    return "tmp" + "".join(secrets.choice(_ALPHABET) for _ in range(8))
