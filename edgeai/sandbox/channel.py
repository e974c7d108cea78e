"""The one way anything comes back from a job: a pipe, framed, read with bounds.

A child reports on a pipe the supervisor made (the child's descriptor 3), never
through files in its folder: the server does not open, rename or copy anything in
a tree the job can change, so there is no link, swapped folder or name for a job
to aim at the server's files. Frames are ``kind`` (one byte), ``length`` (eight
bytes, big-endian) and ``length`` bytes:

``J``  a JSON object: ``{"type": "ready", "confinement": {...}}`` (before any job
       code runs), ``{"type": "file", "key": "model", "suffix": ".h5"}`` (an ``F``
       frame follows), ``{"type": "result", "ok": ..., ...}`` (the last frame).
``P``  progress, a small JSON object ``{"phase": ..., "progress": ...}``.
``F``  the bytes of the file announced just before.

Once job code has run, everything on the pipe is the job's to write, so the reader
(:class:`ChannelReader`, a thread in the server) takes it as hostile: frames and
files are bounded, names of files are the server's (``stem`` + a checked suffix,
created ``O_EXCL`` in the server's own staging folder), keys are checked, the
latest progress is kept as raw bytes and parsed only when asked, and anything out
of order ends the reading with a reason.
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

HEADER = struct.Struct(">cQ")
MAX_MESSAGE_BYTES = 16 << 20
MAX_PROGRESS_BYTES = 512
MAX_TOTAL_MESSAGE_BYTES = 64 << 20
# JSON values one message may make (counted on its bytes before it is parsed: five
# million empty lists fit in 16 MB and would cost the server hundreds of MB to build).
MAX_MESSAGE_VALUES = 400_000
MAX_FILES = 16
KEY = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
SUFFIX = re.compile(r"[._-][A-Za-z0-9._-]{0,31}")
CHANNEL_FD = 3


# -- the child's side ---------------------------------------------------------------
class ChannelWriter:
    """Frames written by the child on descriptor ``fd``."""

    def __init__(self, fd: int = CHANNEL_FD):
        self.fd = fd

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def send(self, message: dict[str, Any]) -> None:
        """One JSON frame."""
        body = json.dumps(message, default=str).encode()
        self._write(HEADER.pack(b"J", len(body)) + body)

    def send_progress(self, phase: str, fraction: float | None) -> None:
        """One progress frame."""
        body = json.dumps({"phase": phase, "progress": fraction}).encode()
        self._write(HEADER.pack(b"P", len(body)) + body)

    def send_file(self, key: str, suffix: str, path: str) -> None:
        """Announce ``key`` and stream the file at ``path`` as an ``F`` frame."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            self.send({"type": "file", "key": key, "suffix": suffix})
            self._write(HEADER.pack(b"F", size))
            sent = 0
            while sent < size:
                done = os.sendfile(self.fd, fd, sent, min(size - sent, 1 << 24))
                if done == 0:
                    raise OSError(f"{path} shrank while it was sent")
                sent += done
        finally:
            os.close(fd)


# -- the server's side --------------------------------------------------------------
class ChannelError(Exception):
    """The child broke the protocol; ``str()`` says how."""


@dataclass
class Received:
    """What a child sent: its confinement report, its result, the files it handed over
    (key -> the server's file name in the staging folder) and their bytes."""

    confinement: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    file_bytes: int = 0
    error: str | None = None


