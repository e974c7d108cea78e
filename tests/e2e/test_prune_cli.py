"""``edgeai prune`` and ``edgeai.Client`` against a real gunicorn, on the guide's models.

One server serves the whole module; the command runs as a subprocess with stdout
a pipe (so it prints plain progress lines) and its key in the environment or in
the key file, as a user would set it.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap

import pytest
import requests

from edgeai.pruning.progress import JOB_PHASES
from tests.e2e.guide import build_mnist_base, write_guide_pytorch_files
from tests.e2e.server import BIN, LiveServer, free_port

pytestmark = pytest.mark.e2e

PROGRESS_LINE = re.compile(r"^\[\s*\d+\.\ds\] (queued|running|done)\b", re.MULTILINE)
# A line with the job's phase and fraction, e.g. "[  3.1s] running  pruning  40%".
PHASE_LINE = re.compile(rf"^\[\s*\d+\.\ds\] running  ({'|'.join(JOB_PHASES)})\s+\d+%$",
                        re.MULTILINE)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One gunicorn for the module, with one key (``server.key``)."""
    live = LiveServer(tmp_path_factory.mktemp("server") / "var").start()
    headers = live.create_key("cli")
    live.key = {"EDGEAI_CLIENT_ID": headers["X-IBM-Client-Id"],
                "EDGEAI_CLIENT_SECRET": headers["X-IBM-Client-Secret"]}
    yield live
    live.stop()


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory):
    return build_mnist_base(tmp_path_factory.mktemp("keras") / "mnist_base.h5")


