"""EDGEAI_MIN_FREE_DISK_MB on a real gunicorn whose data dir is a small file system of its
own (a 64 MB tmpfs): an upload that would take the disk below the reserve gets 507,
whether it says its length (refused before it is received) or streams without one
(refused once received), and the disk is back where it was."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import requests

pytestmark = pytest.mark.e2e

MB = 1024 * 1024
BOUNDARY = "edgeaiboundary"


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB file system for the server's data dir."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
            capture_output=True).returncode != 0:
        pytest.skip("mounting a small file system needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def multipart(size: int, chunked: bool):
    """A tf_prune body of ``size`` bytes of model: a generator (sent chunked, no length)
    or bytes (sent with Content-Length)."""
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"; "
            "filename=\"big.h5\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    block = b"\x89HDF\r\n\x1a\n" + b"\0" * (MB - 8)

    def parts():
        yield head
        for _ in range(size // MB):
            yield block
        yield tail

    return parts() if chunked else b"".join(parts())


def post(server, headers, body):
    return requests.post(f"{server.url}/api/tf_prune?percent=0.4", data=body, timeout=120,
                         headers={**headers, "Content-Type":
                                  f"multipart/form-data; boundary={BOUNDARY}"})


def used(data) -> int:
    return shutil.disk_usage(data).used


def test_uploads_below_the_reserve_get_507_and_leave_the_disk_as_it_was(live_server,
                                                                         small_disk):
    data = small_disk / "var"
    server = live_server(data, workers=1, EDGEAI_RUN_JOBS="off",
                         EDGEAI_MIN_FREE_DISK_MB="40")
    headers = server.create_key()
    before = used(data)
    # 30 MB streamed without a length: nothing to refuse it on until it is received,
    # when less than 40 MB would be left.
    response = post(server, headers, multipart(30 * MB, chunked=True))
    assert response.status_code == 507, response.text
    assert response.json()["txid"] is None
    assert "EDGEAI_MIN_FREE_DISK_MB" in response.json()["message"]
    assert used(data) - before < MB and list((data / "incoming").iterdir()) == []
    assert list((data / "jobs").iterdir()) == []
    # 30 MB with its length: refused before it is received.
    response = post(server, headers, multipart(30 * MB, chunked=False))
    assert response.status_code == 507
    assert "this upload needs 31 MB" in response.json()["message"]  # 30 MB and a form
    assert used(data) - before < MB
    # A small one still fits above the reserve (the refusals were the reserve's).
    response = post(server, headers, multipart(2 * MB, chunked=False))
    assert response.status_code == 200, response.text
    server.stop()

    # Control: without a reserve, the same stream is stored and fills most of the disk.
    server = live_server(data, workers=1, EDGEAI_RUN_JOBS="off", EDGEAI_MIN_FREE_DISK_MB="0")
    response = post(server, headers, multipart(30 * MB, chunked=True))
    assert response.status_code == 200, response.text
    assert shutil.disk_usage(data).free < 40 * MB
