"""``GET /metrics`` and status long-polls on a real gunicorn with two worker processes.

One scenario runs once for the module: three guide-sized PyTorch jobs (each worker
process runs one job at a time, so both run some), one that the sandbox stops (a
class file that asks for 64 GiB), and one that loops until its client cancels it,
while eight long-polls wait on it. The metrics are scraped several times, by
whichever worker the kernel hands each connection: every scrape must tell the
same sums.
"""
from __future__ import annotations

import sqlite3
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from edgeai.client import Client, JobFailed
from tests.e2e.guide import write_guide_pytorch_files
from tests.e2e.hostile_files import hostile_class_files
from tests.e2e.server import LiveServer

pytestmark = pytest.mark.e2e

QUICK_JOBS = 3
TYPES = {
    "edgeai_jobs": "counter", "edgeai_jobs_running": "gauge", "edgeai_queue_depth": "gauge",
    "edgeai_job_duration_seconds": "histogram", "edgeai_job_step_seconds": "histogram",
    "edgeai_child_start_seconds": "histogram", "edgeai_sandbox_failures": "counter",
    "edgeai_zygotes_ready": "gauge", "edgeai_zygote_resident_bytes": "gauge",
    "edgeai_http_requests": "counter", "edgeai_http_request_duration_seconds": "histogram",
    "edgeai_status_waits_refused": "counter",
}


def scrape(url: str) -> tuple[dict, dict]:
    """(family name -> type, (sample name, sorted labels) -> value) of one scrape."""
    response = requests.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    types, samples = {}, {}
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, samples


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(value for (sample, have), value in samples.items()
               if sample == name and set(labels.items()) <= set(have))


def submit(server, headers, files, class_def=None, query="percent=0.5&ommitted=fc2"
           "&input_size=1,28,28&measure=false"):
    with open(files["weights"], "rb") as weights, open(files["class_def"], "rb") as source:
        response = requests.post(
            f"{server.url}/api/pt_prune?{query}", headers=headers, timeout=60,
            files={"weights": ("mnist_cnn.pth", weights),
                   "class_def": ("model.py", class_def or source.read())})
    assert response.status_code == 200, response.text
    return response.json()["txid"]


def seen_late(server, headers, txid) -> float:
    """Long-poll ``txid`` to its end; return how long after its row's ``finished_at``
    (the database's clock: this host's) the answer arrived."""
    while True:
        body = requests.get(f"{server.url}/api/status", timeout=60, headers=headers,
                            params={"txid": txid, "wait": 30}).json()
        arrived = time.time()
        if body["status"] in ("0", "-1"):
            return arrived - body["finished_at"]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    base = tmp_path_factory.mktemp("metrics")
    server = LiveServer(base / "var", workers=2, EDGEAI_WORKER_THREADS=1,
                        EDGEAI_MAX_JOBS_PER_CLIENT=50).start()
    try:
        headers = server.create_key("metrics")
        files = write_guide_pytorch_files(base / "guide")
        bombs = hostile_class_files(base / "canary")
        result = {"server": server, "headers": headers, "first": scrape(server.url)}
        txids = [submit(server, headers, files) for _ in range(QUICK_JOBS)]
        bomb = submit(server, headers, files, class_def=bombs["memory_bomb"])
        with ThreadPoolExecutor(4) as pool:
            result["late"] = list(pool.map(lambda t: seen_late(server, headers, t),
                                           [*txids, bomb]))
        result["bomb"] = server.status(bomb, headers)
        result["done"] = [server.status(t, headers) for t in txids]

        # A job that runs until cancelled: long-polls wait on it, beyond the cap.
        looping = submit(server, headers, files, class_def=bombs["infinite_loop"])
        deadline = time.monotonic() + 120
        while server.status(looping, headers)["status"] != "2":
            assert time.monotonic() < deadline, "the looping job never ran"
            time.sleep(0.1)
        refused_before = total(scrape(server.url)[1], "edgeai_status_waits_refused_total")

        def long_poll(_):
            started = time.monotonic()
            response = requests.get(f"{server.url}/api/status", headers=headers, timeout=60,
                                    params={"txid": looping, "wait": 4})
            return response.status_code, response.json()["status"], time.monotonic() - started

        with ThreadPoolExecutor(8) as pool:
            polls = pool.map(long_poll, range(8))
            time.sleep(1)  # the held calls hold their threads now
            started = time.monotonic()
            plain = server.status(looping, headers)
            result["plain_seconds"] = time.monotonic() - started
            result["polls"] = list(polls)
        result["plain"] = plain
        result["refused"] = (total(scrape(server.url)[1], "edgeai_status_waits_refused_total")
                             - refused_before)
        requests.post(f"{server.url}/api/cancel", params={"txid": looping}, headers=headers,
                      timeout=30)
        # The Python client's wait() long-polls too: the cancelled job's end arrives.
        job = Client(server.url, headers["X-IBM-Client-Id"],
                     headers["X-IBM-Client-Secret"]).job(looping)
        started = time.monotonic()
        with pytest.raises(JobFailed) as failure:
            job.wait(timeout=60)
        result["cancel"] = (str(failure.value), time.monotonic() - started)
        result["scrapes"] = [scrape(server.url) for _ in range(6)]
        with sqlite3.connect(base / "var" / "edgeai.sqlite3") as db:
            result["processes"] = {row[0].split(":")[1] for row in db.execute(
                "SELECT claimed_by FROM transactions WHERE claimed_by IS NOT NULL")}
        yield result
    finally:
        server.stop()


