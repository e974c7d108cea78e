"""Settings, read from ``EDGEAI_*`` environment variables with embedded defaults.

Nothing has to be set for ``make run`` to serve on 127.0.0.1:5000. Each setting is
parsed by a small typed reader that names the variable in its error, so a typo in
a deployment fails at start-up instead of at the first request.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """An ``EDGEAI_*`` variable holds a value that cannot be used."""


AUTH_MODES = ("on", "off", "gateway")
S3_DOWNLOADS = ("stream", "redirect")
SANDBOX_MODES = ("strict", "weak")
METRICS_MODES = ("local", "public", "off")
SANDBOX_LAYERS = ("view", "pid", "network", "identity", "landlock", "seccomp")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value >= minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, default).strip().lower() or default
    if value not in allowed:
        raise ConfigError(f"{name}={value!r}; allowed: {', '.join(allowed)}")
    return value


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name, "")
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _names(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    values = tuple(value.lower() for value in _list(env, name))
    unknown = [value for value in values if value not in allowed]
    if unknown:
        raise ConfigError(f"{name}: unknown {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(allowed)}")
    return values


def _database_url(env: Mapping[str, str]) -> str:
    """``EDGEAI_DATABASE_URL``, with PostgreSQL spelled for psycopg 3 (the driver we ship):
    ``postgresql://`` and ``postgres://`` mean ``postgresql+psycopg://``."""
    url = env.get("EDGEAI_DATABASE_URL", "").strip()
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare):]
    if url.startswith("postgresql+") and not url.startswith("postgresql+psycopg://"):
        raise ConfigError(f"EDGEAI_DATABASE_URL uses {url.split(':', 1)[0]!r}; edgeai ships "
                          "psycopg 3: write postgresql+psycopg://user:password@host/db")
    if url and not url.startswith(("sqlite:", "postgresql+psycopg://")):
        raise ConfigError("EDGEAI_DATABASE_URL must be sqlite:///path or "
                          "postgresql+psycopg://user:password@host:port/database")
    return url


def _storage_url(env: Mapping[str, str]) -> str:
    """``EDGEAI_STORAGE_URL``: empty (the data dir) or ``s3://bucket[/prefix]``."""
    url = env.get("EDGEAI_STORAGE_URL", "").strip().rstrip("/")
    if not url:
        return ""
    bucket = url.removeprefix("s3://").split("/", 1)[0]
    if not url.startswith("s3://") or not 3 <= len(bucket) <= 63 or not all(
            c.islower() or c.isdigit() or c in ".-" for c in bucket):
        raise ConfigError(f"EDGEAI_STORAGE_URL={url!r}; use s3://bucket/prefix (a bucket name "
                          "of 3-63 lower-case letters, digits, dots and hyphens), or leave it "
                          "empty for the data dir")
    return url


def _public_url(env: Mapping[str, str]) -> str:
    """``EDGEAI_PUBLIC_URL``: empty (links use the request's host) or ``http(s)://host[/path]``."""
    url = env.get("EDGEAI_PUBLIC_URL", "").strip().rstrip("/")
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError(f"EDGEAI_PUBLIC_URL={url!r}; use the address clients open, e.g. "
                          "https://edgeai.example.com")
    return url


def _uid_range(env: Mapping[str, str]) -> str:
    """``EDGEAI_SANDBOX_UIDS``: an inclusive range of uids, one per job running at once."""
    from edgeai.sandbox.seats import DEFAULT_UIDS, parse_uid_range

    text = env.get("EDGEAI_SANDBOX_UIDS", DEFAULT_UIDS).strip()
    try:
        parse_uid_range(text)
    except ValueError:
        raise ConfigError(f"EDGEAI_SANDBOX_UIDS={text!r}; allowed: an inclusive range of "
                          f"uids no other user has, e.g. {DEFAULT_UIDS}") from None
    return text


def is_postgresql(database_url: str) -> bool:
    """Whether ``database_url`` names a PostgreSQL database (as opposed to a SQLite file)."""
    return database_url.startswith("postgresql")


