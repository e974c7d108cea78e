"""The Swagger page in a real headless Chromium: it renders the guide's four operations.

Needs Debian's ``chromium`` (``.ci/run`` installs it); skipped where it is absent.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium is not installed")
def test_swagger_ui_renders_in_chromium(live_server, tmp_path):
    server = live_server()
    screenshot = tmp_path / "docs.png"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=15000", "--window-size=1280,1600"]
    dom = subprocess.run(flags + ["--dump-dom", server.url + "/docs"], capture_output=True,
                         text=True, timeout=120).stdout
    for path in ("/tf_prune", "/pt_prune", "/status", "/download"):
        assert f'data-path="{path}"' in dom or f">{path}<" in dom, path
    assert "opblock" in dom  # operations were rendered by swagger-ui's JavaScript
    assert "edgeai pruning API" in dom
    subprocess.run(flags + [f"--screenshot={screenshot}", server.url + "/docs"],
                   capture_output=True, timeout=120)
    assert screenshot.stat().st_size > 10_000