def test_metric_names_and_types_parse(scenario):
    types, samples = scenario["first"]
    assert {name: types.get(name) for name in TYPES} == TYPES
    assert total(samples, "edgeai_queue_depth") == 0
    assert total(samples, "edgeai_jobs_running") == 0


def test_counters_and_histograms_add_up_across_both_workers(scenario):
    assert len(scenario["processes"]) == 2, scenario["processes"]  # both ran jobs
    assert all(body["status"] == "0" for body in scenario["done"]), scenario["done"]
    assert scenario["bomb"]["status"] == "-1" and "memory" in scenario["bomb"]["message"]
    sums = set()
    for _types, samples in scenario["scrapes"]:
        done = total(samples, "edgeai_jobs_total", framework="pytorch", state="done")
        failed = total(samples, "edgeai_jobs_total", framework="pytorch", state="failed")
        durations = total(samples, "edgeai_job_duration_seconds_count", framework="pytorch")
        loads = total(samples, "edgeai_job_step_seconds_count", step="load")
        starts = total(samples, "edgeai_child_start_seconds_count", framework="pytorch")
        forked = total(samples, "edgeai_child_start_seconds_count", forked="true")
        memory = total(samples, "edgeai_sandbox_failures_total", reason="memory")
        submits = total(samples, "edgeai_http_requests_total", route="/api/pt_prune",
                        method="POST", code="200")
        sums.add(tuple(sorted(dict(done=done, failed=failed, durations=durations, loads=loads,
                                   starts=starts, forked=forked, memory=memory,
                                   submits=submits).items())))
        assert total(samples, "edgeai_queue_depth") == 0
        assert total(samples, "edgeai_jobs_running") == 0
        assert total(samples, "edgeai_zygotes_ready", framework="pytorch") == 2
        assert total(samples, "edgeai_zygote_resident_bytes", framework="pytorch") > 50e6
    # done, failed (the bomb, the cancelled loop), every claim timed, a load step and a
    # child start per done job (forked by a zygote), one sandbox stop, five submits.
    expected = dict(done=QUICK_JOBS, failed=2, durations=QUICK_JOBS + 2, loads=QUICK_JOBS,
                    starts=QUICK_JOBS, forked=QUICK_JOBS, memory=1, submits=QUICK_JOBS + 2)
    assert sums == {tuple(sorted(expected.items()))}, (sums, scenario["bomb"]["message"])


def test_long_polls_see_the_end_at_once_and_beyond_the_cap_still_answer(scenario):
    late = scenario["late"]
    # Each job's end reached a waiting client within ~0.1 s of its row being written
    # (same clock; a noisy shared machine gets one slower answer).
    assert statistics.median(late) < 0.1 and max(late) < 0.5, late
    polls = scenario["polls"]
    assert all(code == 200 and status == "2" for code, status, _ in polls), polls
    # Two processes hold at most two waiting calls each; the rest answered at once.
    held = [seconds for _, _, seconds in polls if seconds >= 3.5]
    assert len(held) <= 4 and scenario["refused"] >= 4, (polls, scenario["refused"])
    assert all(seconds < 10 for _, _, seconds in polls), polls  # answered, loaded or not
    # A plain call made while they wait is not queued behind them (they hold 4 s).
    assert scenario["plain"]["status"] == "2" and scenario["plain_seconds"] < 2.5
    message, seconds = scenario["cancel"]
    assert message == "cancelled by the client" and seconds < 30, scenario["cancel"]
