"""Fixtures that start a real gunicorn (2 workers) on a fresh data dir."""
from __future__ import annotations

import pytest

from tests.e2e.server import LiveServer


@pytest.fixture
def live_server(tmp_path):
    """Factory: ``live_server(**EDGEAI_settings)`` starts a server, stopped at teardown."""
    servers = []

    def start(data_dir=None, **env):
        server = LiveServer(data_dir or tmp_path / "var", **env)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()
