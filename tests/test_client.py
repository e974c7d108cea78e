"""The Python client treats what a server says as data: a download takes only a plain base
name from the server and never replaces a file unless asked; text is made safe to print.

The server here is a hostile one (a real HTTP server on loopback that answers what the
test tells it to), for what an edgeai server would never send; tests/e2e/test_client_wall.py
does the rest against a real edgeai server."""
from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgeai.client import (
    Client,
    ClientError,
    OutputExists,
    progress_line,
    safe_file_name,
    save_chunks,
    terminal_text,
)

TXID = "0b0c2f7e-1f7a-4c1e-9d6a-2b1f0c9e8a11"


class Hostile(BaseHTTPRequestHandler):
    """Answers status with ``status`` and download with ``headers`` and ``body``."""

    status: dict = {}
    headers_sent: dict = {}
    body = b"pruned model"

    def do_GET(self):
        if self.path.startswith("/api/status"):
            payload, headers = json.dumps(self.status).encode(), {
                "Content-Type": "application/json"}
        else:
            payload, headers = self.body, self.headers_sent
        self.send_response(200)
        for name, value in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def hostile():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def job_on(server):
    return Client(f"http://127.0.0.1:{server.server_port}", "id", "secret").job(TXID)


@pytest.mark.parametrize("disposition", [
    'attachment; filename="."', "attachment; filename=..", 'attachment; filename=".bashrc"',
    'attachment; filename="../../.ssh/authorized_keys"', "attachment; filename=/etc/passwd",
    "attachment; filename*=UTF-8''..%2F..%2Fevil", "attachment; filename*=UTF-8''%1B%5B2J.h5",
    'attachment; filename=""', 'attachment; filename="' + "n" * 300 + '"',
    "attachment; filename*=UTF-8''%FF%FE",
])
def test_a_download_into_a_folder_refuses_odd_names(hostile, tmp_path, disposition):
    Hostile.headers_sent = {"Content-Disposition": disposition}
    folder = tmp_path / "downloads"
    folder.mkdir()
    with pytest.raises(ClientError, match="not a plain file name; pass a file path"):
        job_on(hostile).download(folder)
    assert list(folder.iterdir()) == [] and sorted(os.listdir(tmp_path)) == ["downloads"]


def test_without_a_disposition_the_status_filename_is_checked_too(hostile, tmp_path):
    Hostile.headers_sent = {}
    Hostile.status = {"status": "0", "state": "done", "filename": "../escape.h5"}
    with pytest.raises(ClientError, match="not a plain file name"):
        job_on(hostile).download(tmp_path)
    Hostile.status = {"status": "0", "state": "done", "filename": "tmpabcdefgh.h5"}
    assert job_on(hostile).download(tmp_path).read_bytes() == b"pruned model"


def test_a_plain_name_is_used_and_an_existing_file_is_never_replaced(hostile, tmp_path):
    Hostile.headers_sent = {"Content-Disposition": "attachment; filename=tmpabcdefgh.h5"}
    mine = tmp_path / "tmpabcdefgh.h5"
    mine.write_bytes(b"my own work")
    with pytest.raises(OutputExists, match="exists; not replaced") as refused:
        job_on(hostile).download(tmp_path)
    assert isinstance(refused.value, FileExistsError)
    with pytest.raises(OutputExists):
        job_on(hostile).download(mine)  # a file path: refused before anything is fetched
    assert mine.read_bytes() == b"my own work"
    assert job_on(hostile).download(tmp_path, overwrite=True) == mine
    assert mine.read_bytes() == b"pruned model"
    assert sorted(os.listdir(tmp_path)) == ["tmpabcdefgh.h5"]  # no partial file left


def test_save_chunks_never_follows_or_replaces_a_link(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"keep")
    link = tmp_path / "out.h5"
    os.symlink(elsewhere, link)
    with pytest.raises(OutputExists):
        save_chunks([b"new"], link)
    assert elsewhere.read_bytes() == b"keep"
    save_chunks([b"new"], link, overwrite=True)  # the link itself is replaced
    assert not link.is_symlink() and link.read_bytes() == b"new"
    assert elsewhere.read_bytes() == b"keep"


def test_save_chunks_leaves_nothing_when_the_stream_breaks(tmp_path):
    def broken():
        yield b"half"
        raise ConnectionError("the server went away")

    with pytest.raises(ConnectionError):
        save_chunks(broken(), tmp_path / "out.h5")
    assert os.listdir(tmp_path) == []


def test_terminal_text_keeps_the_words_and_drops_the_controls():
    hostile = ("\x1b]0;owned\x07\x1b[2J\x1b[31mred\x1b[0m \x1bPdcs\x1b\\ok\x9b1;31m"
               "\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\\r\n\tnext\x7f\u202eline\x00")
    assert terminal_text(hostile) == "red oklink\n\tnextline"
    assert terminal_text("Conv2d-1 [-1, 16, 26, 26] 160\n") == "Conv2d-1 [-1, 16, 26, 26] 160\n"
    line = progress_line({"state": "running\x1b[2J", "phase": "loading\x1b]0;x\x07",
                          "progress": 0.5}, 1.0)
    assert "\x1b" not in line and "\x07" not in line and "loading" in line


def test_safe_file_name_says_why():
    assert safe_file_name("tmpabcdefgh.h5") == "tmpabcdefgh.h5"
    for bad in (".", "..", ".x", "a/b", "a\\b", "", None, 3, "a\nb", "a\tb", "x" * 256):
        with pytest.raises(ClientError):
            safe_file_name(bad)