def edgeai_prune(*args, cwd, env=None, timeout=240):
    """Run ``edgeai prune ARGS`` as a user would, with no key file of the user's."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("EDGEAI_CLIENT", "EDGEAI_SERVER"))}
    base["XDG_CONFIG_HOME"] = str(cwd / "config")
    return subprocess.run([str(BIN / "edgeai"), "prune", *map(str, args)], cwd=cwd,
                          env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def write_key_file(folder, key, mode=0o600):
    path = folder / "config" / "edgeai" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"client_id": key["EDGEAI_CLIENT_ID"],
                                "client_secret": key["EDGEAI_CLIENT_SECRET"]}))
    path.chmod(mode)
    return path


def test_keras_model_pruned_through_the_server_with_the_key_file(server, keras_model,
                                                                 tmp_path):
    import keras

    write_key_file(tmp_path, server.key)
    run = edgeai_prune(keras_model, "-p", "0.4", "-o", tmp_path / "small.h5",
                       "--server", server.url, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    # The first status is shown at once (the job was taken), then each change until the
    # end: a job running when first seen shows its phase.
    first = run.stdout.splitlines()[0]
    assert re.match(r"^\[\s*\d+\.\ds\] (queued|running)\b", first), run.stdout
    assert "running" not in first or PHASE_LINE.search(run.stdout), run.stdout
    assert re.search(r"^\[\s*\d+\.\ds\] done     100%$", run.stdout, re.MULTILINE), run.stdout
    assert f"wrote {tmp_path / 'small.h5'}" in run.stdout
    assert "params 67,190 -> " in run.stdout
    link = re.search(r"^report: (http://\S+/report/\S+)$", run.stdout, re.MULTILINE)
    assert link, run.stdout
    page = requests.get(link.group(1), timeout=30)  # no API headers: the link is the key
    assert page.status_code == 200 and "Pruning report" in page.text
    pruned = keras.models.load_model(tmp_path / "small.h5")
    original = keras.models.load_model(keras_model)
    assert pruned.count_params() < original.count_params()
    assert [layer.filters for layer in pruned.layers if hasattr(layer, "filters")] == [19, 38, 19]


@pytest.mark.slow  # ~22 s: a PyTorch job also writes a state_dict and a torch.export program
def test_pytorch_model_pruned_through_the_server_as_json(server, tmp_path):
    files = write_guide_pytorch_files(tmp_path / "user", samples=32)
    run = edgeai_prune("--weights", files["weights"], "--class-def", files["class_def"],
                       "--model-name", "Net", "--input-size", "1,28,28", "-p", "0.5",
                       "--omit", "fc1,fc2", "--param", "measure=false", "--json",
                       cwd=files["class_def"].parent,
                       env={"EDGEAI_SERVER": server.url, **server.key})
    assert run.returncode == 0, run.stderr
    status = json.loads(run.stdout)
    assert status["state"] == "done" and status["status"] == "0"
    assert "Total params: 596,042" in status["message"]
    assert status["report"]["params_after"] < status["report"]["params_before"]
    assert "measure" not in status["report"]["timings"]  # --param measure=false got there
    assert PROGRESS_LINE.search(run.stderr), run.stderr  # progress beside the JSON
    output = files["class_def"].parent / "mnist_cnn.pruned.pt"
    assert status["output"] == str(output)
    check = textwrap.dedent(f"""
        import torch
        model, info = torch.load({str(output)!r}, weights_only=False)
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
        print(sum(p.numel() for p in model.parameters()))
    """)
    loaded = subprocess.run([str(BIN / "python"), "-c", check], cwd=output.parent,
                            capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert int(loaded.stdout) == 596042


def test_a_wrong_key_exits_3_with_the_servers_message(server, keras_model, tmp_path):
    run = edgeai_prune(keras_model, "-p", "0.4", "--server", server.url, cwd=tmp_path,
                       env={**server.key, "EDGEAI_CLIENT_SECRET": "not-the-secret"})
    assert run.returncode == 3
    assert "Invalid client id or secret" in run.stderr
    assert "EDGEAI_CLIENT_ID" in run.stderr  # says where a key comes from


def test_a_key_file_others_can_read_is_refused_with_exit_3(server, keras_model, tmp_path):
    path = write_key_file(tmp_path, server.key, mode=0o644)
    run = edgeai_prune(keras_model, "-p", "0.4", "--server", server.url, cwd=tmp_path)
    assert run.returncode == 3
    assert f"chmod 600 {path}" in run.stderr


def test_an_unreachable_server_exits_3(keras_model, tmp_path):
    run = edgeai_prune(keras_model, "-p", "0.4", "--server", f"http://127.0.0.1:{free_port()}",
                       cwd=tmp_path, env={"EDGEAI_CLIENT_ID": "x", "EDGEAI_CLIENT_SECRET": "y"})
    assert run.returncode == 3
    assert "No answer from the edgeai server" in run.stderr


def test_a_parameter_the_server_refuses_exits_2(server, keras_model, tmp_path):
    run = edgeai_prune(keras_model, "-p", "40", "--server", server.url, cwd=tmp_path,
                       env=server.key)
    assert run.returncode == 2
    assert "send percent=0.4" in run.stderr


def test_a_failing_job_exits_1_with_its_reason(server, keras_model, tmp_path):
    run = edgeai_prune(keras_model, "-p", "0.4", "--omit", "no_such_layer", "--server",
                       server.url, cwd=tmp_path, env=server.key)
    assert run.returncode == 1, run.stderr
    assert "the job failed" in run.stderr and "no_such_layer" in run.stderr
    assert "conv2d_1" in run.stderr  # the valid names are listed
    assert not list(tmp_path.glob("*.pruned*"))


def test_python_client_as_in_the_issue(server, keras_model, tmp_path, capsys):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from edgeai import Client
    from edgeai.client import AuthError, ClientError

    client = Client(server.url, server.key["EDGEAI_CLIENT_ID"],
                    server.key["EDGEAI_CLIENT_SECRET"])
    job = client.prune(keras_model, percent=0.4, formats="tflite")
    job.wait(progress=True)
    path = job.download(tmp_path / "out.tflite", format="tflite")
    report = job.report
    assert report["params_after"] < report["params_before"]
    assert PROGRESS_LINE.search(capsys.readouterr().err)
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (entry,), (exit_,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.set_tensor(entry["index"], np.zeros((1, 28, 28, 1), np.float32))
    interpreter.invoke()
    assert interpreter.get_tensor(exit_["index"]).shape == (1, 10)
    assert job.download(tmp_path).name == job.status()["filename"]  # a folder: server's name

    with pytest.raises(ClientError, match="ommitted") as refused:
        client.prune(keras_model, percent=0.4, omited="dense")
    assert refused.value.status_code == 400
    with pytest.raises(AuthError, match="Invalid client id or secret"):
        Client(server.url, server.key["EDGEAI_CLIENT_ID"], "wrong").job(job.txid).status()


def _ctrl_c_delivered() -> None:
    """In the client's process: SIGINT as a terminal's foreground job gets it. A shell
    that runs the tests in the background (``make test &`` in a script) sets SIGINT to
    ignored, every process under it inherits that, and Python then leaves it ignored —
    so the client would never see the Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_off_a_terminal_leaves_the_job_running_and_the_client_cancels_it(
        server, keras_model, tmp_path):
    import numpy as np

    from edgeai import Client
    from edgeai.client import JobFailed

    data = tmp_path / "data.npz"  # fine-tuning on it keeps the job busy until cancelled
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((2000, 28, 28, 1), np.float32), y=rng.integers(0, 10, 2000))
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGEAI_CLIENT")}
    command = subprocess.Popen(
        [str(BIN / "edgeai"), "prune", str(keras_model), "-p", "0.4", "--dataset", str(data),
         "--finetune-epochs", "50", "--server", server.url],
        cwd=tmp_path, env={**base, **server.key}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_ctrl_c_delivered)
    first = command.stdout.readline()  # the job is submitted: its first status is shown
    assert PROGRESS_LINE.match(first), first
    command.send_signal(signal.SIGINT)
    _, err = command.communicate(timeout=30)
    assert command.returncode == 130, err
    txid = re.search(r"left running on the server: txid (\S+)", err).group(1)
    job = Client(server.url, server.key["EDGEAI_CLIENT_ID"],
                 server.key["EDGEAI_CLIENT_SECRET"]).job(txid)
    assert job.state in ("queued", "running")  # Ctrl-C did not cancel it
    assert "ancel" in job.cancel()["message"]
    with pytest.raises(JobFailed, match="cancelled by the client"):
        job.wait(timeout=60, poll=0.5)
    assert not list(tmp_path.glob("*.pruned*"))
