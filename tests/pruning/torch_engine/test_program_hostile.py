"""A .pt2 is code: torch.export.load (and ExportedProgram.module()) run what a crafted
archive says. edgeai treats the file as code (the job needs every sandbox wall), refuses
the parts that would run before torch sees them, and never runs the guard code."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest
import torch

from edgeai.pruning import PruneJob, UnsafeInputError
from edgeai.pruning.torch_engine import TorchPruner
from edgeai.pruning.torch_engine.program import load_program
from tests.conftest import reachable_tmp
from tests.pruning.torch_engine.models import GUIDE_NET_SOURCE
from tests.pruning.torch_engine.programs import CRAFTS, build, craft, save_program


@pytest.fixture(scope="module")
def guide_program(tmp_path_factory):
    folder = tmp_path_factory.mktemp("guide-program")
    return save_program(build(GUIDE_NET_SOURCE), (1, 28, 28), folder / "net.pt2")


def test_torch_export_load_runs_code_from_the_file(guide_program, tmp_path):
    """The finding, shown in a child process: loading each crafted program the way the
    torch documentation shows (load, module(), call) makes its marker folder."""
    crafted = {kind: craft(guide_program, tmp_path / f"{kind}.pt2", kind, tmp_path / kind)
               for kind in CRAFTS}
    code = textwrap.dedent(f"""
        import torch
        for path in {[str(path) for path in crafted.values()]!r}:
            try:
                torch.export.load(path).module()(torch.randn(1, 1, 28, 28))
            except Exception as error:  # the payload ran before the loader gave up
                print(type(error).__name__)
    """)
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=180)
    assert {kind: (tmp_path / kind).is_dir() for kind in CRAFTS} == dict.fromkeys(CRAFTS, True)


@pytest.mark.parametrize("kind", ["pickled_weight", "sample_inputs", "shape_expression"])
def test_edgeai_refuses_the_parts_that_would_run(guide_program, tmp_path, kind):
    marker = tmp_path / "made-by-the-file"
    crafted = craft(guide_program, tmp_path / f"{kind}.pt2", kind, marker)
    with pytest.raises(UnsafeInputError, match="code"):
        load_program(str(crafted))
    assert not marker.exists()


def test_guard_code_is_never_run(guide_program, tmp_path):
    """edgeai rebuilds the program from its graph, never through module(): the guard
    code does not run while pruning, and the pruned .pt2 carries guards of its own."""
    marker = tmp_path / "made-by-the-file"
    crafted = craft(guide_program, tmp_path / "guards.pt2", "guards_code", marker)
    out = tmp_path / "out"
    out.mkdir()
    job = PruneJob(framework="pytorch", percent=0.5, omitted=(), inputs={"model": str(crafted)},
                   input_names={"model": "net.pt2"}, output_dir=str(out),
                   output_stem="tmpguard001", options={"measure": False})
    result = TorchPruner().prune(job)
    assert b"mkdir" not in (out / result.artifact).read_bytes()
    torch.export.load(out / result.artifact).module()(torch.randn(2, 1, 28, 28))
    assert not marker.exists()


def test_a_program_job_is_treated_as_code():
    job = PruneJob(framework="pytorch", percent=0.5, omitted=(), inputs={"model": "/x"},
                   input_names={"model": "net.pt2"}, output_dir="", output_stem="t")
    brings = TorchPruner().untrusted_code(job)
    assert brings is not None and ".pt2" in brings and "run code" in brings


def test_where_a_wall_is_missing_a_program_job_is_refused(guide_program, tmp_path,
                                                         monkeypatch):
    """In strict mode a sandbox without seccomp (skipped here, as on a kernel without it)
    refuses the .pt2 job with the reason, as it refuses a class file."""
    from edgeai.client import JobFailed
    from edgeai.local import LocalJob

    monkeypatch.setenv("EDGEAI_SANDBOX_SKIP", "seccomp")
    monkeypatch.setenv("EDGEAI_SANDBOX", "strict")
    folder = reachable_tmp(tmp_path) / f"user-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    program = folder / "net.pt2"
    program.write_bytes(guide_program.read_bytes())
    job = LocalJob("pytorch", {"model": program}, {"percent": "0.5"})
    try:
        with pytest.raises(JobFailed) as failed:
            job.wait(timeout=240)
    finally:
        job.close()
    assert failed.value.body["state"] == "failed"
    assert str(failed.value).startswith("This job brings a torch.export program (.pt2): "
                                        "loading one can run code from it")
