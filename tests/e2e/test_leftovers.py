"""A server killed with SIGKILL mid-job and mid-upload leaves a run's staging folder and a
half-received upload on disk; started again, it removes both, and the job still ends."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests

from tests.e2e.guide import write_guide_pytorch_files

pytestmark = pytest.mark.e2e


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return found


def slow_upload(url: str, headers: dict, release: threading.Event) -> None:
    """Send the head of a multipart upload, then nothing until ``release`` (or the
    server dies): Werkzeug is receiving it into a file of incoming/ meanwhile."""
    boundary = "edgeaiboundary"

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"; "
               f"filename=\"big.h5\"\r\nContent-Type: application/octet-stream\r\n\r\n"
               ).encode()
        yield b"\x89HDF\r\n\x1a\n" + b"\0" * (1 << 20)
        release.wait(120)

    try:
        requests.post(f"{url}/api/tf_prune?percent=0.4", data=body(), timeout=120,
                      headers={**headers, "Content-Type":
                               f"multipart/form-data; boundary={boundary}"})
    except requests.RequestException:
        pass  # the server was killed under it


def test_a_restart_after_sigkill_removes_the_dead_runs_files(live_server, tmp_path):
    data = tmp_path / "var"
    settings = {"EDGEAI_STALE_SECONDS": "3", "EDGEAI_HEARTBEAT_SECONDS": "0.5",
                "EDGEAI_WARM_SPARES": "off"}
    server = live_server(data, workers=1, **settings)
    headers = server.create_key()
    files = write_guide_pytorch_files(tmp_path / "user")
    with open(files["weights"], "rb") as w, open(files["class_def"], "rb") as c:
        txid = requests.post(
            f"{server.url}/api/pt_prune?percent=0.5&input_size=1,28,28&measure=false",
            headers=headers, files={"weights": ("mnist_cnn.pth", w),
                                    "class_def": ("model.py", c)}, timeout=60).json()["txid"]
    job_folder = data / "jobs" / txid
    [staging] = wait_for(lambda: list(job_folder.glob("staging-*")), 120, "the run to start")
    release = threading.Event()
    uploader = threading.Thread(target=slow_upload, args=(server.url, headers, release))
    uploader.start()
    [upload] = wait_for(lambda: list((data / "incoming").glob("upload-*")), 60,
                        "the upload to be received")
    server.kill()  # the master, its worker, and (dying with them) the job's child
    release.set()
    uploader.join(30)
    assert staging.is_dir() and upload.is_file()  # what a SIGKILL leaves behind

    restarted = live_server(data, workers=1, **settings)
    assert not staging.exists() and not upload.exists()
    assert "removed 2 leftover(s)" in Path(restarted.log_path).read_text()
    body = restarted.wait(txid, headers, timeout=300)  # re-queued once its lease expired
    assert body["status"] == "0", body
    # The run removes its inputs and its folder just after it writes "done".
    wait_for(lambda: sorted(p.name for p in job_folder.iterdir()) == ["result"], 30,
             "the finished run to clean up")
    assert list((data / "incoming").iterdir()) == []
