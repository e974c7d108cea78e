"""``edgeai prune net.pt2`` with no server: a torch.export program pruned here, in the
sandbox, and the refusals the server would send, before anything runs."""
from __future__ import annotations

import pytest

from tests.e2e.test_prune_cli import PHASE_LINE, edgeai_prune
from tests.pruning.torch_engine.models import GUIDE_NET_SOURCE
from tests.pruning.torch_engine.programs import build, save_program


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    return save_program(build(GUIDE_NET_SOURCE), (1, 28, 28),
                        tmp_path_factory.mktemp("user") / "net.pt2")


def test_local_run_writes_a_pruned_program_that_runs_on_any_batch(program, tmp_path):
    import torch

    run = edgeai_prune(program, "-p", "0.5", "--omit", "fc1", "--param", "measure=false",
                       cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert PHASE_LINE.search(run.stdout), run.stdout
    output = tmp_path / "net.pruned.pt2"
    assert f"wrote {output}" in run.stdout and "params 1,199,882 -> 596,042" in run.stdout
    pruned = torch.export.load(output).module()
    assert pruned(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("args, says", [
    (("--model-name", "Net"), "not both: got model and model_name"),
    (("--input-size", "3,32,32"), "input_size=3,32,32 does not match the program"),
    (("--weights", "{program}"), "either MODEL (Keras, or a .pt2 program) or --weights"),
])
def test_program_usage_errors_exit_2(program, tmp_path, args, says):
    run = edgeai_prune(program, "-p", "0.5", *(a.format(program=program) for a in args),
                       cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert says in run.stderr
    assert not list(tmp_path.glob("*.pruned*"))
