"""The database's clock, as Unix epoch seconds, for leases shared by several hosts.

A lease is written by one host and judged stale by another; their clocks may
disagree by more than a heartbeat. Every lease time (``heartbeat_at``,
``started_at``, ``finished_at``) is therefore taken from the one clock they all
share, the database's: ``db_now()`` is a SQL expression, evaluated by the server.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import Float
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement


class db_now(FunctionElement):
    """``now()`` of the database server, in Unix epoch seconds (a float)."""

    type = Float()
    inherit_cache = True
    name = "db_now"


@compiles(db_now, "postgresql")
def _postgresql_now(_element: Any, _compiler: Any, **_kw: Any) -> str:
    # statement_timestamp(): the time of this statement, not of the transaction's start.
    return "CAST(EXTRACT(EPOCH FROM statement_timestamp()) AS DOUBLE PRECISION)"


@compiles(db_now, "sqlite")
def _sqlite_now(_element: Any, _compiler: Any, **_kw: Any) -> str:
    # julianday('now') has millisecond resolution; 2440587.5 is the Unix epoch's day.
    return "((julianday('now') - 2440587.5) * 86400.0)"
