"""The job's progress file is hostile input: the supervisor takes only what is valid.

The child (running the job's own code) rewrites ``progress.json`` in its slot; the
supervisor reads it several times a second. Whatever the file is, too big, not
JSON, nested past the parser's depth, a phase that is not the pipeline's, a
fraction out of range or NaN, a link, a pipe, a folder, it is ignored, never
followed, never blocked on, and the job goes on.
"""
from __future__ import annotations

import json
import os
import textwrap
import uuid
from pathlib import Path

import pytest

from edgeai.pruning import PruneJob
from edgeai.sandbox import Limits, Sandbox
from edgeai.sandbox.supervisor import MAX_PROGRESS_BYTES, read_progress

REPO = Path(__file__).resolve().parents[2]

HOSTILE = {
    "huge": lambda path: path.write_text(json.dumps({"phase": "pruning", "progress": 0.5,
                                                     "pad": "x" * (1 << 20)})),
    "just over the bound": lambda path: path.write_text(
        json.dumps({"phase": "pruning", "progress": 0.5}).ljust(MAX_PROGRESS_BYTES + 1)),
    "garbage": lambda path: path.write_bytes(os.urandom(200)),
    "deeply nested": lambda path: path.write_text("[" * MAX_PROGRESS_BYTES),
    "not an object": lambda path: path.write_text('["pruning", 0.5]'),
    "unknown phase": lambda path: path.write_text('{"phase": "rm -rf /", "progress": 0.5}'),
    "the queue's phase": lambda path: path.write_text('{"phase": "done", "progress": 1}'),
    "phase not a string": lambda path: path.write_text('{"phase": ["pruning"], "progress": 0}'),
    "NaN": lambda path: path.write_text('{"phase": "pruning", "progress": NaN}'),
    "Infinity": lambda path: path.write_text('{"phase": "pruning", "progress": Infinity}'),
    "over one": lambda path: path.write_text('{"phase": "pruning", "progress": 1.5}'),
    "negative": lambda path: path.write_text('{"phase": "pruning", "progress": -0.1}'),
    "a boolean": lambda path: path.write_text('{"phase": "pruning", "progress": true}'),
    "a string": lambda path: path.write_text('{"phase": "pruning", "progress": "0.5"}'),
    "a link": lambda path: path.symlink_to(path.parent / "elsewhere.json"),
    "a pipe": lambda path: os.mkfifo(path),
    "a folder": lambda path: path.mkdir(),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_progress_file_is_ignored(tmp_path, kind):
    (tmp_path / "elsewhere.json").write_text('{"phase": "pruning", "progress": 0.5}')
    HOSTILE[kind](tmp_path / "progress.json")
    assert read_progress(tmp_path) is None


@pytest.mark.parametrize("content, expected", [
    ('{"phase": "pruning", "progress": 0.25}', ("pruning", 0.25)),
    ('{"phase": "loading", "progress": null}', ("loading", None)),
    ('{"phase": "fine-tuning", "progress": 1}', ("fine-tuning", 1.0)),
    ('{"phase": "saving", "progress": 0}', ("saving", 0.0)),
])
def test_a_valid_progress_file_is_read(tmp_path, content, expected):
    (tmp_path / "progress.json").write_text(content)
    assert read_progress(tmp_path) == expected
    assert read_progress(tmp_path / "missing") is None


ATTACK = textwrap.dedent("""
    import json, os, time
    def settle(seconds=0.3):
        time.sleep(seconds)  # the supervisor looks every 0.2 s
    def write(text):
        with open(".tmp", "w") as handle:
            handle.write(text)
        os.replace(".tmp", "progress.json")
    write('{"phase": "analysing", "progress": 0.2}'); settle(0.6)
    write('{"phase": "pruning", "progress": NaN}'); settle()
    write(json.dumps({"phase": "pruning", "progress": 0.3, "pad": "x" * 100000})); settle()
    write('{"phase": "exfiltrating", "progress": 0.4}'); settle()
    os.remove("progress.json"); os.mkfifo("progress.json"); settle()
    os.remove("progress.json"); os.symlink("/etc/passwd", "progress.json"); settle()
    os.remove("progress.json")
    write('{"phase": "saving", "progress": 0.9}'); settle(0.6)
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox's view and identity drop need "
                    "the server to run as root here")
def test_a_confined_job_reports_only_valid_progress(tmp_path):
    """Through a real confined child: the listener hears the two valid reports, in order,
    and nothing of the hostile ones; the job still finishes."""
    sandbox = Sandbox(tmp_path / "sandbox", Limits(timeout=60), warm_spares=False,
                      entry="tests.sandbox.hostile_entry:run",
                      extra_read_only=(str(REPO / "tests"),))
    code = tmp_path / "attack.py"
    code.write_text(ATTACK)
    job = PruneJob(framework="pytorch", percent=0.5, omitted=(),
                   inputs={"class_def": str(code)}, input_names={"class_def": "model.py"},
                   output_dir="", output_stem=f"tmp{uuid.uuid4().hex[:8]}", options={})
    heard: list = []
    try:
        result = sandbox.run(job, tmp_path / "staging", brings_code="a class file",
                             progress=lambda *news: heard.append(news))
    finally:
        sandbox.close()
    assert result.artifact == f"{job.output_stem}.bin"
    assert list(dict.fromkeys(heard)) == [("analysing", 0.2), ("saving", 0.9)]
