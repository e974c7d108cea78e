"""The database: engine, sessions, migrations, and the app hook.

SQLite in WAL mode so that readers (status calls) never wait for the writer,
with a busy timeout so that several gunicorn workers share one file. Ordinary
transactions begin DEFERRED; the queue's claim asks for ``BEGIN IMMEDIATE``
through :func:`immediate` so that "count running, then claim" is atomic across
processes. The Alembic migrations ship inside the package as ``edgeai.migrations``
(the top-level ``migrations/`` folder, mapped by setup.cfg).
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

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from edgeai.db.models import STATUS_CODES, ApiKey, Base, Transaction

MIGRATIONS_PACKAGE = "edgeai.migrations"

_BUSY_TIMEOUT_MS = 30000


def make_engine(database_url: str) -> Engine:
    """Create an engine; for SQLite, set WAL, a busy timeout and explicit BEGINs."""
    is_sqlite = database_url.startswith("sqlite")
    kwargs = {"connect_args": {"check_same_thread": False, "timeout": _BUSY_TIMEOUT_MS / 1000}}
    engine = create_engine(database_url, **(kwargs if is_sqlite else {}))
    if is_sqlite:
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

    @contextmanager
    def immediate(self) -> Iterator[Session]:
        """A write transaction that takes SQLite's write lock at BEGIN."""
        with self._immediate() as session, session.begin():
            yield session

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

    Several gunicorn workers start at once; a file lock makes them migrate one
    after the other (the later ones find nothing to do). Raises what Alembic
    raises, and ModuleNotFoundError when the migrations cannot be found.
    """
    from alembic import command
    from alembic.config import Config

    lock_path = Path(lock_dir or ".") / ".migrate.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with migrations_dir() as scripts, open(lock_path, "a+") as lock:
        config = Config()
        config.set_main_option("script_location", str(scripts))
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            command.upgrade(config, "head")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
    "init_app",
    "make_engine",
    "migrations_dir",
    "upgrade_database",
]