class ChannelReader:
    """Reads a child's channel in a thread of its own (see the module docstring).

    ``staging_fd`` is the server's folder for the files, ``stem`` the server's name
    for them, ``max_file_bytes`` the most all files together may hold.
    """

    def __init__(self, fd: int, staging_fd: int, stem: str, max_file_bytes: int):
        self.fd = fd
        self.staging_fd = staging_fd
        self.stem = stem
        self.max_file_bytes = max_file_bytes
        self.received = Received()
        self.ready = threading.Event()
        self.ready_at: float | None = None
        self.done = threading.Event()
        self._progress: bytes | None = None
        self._message_bytes = 0
        self._buffer = bytearray()
        self._ended = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="sandbox-channel")
        self._thread.start()

    # -- reading ---------------------------------------------------------------
    def _read_exactly(self, size: int) -> bytes | None:
        """``size`` bytes, or None at the end of the stream (a frame cut short ends the
        reading too: what is left in the buffer is never taken for a header)."""
        while len(self._buffer) < size:
            chunk = os.read(self.fd, max(65536, size - len(self._buffer)))
            if not chunk:
                self._ended = True
                return None
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _run(self) -> None:
        try:
            while not self._ended:
                header = self._read_exactly(HEADER.size)
                if header is None:
                    return
                kind, length = HEADER.unpack(header)
                if kind == b"P":
                    self._progress_frame(length)
                elif kind == b"J":
                    self._message(length)
                else:
                    raise ChannelError("sent data where a message was expected")
        except ChannelError as error:
            self.received.error = str(error)
        except OSError as error:
            self.received.error = f"the channel failed: {error.strerror}"
        finally:
            self.done.set()
            self.ready.set()  # nobody waits for a ready that will never come

    def _progress_frame(self, length: int) -> None:
        if length > MAX_PROGRESS_BYTES:
            raise ChannelError(f"sent a progress report of {length} bytes (at most "
                               f"{MAX_PROGRESS_BYTES})")
        body = self._read_exactly(length)
        if body is not None:
            self._progress = body  # parsed only when asked: a flood costs no parsing

    def _message(self, length: int) -> None:
        if length > MAX_MESSAGE_BYTES:
            raise ChannelError(f"sent a message of {length} bytes (at most "
                               f"{MAX_MESSAGE_BYTES >> 20} MB)")
        self._message_bytes += length
        if self._message_bytes > MAX_TOTAL_MESSAGE_BYTES:
            raise ChannelError(f"sent more than {MAX_TOTAL_MESSAGE_BYTES >> 20} MB of messages")
        body = self._read_exactly(length)
        if body is None:
            return
        if self.received.result is not None:
            raise ChannelError("kept sending after its result")
        if body.count(b",") + body.count(b"[") + body.count(b"{") > MAX_MESSAGE_VALUES:
            raise ChannelError(f"sent a message of more than {MAX_MESSAGE_VALUES} values")
        try:
            message = json.loads(body)
        except (ValueError, RecursionError):
            raise ChannelError("sent a message that is not JSON") from None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "ready" and self.received.confinement is None:
            confinement = message.get("confinement")
            self.received.confinement = confinement if isinstance(confinement, dict) else {}
            self.ready_at = time.monotonic()
            self.ready.set()
        elif kind == "file":
            self._file(message)
        elif kind == "result":
            self.received.result = message
        else:
            raise ChannelError(f"sent a message of an unknown type ({str(kind)[:40]!r})")

    def _file(self, message: dict[str, Any]) -> None:
        key, suffix = message.get("key"), message.get("suffix")
        if not (isinstance(key, str) and KEY.fullmatch(key)):
            raise ChannelError("named a file with a key that is not allowed")
        if not (isinstance(suffix, str) and SUFFIX.fullmatch(suffix)) or ".." in suffix:
            raise ChannelError(f"gave file {key!r} a suffix that is not allowed")
        if key in self.received.files or len(self.received.files) >= MAX_FILES:
            raise ChannelError(f"sent file {key!r} twice, or more than {MAX_FILES} files")
        header = self._read_exactly(HEADER.size)
        if header is None:
            return
        kind, size = HEADER.unpack(header)
        if kind != b"F":
            raise ChannelError(f"announced file {key!r} but sent no data")
        if self.received.file_bytes + size > self.max_file_bytes:
            raise ChannelError(f"sent files of more than {self.max_file_bytes >> 20} MB, "
                               "the job's disk (EDGEAI_JOB_DISK_MB)")
        # The server's name: its stem and the suffix; a second file with the same suffix
        # (two formats the child wrote as .pt) gets the key in its name too.
        name = self.stem + suffix
        if name in self.received.files.values():
            name = f"{self.stem}-{key}{suffix}"
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o600, dir_fd=self.staging_fd)
        try:
            left = size
            if self._buffer:
                take = bytes(self._buffer[:left])
                del self._buffer[:left]
                _write_all(out, take)
                left -= len(take)
            while left:
                chunk = os.read(self.fd, min(left, 1 << 20))
                if not chunk:
                    raise ChannelError(f"file {key!r} ended early")
                _write_all(out, chunk)
                left -= len(chunk)
        finally:
            os.close(out)
        self.received.files[key] = name
        self.received.file_bytes += size

    # -- asking ----------------------------------------------------------------
    def progress(self) -> tuple[str, float | None] | None:
        """The latest progress as (phase, fraction), or None when absent or invalid;
        see :func:`parse_progress`."""
        raw = self._progress
        return parse_progress(raw) if raw is not None else None

    def wait(self, timeout: float) -> bool:
        """Wait for the end of the channel (every writer closed it); True if it ended."""
        return self.done.wait(timeout)


def parse_progress(raw: bytes, phases: frozenset[str] | None = None) -> \
        tuple[str, float | None] | None:
    """A progress frame as (phase, fraction), or None: a JSON object whose ``phase`` is
    one of the pipeline's and whose ``progress`` is null or a finite number in [0, 1]."""
    if phases is None:
        from edgeai.pruning.progress import JOB_PHASES

        phases = frozenset(JOB_PHASES)
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("phase"), str) \
            or payload["phase"] not in phases:
        return None
    fraction = payload.get("progress")
    if fraction is None:
        return payload["phase"], None
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not math.isfinite(fraction) or not 0 <= fraction <= 1:
        return None
    return payload["phase"], float(fraction)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