@dataclass(frozen=True)
class Settings:
    """The service's configuration; see the README's table for each field."""

    data_dir: Path = Path("var")
    database_url: str = ""
    auth: str = "on"
    trusted_proxies: tuple[str, ...] = ()
    gateway_client_header: str = "X-IBM-Client-Id"
    max_upload_mb: int = 512
    min_free_disk_mb: int = 1024
    max_running_jobs: int = 2
    worker_threads: int = 2
    max_jobs_per_client: int = 20
    job_timeout: int = 1800
    job_memory_mb: int = 8192
    job_threads: int = 1
    job_disk_mb: int = 0
    sandbox_uids: str = "64000-64063"
    max_attempts: int = 3
    heartbeat_seconds: float = 2.0
    stale_seconds: float = 30.0
    poll_seconds: float = 0.2
    retention_hours: float = 168.0
    run_jobs: bool = True
    warm_spares: bool = True
    sandbox: str = "strict"
    sandbox_skip: tuple[str, ...] = ()
    storage_url: str = ""
    s3_downloads: str = "stream"
    s3_url_seconds: int = 300
    s3_public_endpoint: str = ""
    worker_grace_seconds: float = 60.0
    public_url: str = ""
    report_link_hours: float = 168.0
    report_secret: str = field(default="", repr=False)
    metrics: str = "local"
    status_waits: int = 2

    @property
    def max_upload_bytes(self) -> int:
        """Upper bound of one request body, in bytes."""
        return self.max_upload_mb * 1024 * 1024

    def replace(self, **changes: Any) -> "Settings":
        """Return a copy with ``changes`` applied (used by tests and the CLI)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        values["data_dir"] = Path(values["data_dir"])
        if not changes.get("database_url") and "data_dir" in changes:
            values["database_url"] = ""
        return Settings(**values).resolved()

    def resolved(self) -> "Settings":
        """Fill derived defaults (the database lives in the data dir unless set)."""
        if self.database_url:
            return self
        path = (Path(self.data_dir) / "edgeai.sqlite3").resolve()
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["database_url"] = f"sqlite:///{path}"
        return Settings(**values)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read :class:`Settings` from ``env`` (default ``os.environ``).

    Raises :class:`ConfigError` naming the variable when a value is unusable.
    """
    env = os.environ if env is None else env
    database_url = _database_url(env)
    settings = Settings(
        data_dir=Path(env.get("EDGEAI_DATA_DIR", "var")),
        database_url=database_url,
        auth=_choice(env, "EDGEAI_AUTH", "on", AUTH_MODES),
        trusted_proxies=_list(env, "EDGEAI_TRUSTED_PROXIES"),
        gateway_client_header=env.get("EDGEAI_GATEWAY_CLIENT_HEADER", "X-IBM-Client-Id"),
        max_upload_mb=_int(env, "EDGEAI_MAX_UPLOAD_MB", 512, 1),
        min_free_disk_mb=_int(env, "EDGEAI_MIN_FREE_DISK_MB", 1024, 0),
        # 0: no service-wide cap, each process runs at most its own threads. That is the
        # default on PostgreSQL, whose workers live on several hosts and are sized there.
        max_running_jobs=_int(env, "EDGEAI_MAX_RUNNING_JOBS",
                              0 if is_postgresql(database_url) else 2, 0),
        worker_threads=_int(env, "EDGEAI_WORKER_THREADS", 2, 1),
        max_jobs_per_client=_int(env, "EDGEAI_MAX_JOBS_PER_CLIENT", 20, 1),
        job_timeout=_int(env, "EDGEAI_JOB_TIMEOUT", 1800, 1),
        job_memory_mb=_int(env, "EDGEAI_JOB_MEMORY_MB", 8192, 256),
        job_threads=_int(env, "EDGEAI_JOB_THREADS", 1, 1),
        # 0: sized to the job, four times its uploads plus 1 GB.
        job_disk_mb=_int(env, "EDGEAI_JOB_DISK_MB", 0, 0),
        sandbox_uids=_uid_range(env),
        max_attempts=_int(env, "EDGEAI_MAX_ATTEMPTS", 3, 1),
        heartbeat_seconds=_float(env, "EDGEAI_HEARTBEAT_SECONDS", 2.0, 0.05),
        stale_seconds=_float(env, "EDGEAI_STALE_SECONDS", 30.0, 0.2),
        poll_seconds=_float(env, "EDGEAI_POLL_SECONDS", 0.2, 0.01),
        retention_hours=_float(env, "EDGEAI_RETENTION_HOURS", 168.0, 0.0),
        run_jobs=_choice(env, "EDGEAI_RUN_JOBS", "on", ("on", "off")) == "on",
        warm_spares=_choice(env, "EDGEAI_WARM_SPARES", "on", ("on", "off")) == "on",
        sandbox=_choice(env, "EDGEAI_SANDBOX", "strict", SANDBOX_MODES),
        sandbox_skip=_names(env, "EDGEAI_SANDBOX_SKIP", SANDBOX_LAYERS),
        storage_url=_storage_url(env),
        s3_downloads=_choice(env, "EDGEAI_S3_DOWNLOADS", "stream", S3_DOWNLOADS),
        s3_url_seconds=_int(env, "EDGEAI_S3_URL_SECONDS", 300, 1),
        s3_public_endpoint=env.get("EDGEAI_S3_PUBLIC_ENDPOINT", "").strip(),
        worker_grace_seconds=_float(env, "EDGEAI_WORKER_GRACE_SECONDS", 60.0, 0.0),
        public_url=_public_url(env),
        report_link_hours=_float(env, "EDGEAI_REPORT_LINK_HOURS", 168.0, 0.0001),
        report_secret=env.get("EDGEAI_REPORT_SECRET", "").strip(),
        metrics=_choice(env, "EDGEAI_METRICS", "local", METRICS_MODES),
        status_waits=_int(env, "EDGEAI_STATUS_WAITS", 2, 0),
    )
    return settings.resolved()
