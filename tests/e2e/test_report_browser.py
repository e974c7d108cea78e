"""The report page in a real headless Chromium, for a finished Keras and PyTorch guide job.

One gunicorn for the module, two small jobs submitted together. Chromium loads each
``report_url`` with nothing but the link (no API headers), and its DOM must hold the
summary and the per-layer chart; every console message Chromium logs (a CSP violation,
a failed load, a script error) fails the test — the page has no script and loads
nothing, so there must be none. Screenshots are kept at ``var/artifacts/report-keras.png``
and ``var/artifacts/report-pytorch.png`` in the checkout.

Needs Debian's ``chromium`` (``.ci/run`` installs it); skipped where it is absent.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from edgeai.report_page.links import SALT
from tests.e2e.guide import build_mnist_base, write_guide_pytorch_files
from tests.e2e.server import REPO, LiveServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "var" / "artifacts"
SECRET = "report-browser-test-secret-" + "x" * 20

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(CHROMIUM is None,
                                 reason="Debian package chromium is not installed")]


def chromium(url: str, profile: Path, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """Load ``url`` headless; return its DOM and the console lines Chromium logged."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr",
               "--v=0", "--window-size=1100,1900", "--dump-dom"]
    if screenshot is not None:
        command.append(f"--screenshot={screenshot}")
    done = subprocess.run(command + [url], capture_output=True, text=True, timeout=120)
    return done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One gunicorn whose report links are signed with a secret this test knows."""
    live = LiveServer(tmp_path_factory.mktemp("report-browser") / "var", workers=1,
                      EDGEAI_REPORT_SECRET=SECRET)
    live.start(timeout=120)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def finished(server, tmp_path_factory):
    """A done Keras job and a done PyTorch job of one client: {name: status body}."""
    folder = tmp_path_factory.mktemp("report-models")
    headers = server.create_key("report-browser")
    # The PyTorch job first: it runs on the server while this process imports Keras.
    files = write_guide_pytorch_files(folder)
    with open(files["weights"], "rb") as w, open(files["class_def"], "rb") as c:
        torch_txid = requests.post(
            f"{server.url}/api/pt_prune?percent=0.5&ommitted=fc1,fc2&input_size=1,28,28",
            headers=headers, files={"weights": ("mnist_cnn.pth", w),
                                    "class_def": ("model.py", c)}, timeout=60).json()["txid"]
    model = build_mnist_base(folder / "mnist_base.h5")
    with open(model, "rb") as handle:
        keras_txid = requests.post(f"{server.url}/api/tf_prune?percent=0.4&ommitted=",
                                   headers=headers, files={"model": ("mnist_base.h5", handle)},
                                   timeout=60).json()["txid"]
    bodies = {"keras": server.wait(keras_txid, headers),
              "pytorch": server.wait(torch_txid, headers)}
    for body in bodies.values():
        assert body["status"] == "0", body
    return bodies, headers


class EightDaysAgo(TimestampSigner):
    """Signs as the server did eight days ago: past the default seven-day lifetime."""

    def get_timestamp(self) -> int:
        return int(time.time()) - 8 * 24 * 3600


def test_console_lines_are_seen(tmp_path):
    """The console check can fail: a page that logs is caught."""
    _, console = chromium("data:text/html,<script>console.error('edgeai-control')</script>",
                          tmp_path / "profile")
    assert any("edgeai-control" in line for line in console)


@pytest.mark.parametrize("name", ["keras", "pytorch"])
def test_report_page_renders_in_chromium(server, finished, name, tmp_path):
    body = finished[0][name]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / f"report-{name}.png"
    screenshot.unlink(missing_ok=True)
    dom, console = chromium(body["report_url"], tmp_path / "profile", screenshot)
    print(f"report page screenshot: {screenshot}")
    assert console == []
    assert body["txid"] in dom and 'id="summary"' in dom
    assert 'class="card"' in dom and "parameters" in dom and "exactness" in dom
    chart = dom.split('id="layer-chart"', 1)[1].split("</svg>", 1)[0]
    assert chart.count('class="layer"') >= 3 and "<rect" in chart
    assert screenshot.stat().st_size > 20_000
    # The page's download link serves the API's file without API headers.
    link = re.search(r'href="([^"/]+/download\?format=model)"', dom).group(1)
    page_file = requests.get(body["report_url"].rsplit("/", 1)[0] + "/" + link, timeout=60)
    api_file = requests.get(f"{server.url}/api/download", params={"txid": body["txid"]},
                            headers=finished[1], timeout=60)
    assert page_file.status_code == 200 and page_file.content == api_file.content


def test_expired_and_foreign_tokens_are_404_in_the_browser(server, finished, tmp_path):
    bodies, headers = finished
    txid = bodies["keras"]["txid"]
    expired = URLSafeTimedSerializer(SECRET, salt=SALT, signer=EightDaysAgo).dumps(
        [txid, headers["X-IBM-Client-Id"]])
    # Signed with the server's own secret, but for a client that does not own the job.
    foreign = URLSafeTimedSerializer(SECRET, salt=SALT).dumps([txid, "edgeai-0123456789abcdef"])
    for token in (expired, foreign):
        response = requests.get(f"{server.url}/report/{token}", timeout=30)
        assert response.status_code == 404 and "Report not found" in response.text
    dom, console = chromium(f"{server.url}/report/{expired}", tmp_path / "profile")
    assert "Report not found" in dom and txid not in dom and console == []
    assert requests.get(bodies["keras"]["report_url"], timeout=30).status_code == 200
