"""The database: engine, sessions, migrations, and the app hook.

Two engines, one schema. **SQLite** (the default, one host) in WAL mode so that
readers (status calls) never wait for the writer, with a busy timeout so that
several gunicorn workers share one file; ordinary transactions begin DEFERRED, and
the queue's writes ask for ``BEGIN IMMEDIATE`` through :meth:`Database.immediate`,
which takes the file's one write lock, so "count, then claim" is atomic across
processes. **PostgreSQL** (``postgresql+psycopg://``, several hosts) runs the same
transactions at READ COMMITTED; the queue claims rows with ``FOR UPDATE SKIP
LOCKED`` and, where a count must hold across hosts (the service-wide cap, a
client's quota), serialises just that section with a transaction-scoped advisory
lock (:meth:`Database.lock`). The Alembic migrations ship inside the package as
``edgeai.migrations`` (the top-level ``migrations/`` folder, mapped by setup.cfg);
on PostgreSQL they run under an advisory lock, so hosts starting together
migrate one at a time.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from edgeai.db.clock import db_now
from edgeai.db.models import STATUS_CODES, ApiKey, Base, Transaction, Worker

MIGRATIONS_PACKAGE = "edgeai.migrations"

_BUSY_TIMEOUT_MS = 30000
# PostgreSQL advisory-lock names are hashed into this key space with hashtextextended.
_LOCK_NAMESPACE = "edgeai:"


def make_engine(database_url: str) -> Engine:
    """Create an engine; for SQLite, set WAL, a busy timeout and explicit BEGINs; for
    PostgreSQL, check pooled connections before use (a database restart or a failover
    must not fail the next request) and give up connecting after 10 s."""
    if not database_url.startswith("sqlite"):
        return create_engine(database_url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                             connect_args={"connect_timeout": 10,
                                           "application_name": "edgeai"})
    engine = create_engine(database_url, connect_args={
        "check_same_thread": False, "timeout": _BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # pysqlite's own implicit BEGIN would defeat BEGIN IMMEDIATE; take over.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


class Database:
    """Owns the engine and hands out sessions; one per app (and per process)."""

    def __init__(self, database_url: str):
        self.url = database_url
        self.engine = make_engine(database_url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._immediate = sessionmaker(
            self.engine.execution_options(sqlite_begin="IMMEDIATE"), expire_on_commit=False
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A short transaction: commits on success, rolls back on error."""
        with self._sessions() as session, session.begin():
            yield session

    @property
    def is_postgresql(self) -> bool:
        """Whether this is PostgreSQL (several hosts) rather than a SQLite file."""
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def immediate(self) -> Iterator[Session]:
        """A write transaction; on SQLite it takes the file's write lock at BEGIN."""
        with self._immediate() as session, session.begin():
            yield session

    def lock(self, session: Session, name: str) -> None:
        """Serialise the rest of ``session``'s transaction with every other holder of
        ``name``, in any process on any host.

        On PostgreSQL, a transaction-scoped advisory lock (released at commit or
        rollback); on SQLite nothing is needed, since :meth:`immediate` already holds
        the only write lock there is.
        """
        if self.is_postgresql:
            session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"),
                            {"name": _LOCK_NAMESPACE + name})

    def dispose(self) -> None:
        """Close pooled connections (after fork, at shutdown)."""
        self.engine.dispose()


@contextmanager
def migrations_dir() -> Iterator[Path]:
    """The Alembic script folder (``env.py``, ``versions/``) as a real directory.

    Installed, editable or not, it is the package ``edgeai.migrations``; a checkout
    used without installing it (on ``PYTHONPATH``) has no such package, so its
    ``migrations/`` folder beside ``edgeai/`` and ``setup.cfg`` is used. Raises
    ModuleNotFoundError when there is neither.
    """
    try:
        root = resources.files(MIGRATIONS_PACKAGE)
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parents[2]
        if not (checkout / "setup.cfg").is_file() or not (checkout / "migrations/env.py").is_file():
            raise
        yield checkout / "migrations"
        return
    with as_directory(root) as folder:
        yield folder


@contextmanager
def as_directory(root: Traversable) -> Iterator[Path]:
    """``root`` as a file-system folder for as long as the block runs.

    Alembic reads a directory. An unpacked install is one already; anything else
    (a zipped package) is copied to a temporary folder, removed afterwards.
    """
    if isinstance(root, Path) or sys.version_info >= (3, 12):
        with resources.as_file(root) as folder:
            yield Path(folder)
        return
    # Python 3.11's as_file copies single files only.
    with tempfile.TemporaryDirectory(prefix="edgeai-migrations-") as tmp:
        _copy_tree(root, Path(tmp))
        yield Path(tmp)


def _copy_tree(source: Traversable, target: Path) -> None:
    for entry in source.iterdir():
        if entry.is_dir():
            (target / entry.name).mkdir()
            _copy_tree(entry, target / entry.name)
        else:
            with entry.open("rb") as src, open(target / entry.name, "wb") as dst:
                shutil.copyfileobj(src, dst)


def upgrade_database(database_url: str, lock_dir: Path | None = None) -> None:
    """Bring the schema to the newest migration.

    Several processes start at once; a lock makes them migrate one after the other
    (the later ones find nothing to do): on SQLite a file lock beside the database's
    data dir, on PostgreSQL an advisory lock in the database, which every host sees.
    Raises what Alembic raises, and ModuleNotFoundError when the migrations cannot be
    found.
    """
    from alembic.config import Config

    with migrations_dir() as scripts:
        config = Config()
        config.set_main_option("script_location", str(scripts))
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
        if database_url.startswith("postgresql"):
            _upgrade_postgresql(config, database_url)
            return
        lock_path = Path(lock_dir or ".") / ".migrate.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                _upgrade(config)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _upgrade(config, connection: Connection | None = None) -> None:
    from alembic import command

    if connection is not None:
        config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _upgrade_postgresql(config, database_url: str) -> None:
    engine = make_engine(database_url)
    key = {"name": _LOCK_NAMESPACE + "migrate"}
    try:
        with engine.connect() as connection:
            # A session-level lock: it outlives the migration's own transactions.
            connection.execute(text("SELECT pg_advisory_lock(hashtextextended(:name, 0))"), key)
            connection.commit()
            try:
                _upgrade(config, connection)
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(hashtextextended(:name, 0))"),
                                   key)
                connection.commit()
    finally:
        engine.dispose()


def init_app(app, settings) -> Database:
    """Create the data dir, migrate, and attach a :class:`Database` to ``app``."""
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.database_url, Path(settings.data_dir))
    if settings.database_url.startswith("sqlite:///"):
        # The file holds key hashes: readable by the server's user only.
        os.chmod(settings.database_url[len("sqlite:///"):], 0o600)
    database = Database(settings.database_url)
    app.extensions["edgeai.db"] = database
    return database


__all__ = [
    "ApiKey",
    "Base",
    "Database",
    "STATUS_CODES",
    "Transaction",
    "Worker",
    "db_now",
    "init_app",
    "make_engine",
    "migrations_dir",
    "upgrade_database",
]
