"""The clients against a real gunicorn whose rows the test writes itself (jobs are not run
here): a file name and a message the server hands over as they are stored, with terminal
controls in them. ``edgeai prune`` prints none of them; ``download`` takes no such name
and replaces no file unless asked."""
from __future__ import annotations

import io
import os
import subprocess
import time

import pytest
import requests
from sqlalchemy import func, select

from edgeai.client import Client, ClientError, OutputExists
from edgeai.db import Database, Transaction
from edgeai.queue import claim_next_job, finish_job
from edgeai.storage import LocalStorage
from tests.e2e.server import BIN, LiveServer
from tests.e2e.test_prune_cli import edgeai_prune

pytestmark = pytest.mark.e2e

H5 = b"\x89HDF\r\n\x1a\n" + b"\0" * 64
HOSTILE_TEXT = "\x1b]0;owned\x07\x1b[2J\x1b[31mbad\x1b[0m model\r\n\x9b1m"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A gunicorn that runs no jobs; the test finishes them by writing their rows."""
    live = LiveServer(tmp_path_factory.mktemp("wall") / "var", workers=1,
                      EDGEAI_RUN_JOBS="off").start()
    live.headers = live.create_key("wall")
    live.database = Database(f"sqlite:///{live.data_dir}/edgeai.sqlite3")
    live.storage = LocalStorage(live.data_dir)
    yield live
    live.database.dispose()
    live.kill()  # nothing to finish gracefully; the graceful stop waits out keep-alives
    live.log.close()


def client_of(server) -> Client:
    return Client(server.url, server.headers["X-IBM-Client-Id"],
                  server.headers["X-IBM-Client-Secret"])


def submit(server) -> str:
    return requests.post(f"{server.url}/api/tf_prune?percent=0.4", headers=server.headers,
                         files={"model": ("m.h5", io.BytesIO(H5))}, timeout=30).json()["txid"]


def finish(server, txid, *, filename=None, message="summary", state="done"):
    """As a worker would: claim the row, publish the artifact, write the end."""
    while (row := claim_next_job(server.database, "test", 0)).txid != txid:
        finish_job(server.database, row.txid, "test", state="failed", message="not this one")
    if filename:
        produced = server.storage.work_dir(txid, "test") / filename
        produced.write_bytes(b"the pruned model")
        server.storage.publish(txid, produced, filename)
        server.storage.remove_work(txid, "test")
    report = {"framework": "tensorflow", "percent": 0.4, "params_before": 100,
              "params_after": 60, "artifacts": {"model": filename}} if filename else None
    assert finish_job(server.database, txid, "test", state=state, message=message,
                      filename=filename, report=report)


def test_a_stored_file_name_with_terminal_controls_is_not_served(server, tmp_path):
    """A row written before names were checked: gunicorn refuses such a name in a
    header (the download answered 500); now it is not served at all, and the client
    writes nothing."""
    txid = submit(server)
    name = "tmp\x1b[2J\x1b]0;owned\x07.h5"
    finish(server, txid, filename="tmpplaceholder.h5")
    folder = server.storage.result_dir(txid)
    (folder / "tmpplaceholder.h5").rename(folder / name)
    with server.database.session() as session:
        row = session.get(Transaction, txid)
        row.filename, row.report = name, {**row.report, "artifacts": {"model": name}}
    served = requests.get(f"{server.url}/api/download", params={"txid": txid},
                          headers=server.headers, timeout=30)
    assert served.status_code == 410, served.text
    with pytest.raises(ClientError) as refused:
        client_of(server).job(txid).download(tmp_path)
    assert refused.value.status_code == 410 and list(tmp_path.iterdir()) == []


def test_a_download_never_replaces_a_file_unless_asked(server, tmp_path):
    txid = submit(server)
    finish(server, txid, filename="tmpabcdefgh.h5")
    mine = tmp_path / "tmpabcdefgh.h5"
    mine.write_bytes(b"my own work")
    job = client_of(server).job(txid)
    with pytest.raises(OutputExists):
        job.download(tmp_path)
    with pytest.raises(OutputExists):
        job.download(mine)
    assert mine.read_bytes() == b"my own work"
    assert job.download(tmp_path, overwrite=True).read_bytes() == b"the pruned model"


def rows(server) -> int:
    with server.database.session() as session:
        return session.scalar(select(func.count()).select_from(Transaction))


def prune_and_finish(server, folder, *args, **end) -> tuple[str, subprocess.CompletedProcess]:
    """Run ``edgeai prune mnist_base.h5 -p 0.4 ARGS`` in ``folder`` against the server;
    when its job is queued, end it as ``end`` says (see :func:`finish`). Returns the
    txid and the finished command."""
    model = folder / "mnist_base.h5"
    model.write_bytes(H5)
    before = rows(server)
    command = subprocess.Popen(
        [str(BIN / "edgeai"), "prune", str(model), "-p", "0.4", *args, "--server",
         server.url], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**edgeai_env(folder), "EDGEAI_CLIENT_ID": server.headers["X-IBM-Client-Id"],
             "EDGEAI_CLIENT_SECRET": server.headers["X-IBM-Client-Secret"]})
    deadline = time.monotonic() + 60
    while rows(server) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    with server.database.session() as session:
        txid = session.scalars(select(Transaction.txid).order_by(
            Transaction.created_at.desc()).limit(1)).one()
    finish(server, txid, **end)
    out, err = command.communicate(timeout=60)
    return txid, subprocess.CompletedProcess(command.args, command.returncode, out, err)


def test_edgeai_prune_prints_the_servers_text_without_its_controls(server, tmp_path):
    txid, run = prune_and_finish(server, tmp_path, state="failed", message=HOSTILE_TEXT)
    status = requests.get(f"{server.url}/api/status", params={"txid": txid},
                          headers=server.headers, timeout=30).json()
    assert "\x1b[2J" in status["message"]  # the live payload, as the API serves it
    assert run.returncode == 1, run.stderr
    assert "the job failed: bad model\n" in run.stderr
    for control in ("\x1b", "\x07", "\r", "\x9b"):
        assert control not in run.stdout + run.stderr


def test_edgeai_prune_takes_a_free_name_rather_than_replace_a_file(server, tmp_path):
    taken = tmp_path / "mnist_base.pruned.h5"
    taken.write_bytes(b"yesterday's model")
    _, run = prune_and_finish(server, tmp_path, filename="tmpabcdefgh.h5")
    assert run.returncode == 0, run.stderr
    assert f"wrote {tmp_path / 'mnist_base.pruned-2.h5'}" in run.stdout
    assert taken.read_bytes() == b"yesterday's model"
    assert (tmp_path / "mnist_base.pruned-2.h5").read_bytes() == b"the pruned model"


def edgeai_env(folder):
    return {**{k: v for k, v in os.environ.items() if not k.startswith("EDGEAI_")},
            "XDG_CONFIG_HOME": str(folder / "config")}


def test_edgeai_prune_keeps_an_existing_output(server, tmp_path):
    model = tmp_path / "mnist_base.h5"
    model.write_bytes(H5)
    taken = tmp_path / "taken.h5"
    taken.write_bytes(b"my own work")
    key = {"EDGEAI_CLIENT_ID": server.headers["X-IBM-Client-Id"],
           "EDGEAI_CLIENT_SECRET": server.headers["X-IBM-Client-Secret"]}
    before = rows(server)
    run = edgeai_prune(model, "-p", "0.4", "-o", taken, "--server", server.url, cwd=tmp_path,
                       env=key)
    assert run.returncode == 2 and "taken.h5 exists; pass --overwrite" in run.stderr
    assert rows(server) == before and taken.read_bytes() == b"my own work"  # nothing sent
