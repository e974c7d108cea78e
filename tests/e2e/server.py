"""A real gunicorn serving edgeai on a loopback port, for end-to-end tests."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GuideClient:
    """What a test does as a client of a running server (``url``): make a key, and ask
    for a transaction's status the guide's way until it ends. A server class supplies
    ``key_env`` (where ``edgeai keys create`` writes); ``restarts = True`` reads a refused
    connection while polling as an API being restarted, not as a failure."""

    url: str
    restarts = False

    def key_env(self) -> dict[str, str]:
        """The environment ``edgeai keys create`` runs in."""
        raise NotImplementedError

    def create_key(self, name: str = "e2e") -> dict[str, str]:
        """Create a key with the real CLI; return the headers a client sends."""
        out = subprocess.run([str(BIN / "edgeai"), "keys", "create", name], env=self.key_env(),
                             check=True, capture_output=True, text=True, cwd=REPO).stdout
        key = json.loads(out)
        return {"X-IBM-Client-Id": key["client_id"], "X-IBM-Client-Secret": key["client_secret"]}

    def status(self, txid: str, headers: dict) -> dict:
        """GET /api/status/?txid= as the guide does."""
        return requests.get(f"{self.url}/api/status/", params={"txid": txid}, headers=headers,
                            timeout=30).json()

    def wait(self, txid: str, headers: dict, timeout: float = 300) -> dict:
        """Poll status until done or failed; return the last body."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                body = self.status(txid, headers)
            except requests.RequestException:
                if not self.restarts:
                    raise
                body = {"status": "?"}
            if body["status"] in ("0", "-1") or time.monotonic() > deadline:
                return body
            time.sleep(0.2)


class LiveServer(GuideClient):
    """Start, stop and kill a gunicorn with ``workers`` processes on ``data_dir``."""

    def __init__(self, data_dir: Path, workers: int = 2, **env: str):
        self.data_dir = Path(data_dir)
        self.workers = workers
        self.env = {k.upper() if k.startswith("EDGEAI") else k: str(v) for k, v in env.items()}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"gunicorn-{self.port}.log"

    def start(self, timeout: float = 60) -> "LiveServer":
        """Start gunicorn and wait until it answers /healthz; raises RuntimeError if not."""
        env = dict(os.environ, EDGEAI_DATA_DIR=str(self.data_dir), **self.env)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "python:edgeai.gunicorn_config",
             "--bind", f"127.0.0.1:{self.port}", "--workers",
             str(self.workers), "--worker-class", "gthread", "--threads", "4",
             "--timeout", "120", "--graceful-timeout", "10", "--no-control-socket",
             "wsgi:app"],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).ok:
                    return self
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError("gunicorn did not answer in time")

    def stop(self) -> None:
        """Graceful stop (SIGTERM), as a service manager would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def kill(self) -> None:
        """SIGKILL the master and every worker at once, like a power cut for the server."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def key_env(self) -> dict[str, str]:
        """The environment ``edgeai keys create`` runs in: this server's data dir."""
        return dict(os.environ, EDGEAI_DATA_DIR=str(self.data_dir), **self.env)
