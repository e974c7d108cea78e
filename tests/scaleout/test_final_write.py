"""A job's final write, on SQLite and on a real PostgreSQL: what the job says is checked
before it is stored, and a write the database refuses anyway fails the job with the
reason and removes what it published, instead of re-running it until its attempts are
spent with its files left behind.

Each job runs in a real sandbox child whose code sets its own report, message and
artifact names (``tests.sandbox.report_entry``), through a real :class:`JobRunner`.
"""
from __future__ import annotations

import io
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from edgeai.config import Settings
from edgeai.db import Database, Transaction, upgrade_database
from edgeai.queue import claim_next_job, finish_job, submit
from edgeai.runner import JobRunner
from edgeai.sandbox import Limits, Sandbox
from edgeai.storage import LocalStorage

REPO = Path(__file__).resolve().parents[2]
TERMINAL = ("done", "failed")


class Service:
    """A database of one engine, a data dir, and a job runner whose sandbox children run
    the job's code as ``tests.sandbox.report_entry`` does."""

    def __init__(self, url: str, root: Path):
        self.data = root / "var"
        upgrade_database(url, root)
        self.database = Database(url)
        self.settings = Settings().replace(
            data_dir=self.data, database_url=url, warm_spares=False, poll_seconds=0.05,
            heartbeat_seconds=0.5, max_running_jobs=0, worker_threads=1)
        self.storage = LocalStorage(self.data)
        self.sandbox = Sandbox(self.data / "sandbox", Limits(timeout=120, memory_mb=2048),
                               warm_spares=False, hidden=(str(self.data),),
                               extra_read_only=(str(REPO / "tests"),),
                               entry="tests.sandbox.report_entry:run")
        self.runner: JobRunner | None = None

    @property
    def postgresql(self) -> bool:
        return self.database.is_postgresql

    def submit(self, code: str) -> str:
        """Queue a PyTorch job whose class file is ``code``; return its txid."""
        return submit(self.database, self.storage, self.settings, "client", "pytorch",
                      {"percent": 0.5, "input_size": [1, 28, 28], "model_name": "Net"},
                      {"weights": io.BytesIO(b"weights"),
                       "class_def": io.BytesIO(textwrap.dedent(code).encode())},
                      {"weights": "w.pth", "class_def": "model.py"})

    def start(self) -> None:
        self.runner = JobRunner(self.settings, self.database, self.storage,
                                sandbox=self.sandbox)
        self.runner.start()

    def wait(self, txid: str, timeout: float = 120) -> Transaction:
        """The row once it ends and its run has cleaned up after itself (or as it is
        after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.row(txid)
            if (found.state in TERMINAL and not self.runner.running()) \
                    or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def row(self, txid: str) -> Transaction:
        with self.database.session() as session:
            found = session.get(Transaction, txid)
            session.expunge(found)
            return found

    def files(self, txid: str) -> list[str]:
        """Every file left in the transaction's folder, relative to it."""
        folder = self.storage.transaction_dir(txid)
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    def refuse(self, *states: str) -> None:
        """Make the database itself refuse to record these end states (a trigger)."""
        listed = ", ".join(f"'{state}'" for state in states)
        with self.database.session() as session:
            if self.postgresql:
                session.execute(text(
                    "CREATE FUNCTION refuse_end() RETURNS trigger AS $$ BEGIN "
                    f"IF NEW.state IN ({listed}) THEN RAISE EXCEPTION 'refused by the test'; "
                    "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"))
                session.execute(text("CREATE TRIGGER refuse_end BEFORE UPDATE ON transactions "
                                     "FOR EACH ROW EXECUTE FUNCTION refuse_end()"))
            else:
                session.execute(text(
                    "CREATE TRIGGER refuse_end BEFORE UPDATE ON transactions "
                    f"WHEN NEW.state IN ({listed}) BEGIN "
                    "SELECT RAISE(ABORT, 'refused by the test'); END"))

    def close(self) -> None:
        if self.runner is not None:
            self.runner.stop()
        self.database.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def service(request, tmp_path):
    url = (f"sqlite:///{tmp_path}/edgeai.sqlite3" if request.param == "sqlite"
           else request.getfixturevalue("pg_url"))
    made = Service(url, tmp_path)
    yield made
    made.close()


