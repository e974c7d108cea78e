"""The metrics module: who may scrape, the sandbox-failure classifier, reports as the
child's word, and the folder gunicorn's workers share (the sums across real worker
processes are checked in tests/e2e/test_metrics.py)."""
from __future__ import annotations

import ast
import os
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeai import metrics
from edgeai.metrics import SANDBOX_REASONS, may_scrape, multiprocess_dir, sandbox_failure_reason

SANDBOX_SOURCES = [Path(metrics.__file__).parent / "sandbox" / name
                   for name in ("supervisor.py", "child.py")]


def messages_in(path: Path) -> list[str]:
    """Every string the module can build, f-string fields standing as ``1``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.JoinedStr):
            found.append("".join(part.value if isinstance(part, ast.Constant) else "1"
                                 for part in node.values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node.value)
    return found


def test_every_reason_is_still_something_the_sandbox_says():
    """A message reworded in the sandbox would silently stop being counted."""
    said = [text for path in SANDBOX_SOURCES for text in messages_in(path)]
    for reason, pattern in SANDBOX_REASONS:
        assert any(pattern.search(text) for text in said), reason


@pytest.mark.parametrize("message, reason", [
    ("The job used more than the 3072 MB memory limit (EDGEAI_JOB_MEMORY_MB) and was "
     "stopped.", "memory"),
    ("Pruning failed: RuntimeError: [enforce fail at alloc_cpu.cpp:121] data. "
     "DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes.",
     "memory"),
    ("The job took longer than the 20 s limit (EDGEAI_JOB_TIMEOUT) and was stopped.",
     "timeout"),
    ("Pruning failed: the pruning process crashed (killed by SIGXCPU (CPU time limit)).",
     "cpu_time"),
    ("Pruning failed: the pruning process crashed (killed by SIGSEGV).", "crash"),
    ("Unknown layer in ommitted: 'fc9'; did you mean 'fc2'?", None),
    ("cancelled by the client", None),
    ("The server stopped while this job ran.", None),
])
def test_failure_messages_are_classified(message, reason):
    assert sandbox_failure_reason(message) == reason


@pytest.mark.parametrize("mode, address, allowed", [
    ("local", "127.0.0.1", True), ("local", "127.5.6.7", True), ("local", "::1", True),
    ("local", "::ffff:127.0.0.1", True), ("local", "10.0.0.9", True),
    ("local", "10.1.0.9", False), ("local", "192.168.1.2", False), ("local", "", False),
    ("local", "garbage", False), ("public", "192.168.1.2", True), ("off", "127.0.0.1", False),
])
def test_who_may_scrape(mode, address, allowed):
    assert may_scrape(mode, ("10.0.0.0/24",), address) is allowed


def test_metrics_answer_loopback_and_refuse_others_saying_why(make_app):
    client = make_app().test_client()
    response = client.get("/metrics")
    assert response.status_code == 200
    names = {family.name for family in text_string_to_metric_families(response.get_data(
        as_text=True))}
    assert {"edgeai_jobs", "edgeai_queue_depth", "edgeai_sandbox_failures"} <= names
    response = client.get("/metrics", environ_base={"REMOTE_ADDR": "192.168.1.2"})
    assert response.status_code == 403
    assert "EDGEAI_METRICS=public" in response.get_data(as_text=True)
    public = make_app(metrics="public").test_client()
    assert public.get("/metrics", environ_base={"REMOTE_ADDR": "192.168.1.2"}).status_code \
        == 200
    assert make_app(metrics="off").test_client().get("/metrics").status_code == 404


def scraped(name: str, **labels: str) -> float:
    """The value of one series in this process's metrics now."""
    body, _ = metrics.exposition(None)
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_a_hostile_report_adds_no_series_and_no_bogus_values():
    """Steps, times and labels come from the child: only known steps, finite seconds."""
    before = {step: scraped("edgeai_job_step_seconds_count", framework="pytorch", step=step)
              for step in ("load", "verify")}
    starts = scraped("edgeai_child_start_seconds_count", framework="pytorch", forked="false")
    metrics.job_started("pytorch")
    metrics.job_ended("pytorch", {"state": "done", "report": {
        "timings": {"load": 0.25, "verify": float("nan"), "evil\nlabel": 1.0},
        "sandbox": {"start_ms": 12.5, "forked": "yes"}}}, time.monotonic(), False)
    assert scraped("edgeai_job_step_seconds_count", framework="pytorch", step="load") == \
        before["load"] + 1
    assert scraped("edgeai_job_step_seconds_count", framework="pytorch", step="verify") == \
        before["verify"]
    assert scraped("edgeai_child_start_seconds_count", framework="pytorch", forked="false") \
        == starts + 1
    body, _ = metrics.exposition(None)
    assert b"evil" not in body


def test_gunicorn_workers_share_one_folder_and_old_ones_are_removed(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert multiprocess_dir(tmp_path) is None  # not under gunicorn: values in memory
    monkeypatch.setenv("SERVER_SOFTWARE", "gunicorn/27.0.1")
    root = tmp_path / "metrics"
    stale = root / "gunicorn-999999999-1"  # a master that no longer runs
    reused = root / f"gunicorn-{os.getpid()}-1"  # a pid alive now, started at another time
    for folder in (stale, reused):
        folder.mkdir(parents=True)
        (folder / "counter_1.db").write_bytes(b"old")
    folder = multiprocess_dir(tmp_path)
    assert folder is not None and folder.parent == root.resolve() and folder.is_dir()
    assert folder.name.startswith(f"gunicorn-{os.getppid()}-")
    assert not stale.exists() and not reused.exists()
    assert multiprocess_dir(tmp_path) == folder  # every worker of this master: the same
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "mine"))
    assert multiprocess_dir(tmp_path) == tmp_path / "mine"  # the operator's, as it is
