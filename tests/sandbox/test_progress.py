"""A job's progress reports are hostile input: the supervisor takes only what is valid.

The child reports progress as small frames on its channel (``P`` frames, see
:mod:`edgeai.sandbox.channel`); once the job's code runs, it can write any frame it
likes there. A report that is not JSON, nested past the parser's depth, a phase that
is not the pipeline's, a fraction out of range or NaN is ignored and the job goes on;
a report larger than the bound breaks the protocol and fails the job.
"""
from __future__ import annotations

import os
import textwrap
import uuid
from pathlib import Path

import pytest

from edgeai.pruning import PruneJob
from edgeai.sandbox import JobFailed, Limits, Sandbox
from edgeai.sandbox.channel import MAX_PROGRESS_BYTES, parse_progress

REPO = Path(__file__).resolve().parents[2]

HOSTILE = {
    "garbage": os.urandom(200),
    "deeply nested": b"[" * MAX_PROGRESS_BYTES,
    "not an object": b'["pruning", 0.5]',
    "unknown phase": b'{"phase": "rm -rf /", "progress": 0.5}',
    "the queue's phase": b'{"phase": "done", "progress": 1}',
    "phase not a string": b'{"phase": ["pruning"], "progress": 0}',
    "NaN": b'{"phase": "pruning", "progress": NaN}',
    "Infinity": b'{"phase": "pruning", "progress": Infinity}',
    "over one": b'{"phase": "pruning", "progress": 1.5}',
    "negative": b'{"phase": "pruning", "progress": -0.1}',
    "a boolean": b'{"phase": "pruning", "progress": true}',
    "a string": b'{"phase": "pruning", "progress": "0.5"}',
    "not UTF-8": b'{"phase": "pruning\xff", "progress": 0.5}',
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_progress_report_is_ignored(kind):
    assert parse_progress(HOSTILE[kind]) is None


@pytest.mark.parametrize("content, expected", [
    (b'{"phase": "pruning", "progress": 0.25}', ("pruning", 0.25)),
    (b'{"phase": "loading", "progress": null}', ("loading", None)),
    (b'{"phase": "fine-tuning", "progress": 1}', ("fine-tuning", 1.0)),
    (b'{"phase": "saving", "progress": 0}', ("saving", 0.0)),
])
def test_a_valid_progress_report_is_read(content, expected):
    assert parse_progress(content) == expected


ATTACK = textwrap.dedent("""
    import json, os, struct, time
    def frame(body, kind=b"P"):
        os.write(3, struct.pack(">cQ", kind, len(body)) + body)
        time.sleep(0.3)  # the supervisor looks every 0.2 s
    frame(b'{"phase": "analysing", "progress": 0.2}'); time.sleep(0.3)
    for body in options["hostile"]:
        frame(body.encode("latin-1"))
    frame(b'{"phase": "saving", "progress": 0.9}'); time.sleep(0.3)
    if options.get("oversize"):
        frame(b'{"phase": "saving", "progress": 0.9, "pad": "' + b"x" * 600 + b'"}')
""")


@pytest.fixture
def sandbox(tmp_path):
    sandbox = Sandbox(tmp_path / "sandbox", Limits(timeout=60), warm_spares=False,
                      entry="tests.sandbox.hostile_entry:run",
                      extra_read_only=(str(REPO / "tests"),))
    yield sandbox
    sandbox.close()


def _job(tmp_path: Path, **options) -> PruneJob:
    code = tmp_path / "attack.py"
    code.write_text(ATTACK)
    hostile = [body.decode("latin-1") for body in HOSTILE.values()]
    return PruneJob(framework="pytorch", percent=0.5, omitted=(),
                    inputs={"class_def": str(code)}, input_names={"class_def": "model.py"},
                    output_dir="", output_stem=f"tmp{uuid.uuid4().hex[:8]}",
                    options={"hostile": hostile, **options})


@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox's view and identity drop need "
                    "the server to run as root here")
def test_a_confined_job_reports_only_valid_progress(tmp_path, sandbox):
    """Through a real confined child writing raw frames on its channel: the listener
    hears the two valid reports, in order, and nothing of the hostile ones; the job
    still finishes."""
    job = _job(tmp_path)
    heard: list = []
    result = sandbox.run(job, tmp_path / "staging", brings_code="a class file",
                         progress=lambda *news: heard.append(news))
    assert result.artifact == f"{job.output_stem}.bin"
    assert list(dict.fromkeys(heard)) == [("analysing", 0.2), ("saving", 0.9)]


@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox's view and identity drop need "
                    "the server to run as root here")
def test_an_oversized_progress_report_fails_the_job(tmp_path, sandbox):
    """A progress frame past the bound is not read at all: the job fails, saying so."""
    with pytest.raises(JobFailed, match="broke the sandbox's protocol: sent a progress "
                                        f"report of .* bytes \\(at most {MAX_PROGRESS_BYTES}"):
        sandbox.run(_job(tmp_path, oversize=True), tmp_path / "staging",
                    brings_code="a class file", progress=lambda *news: None)
