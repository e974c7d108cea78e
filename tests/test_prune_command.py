"""``edgeai prune`` with no server: the pipeline runs here, in the sandbox; and the
command's refusals, which need no server at all."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import reachable_tmp
from tests.e2e.guide import build_mnist_base
from tests.e2e.test_prune_cli import PHASE_LINE, edgeai_prune


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory):
    return build_mnist_base(tmp_path_factory.mktemp("keras") / "mnist_base.h5")


def test_local_run_writes_a_smaller_model_that_loads(keras_model, tmp_path):
    import keras

    before = keras_model.stat()
    run = edgeai_prune(keras_model, "-p", "0.4", "-o", tmp_path / "out.h5", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert PHASE_LINE.search(run.stdout), run.stdout  # the sandboxed child's phases
    assert f"wrote {tmp_path / 'out.h5'}" in run.stdout
    pruned = keras.models.load_model(tmp_path / "out.h5")
    assert pruned.count_params() < keras.models.load_model(keras_model).count_params()
    assert [layer.filters for layer in pruned.layers if hasattr(layer, "filters")] == [19, 38, 19]
    after = keras_model.stat()  # the sandbox made its copy read-only, not the user's file
    assert (after.st_mode, after.st_nlink) == (before.st_mode, before.st_nlink)


def test_local_run_prunes_an_onnx_model(tmp_path):
    """MODEL.onnx picks the ONNX engine; the pruned file runs in ONNX Runtime."""
    import onnx

    from tests.pruning.onnx_engine.conftest import Net, run_onnx

    net = Net(name="input")
    model = tmp_path / "net.onnx"
    onnx.save(net.model(net.head(net.conv(net.conv(net.x, 3, 16), 16, 16), 16)), model)
    run = edgeai_prune(model, "-p", "0.5", "--round-to", "4", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    status = json.loads(run.stdout)
    assert status["report"]["framework"] == "onnx" and status["output"].endswith("net.pruned.onnx")
    assert status["report"]["verification"]["exactness"]["passed"] is True
    pruned = tmp_path / "net.pruned.onnx"
    assert onnx.load(pruned).graph.input[0].name == "input"
    assert run_onnx(pruned, np.zeros((2, 3, 8, 8), np.float32))[0].shape == (2, 4)
    assert pruned.stat().st_size < model.stat().st_size


@pytest.mark.parametrize("args, says", [
    ((), "give MODEL"),
    (("missing.h5", "-p", "0.4"), "no such file: missing.h5"),
    (("{model}",), "percent is required"),
    (("{model}", "-p", "0.4", "--target", "macs:0.5"), "Send one of percent, target or plan"),
    (("{model}", "-p", "0.4", "--format", "pt2"), "--format 'pt2'"),
    (("{onnx}", "-p", "0.4", "--format", "tflite"), "--format 'tflite': a onnx job makes model"),
    (("{onnx}", "-p", "0.4", "--param", "finetune_epochs=2"), "ONNX models are not fine-tuned"),
    (("{model}", "-p", "0.4", "--param", "measure"), "write NAME=VALUE"),
    (("{model}", "-p", "0.4", "--param", "omited=dense"), "did you mean 'ommitted'"),
    (("{model}", "--weights", "{model}", "-p", "0.4"), "either MODEL"),
    (("--weights", "{model}", "-p", "0.4"), "--class-def is required"),
    (("{model}", "--no-such-flag"), "unrecognized arguments"),
])
def test_usage_errors_exit_2_before_anything_runs(keras_model, tmp_path, args, says):
    onnx_model = tmp_path / "net.onnx"
    onnx_model.write_bytes(b"\x08\x08")  # refused before the file is read
    run = edgeai_prune(*(arg.format(model=keras_model, onnx=onnx_model) for arg in args),
                       cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert says in run.stderr
    assert not list(tmp_path.glob("*.pruned*"))


def test_the_help_documents_exit_codes_and_where_the_key_comes_from(tmp_path):
    run = edgeai_prune("--help", cwd=tmp_path)
    assert run.returncode == 0
    for text in ("exit codes:", "3    the server is unreachable", "EDGEAI_CLIENT_SECRET",
                 "config.json", "--weights", "--format", "--server"):
        assert text in run.stdout


def test_the_summary_says_what_a_latency_target_reached(tmp_path):
    from edgeai.prune_command import summary

    status = {"report": {"params_before": 100, "params_after": 40, "target": {
        "metric": "latency", "keep": 0.5, "detail": "met: 0.480 of the original's latency in "
        "tflite (90% interval 0.470-0.490 over 5 interleaved rounds)"}}}
    lines = summary(status, tmp_path / "m.keras", 3.0).splitlines()
    assert lines[0] == "done in 3.0 s: params 100 -> 40 (-60%)"
    assert lines[1].startswith("latency target 0.5: met: 0.480 of the original's latency")
    plain = summary({"report": {"target": {"metric": "macs", "keep": 0.5}}}, tmp_path, 1.0)
    assert "latency" not in plain


def test_a_local_wait_sees_each_phase_without_waiting_a_poll_interval(keras_model, tmp_path):
    """The display is told of every change as it happens: with a 30 s poll interval, a
    job of a few seconds still shows its phases and ends the wait as soon as it is done."""
    import time

    from edgeai.local import LocalJob
    from edgeai.pruning.progress import JOB_PHASES

    folder = reachable_tmp(tmp_path)
    model = folder / "mnist_base.h5"
    model.write_bytes(keras_model.read_bytes())
    job = LocalJob("tensorflow", {"model": model}, {"percent": "0.4", "measure": "false"})
    seen: list[dict] = []
    try:
        started = time.monotonic()
        job.wait(progress=seen.append, poll=30, timeout=240)
        waited = time.monotonic() - started
    finally:
        job.close()
    phases = [status.get("phase") for status in seen]
    assert set(phases) & set(JOB_PHASES), phases
    assert phases[-1] == "done" and waited < 25, (phases, waited)
