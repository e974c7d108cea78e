"""An ``edgeai worker`` killed with SIGKILL mid-job leaves the copy of the client's upload
it fetched from the store on its own disk; started again, it removes it (and the rest of
the dead run's folder), and the job is finished by the restarted worker."""
from __future__ import annotations

import signal
import time
import uuid

import pytest
import requests

from tests.e2e.guide import write_guide_pytorch_files
from tests.scaleout.conftest import BUCKET
from tests.scaleout.servers import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # two worker starts and a re-run: ~1 min here


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return found


def test_a_restarted_worker_removes_what_its_killed_run_fetched(postgres, seaweed, tmp_path):
    cluster = Cluster(tmp_path, postgres.create_database("w" + uuid.uuid4().hex[:10]),
                      f"s3://{BUCKET}/leftovers-{uuid.uuid4().hex[:6]}", seaweed.env,
                      EDGEAI_STALE_SECONDS="3", EDGEAI_HEARTBEAT_SECONDS="0.5",
                      EDGEAI_POLL_SECONDS="0.1", EDGEAI_WARM_SPARES="off")
    try:
        cluster.start_worker("worker")
        cluster.start_api()
        cluster.wait_for_workers()
        headers = cluster.create_key()
        files = write_guide_pytorch_files(tmp_path / "user")
        with open(files["weights"], "rb") as w, open(files["class_def"], "rb") as c:
            txid = requests.post(
                f"{cluster.url}/api/pt_prune?percent=0.5&input_size=1,28,28&measure=false",
                headers=headers, files={"weights": ("mnist_cnn.pth", w),
                                        "class_def": ("model.py", c)},
                timeout=60).json()["txid"]
        job_folder = tmp_path / "worker" / "jobs" / txid
        [fetched] = wait_for(lambda: list(job_folder.glob("staging-*/fetched/inputs/"
                                                          "weights.upload")),
                             120, "the worker to fetch the upload")
        staging = fetched.parents[2]
        cluster.stop_worker("worker", signal.SIGKILL)
        assert fetched.read_bytes() == files["weights"].read_bytes()  # the client's model

        cluster.start_worker("worker")
        cluster.wait_for_workers()
        assert not staging.exists()
        assert "removed 1 leftover(s)" in cluster.log_text("worker")
        body = cluster.wait(txid, headers, timeout=300)
        assert body["status"] == "0", body
        wait_for(lambda: not job_folder.exists(), 30, "the finished run's folder to go")
        assert list((tmp_path / "worker" / "jobs").iterdir()) == []
    finally:
        cluster.stop()
