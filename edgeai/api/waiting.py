"""Status long-polls: ``GET /api/status?txid=...&wait=S`` answers as soon as the job
leaves queued/running, or after ``S`` seconds with the status it has then.

A long-poll holds one of its gunicorn worker's threads (4 by default) while it
waits, so a process holds at most ``EDGEAI_STATUS_WAITS`` of them (default 2); a
status call beyond that is answered at once, as if it had not asked to wait, and
the client polls as before. A waiting call looks at its row every
:data:`CHECK_SECONDS` (a read of one column by primary key), and at once when a
job run by this process ends; when the server stops, every waiting call answers.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import select

from edgeai.db import Database, Transaction
from edgeai.errors import BadRequest

MAX_WAIT_SECONDS = 30
# How often a waiting call reads its row: a job another process (or host) finishes is
# seen within this, plus the read.
CHECK_SECONDS = 0.05
WAIT_HELP = (f"Seconds (0 to {MAX_WAIT_SECONDS}) to hold the answer while the job is queued "
             "or running: the call answers as soon as the job ends, or after that long with "
             "the status it has then. 0 or absent: answer at once. A server busy with "
             "other waiting calls answers at once.")


def parse_wait(raw: str | None, status: str = "-1") -> float:
    """The ``wait`` parameter in seconds (absent or empty: 0). Raises BadRequest, with
    the transaction's ``status``, for anything but a number from 0 to the maximum."""
    if raw is None or not raw.strip():
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_WAIT_SECONDS:  # NaN fails too
        raise BadRequest(f"wait must be a number of seconds from 0 to {MAX_WAIT_SECONDS} "
                         f"(how long to hold the answer while the job runs); got "
                         f"{raw[:40]!r}.", status=status)
    return value


class StatusWaits:
    """The long-polls of one process: at most ``cap`` at once; all end when
    ``stopping`` is set (the server is shutting down)."""

    def __init__(self, cap: int, stopping: threading.Event):
        self.cap = cap
        self.stopping = stopping
        self._held = 0
        self._lock = threading.Lock()

    @contextmanager
    def slot(self) -> Iterator[bool]:
        """Take a place for one long-poll; yields False when all ``cap`` are taken."""
        with self._lock:
            granted = self._held < self.cap
            if granted:
                self._held += 1
        try:
            yield granted
        finally:
            if granted:
                with self._lock:
                    self._held -= 1

    def until_ended(self, database: Database, txid: str, seconds: float,
                    ended: threading.Condition | None = None) -> None:
        """Return once transaction ``txid`` is no longer queued or running, after
        ``seconds``, or when the server stops, whichever is first. ``ended`` is
        notified when this process finishes a job (a read follows at once)."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set():
            with database.session() as session:
                state = session.scalar(select(Transaction.state)
                                       .where(Transaction.txid == txid))
            remaining = deadline - time.monotonic()
            if state not in ("queued", "running") or remaining <= 0:
                return
            pause = min(CHECK_SECONDS, remaining)
            if ended is None:
                self.stopping.wait(pause)
            else:
                with ended:
                    ended.wait(pause)