def test_the_payloads_break_an_unchecked_final_write_on_postgresql(pg_url, tmp_path):
    """The live payloads: a NaN in the report or a NUL in the message, written as the
    runner wrote them before, make PostgreSQL refuse the final write."""
    service = Service(pg_url, tmp_path)
    try:
        for values in ({"report": {"percent": float("nan")}}, {"message": "a\x00b"}):
            txid = service.submit("")
            row = claim_next_job(service.database, "w", 0)
            assert row.txid == txid
            with pytest.raises(SQLAlchemyError):
                finish_job(service.database, txid, "w", lease=row.lease_token,
                           **{"state": "done", "message": "m", **values})
    finally:
        service.close()


def test_a_report_that_is_not_one_fails_the_job_naming_the_field(service):
    service.start()
    txid = service.submit("""
        artifact = "tmpnanmodel.pt"
        extra_files = ["tmpnanstate.pt"]
        report = {"framework": "pytorch", "percent": float("nan"),
                  "artifacts": {"model": artifact, "state_dict": "tmpnanstate.pt"}}
    """)
    row = service.wait(txid)
    assert row.state == "failed" and row.attempts == 1, row.message
    assert row.message.startswith("The job's report was refused: report.percent: expected a "
                                  "finite number in [0, 1), got nan")
    assert service.files(txid) == []  # nothing published, inputs and staging gone


def test_control_characters_in_the_message_are_removed_before_it_is_stored(service):
    service.start()
    txid = service.submit("""
        message = "Total params: 1\\x00\\x1b[2J\\x1b]0;owned\\x07\\r\\n\\tdone\\ud800"
    """)
    row = service.wait(txid)
    assert row.state == "done", row.message
    assert row.message == "Total params: 1[2J]0;owned\n\tdone"


def test_a_final_write_the_database_refuses_fails_the_job_and_removes_its_files(service):
    service.refuse("done")
    txid = service.submit("""
        artifact = "tmprefused.pt"
        extra_files = ["tmprefused_state.pt"]
        report = {"framework": "pytorch", "percent": 0.5,
                  "artifacts": {"model": artifact, "state_dict": "tmprefused_state.pt"}}
    """)
    control = claim_next_job(service.database, "control", 0)  # the trigger is live
    with pytest.raises(SQLAlchemyError, match="refused by the test"):
        finish_job(service.database, txid, "control", lease=control.lease_token,
                   state="done", message="m")
    with service.database.session() as session:  # hand the row back, untouched
        found = session.get(Transaction, txid)
        found.state, found.claimed_by, found.lease_token, found.attempts = (
            "queued", None, None, 0)
    service.start()
    row = service.wait(txid)
    assert row.state == "failed" and row.attempts == 1, row.message
    assert row.message.startswith("The server could not store this job's result (")
    assert "refused by the test" in row.message and len(row.message) <= 2000
    assert service.files(txid) == []  # both published files removed, inputs too
    time.sleep(1.5)  # three heartbeats: nothing re-runs it
    assert service.row(txid).attempts == 1


def test_when_the_database_refuses_every_end_the_files_go_and_the_lease_is_left_to_expire(
        service):
    service.refuse("done", "failed")
    service.start()
    txid = service.submit("""artifact = "tmpstuck.pt\"""")
    deadline = time.monotonic() + 120
    while not service.runner.running() and time.monotonic() < deadline:  # it started
        time.sleep(0.01)
    while service.runner.running() and time.monotonic() < deadline:  # and it ended
        time.sleep(0.05)
    row = service.row(txid)
    assert row.state == "running" and row.attempts == 1  # recovery re-queues it later
    # The published model is gone; the inputs stay for the run that recovery will start.
    assert service.files(txid) == ["inputs/class_def.upload", "inputs/weights.upload"]
