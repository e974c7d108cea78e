"""The tables: transactions (the job queue itself), API keys, and live workers.

Times are stored as Unix epoch seconds (floats): SQLite has no time zone-aware
type, and the queue compares heartbeats arithmetically. Lease times come from
the database's clock (:mod:`edgeai.db.clock`), so hosts need not agree on theirs.
"""
from __future__ import annotations

import time
from typing import Any

from sqlalchemy import JSON, Float, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base shared by the models and Alembic's autogenerate."""


# A transaction's life: queued -> running -> done | failed; done -> expired once
# its artifact is removed after the retention period. A running row whose worker
# died goes back to queued (bounded by max_attempts). Each claim gets a fresh
# ``lease_token``: heartbeats, the final write and a hand-back name the lease, so a
# worker whose lease expired (and whose job another worker took) writes nothing.
# The guide's string status
# codes are derived from the state, never stored, so the two cannot disagree.
STATUS_CODES = {"done": "0", "queued": "1", "running": "2", "failed": "-1", "expired": "-1"}


class Transaction(Base):
    """One pruning request: its inputs, its place in the queue and its outcome."""

    __tablename__ = "transactions"

    txid: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    framework: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    input_names: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    message: Mapped[str] = mapped_column(Text, default="")
    filename: Mapped[str | None] = mapped_column(String(64), nullable=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_token: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    created_at: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Progress as the job reports it (edgeai.pruning.progress.PHASES): "queued" while
    # queued, the pipeline's step while running, "done" when done. A failed job keeps
    # the phase it failed in, so the row says where it stopped.
    phase: Mapped[str | None] = mapped_column(String(16), nullable=True)
    progress: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Set when the client cancels a running job; the worker holding it sees it.
    cancel_requested_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    @property
    def status(self) -> str:
        """The guide's status code: "0" done, "1" queued, "2" running, "-1" failed."""
        return STATUS_CODES[self.state]


class ApiKey(Base):
    """A client's credentials. Only a salted scrypt hash of the secret is kept."""

    __tablename__ = "api_keys"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    secret_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[float] = mapped_column(Float, default=time.time)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Worker(Base):
    """A process that claims jobs (``edgeai worker``, or a server running its own), while it
    lives: registered at start, touched with every heartbeat, removed when it stops or
    when its heartbeat is older than a lease."""

    __tablename__ = "workers"

    worker_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    concurrency: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float, index=True)
