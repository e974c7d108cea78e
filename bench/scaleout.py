"""Scale-out figures, on servers this module starts (PostgreSQL, SeaweedFS, edgeai).

:func:`rows` returns ``(measure, value, notes)`` rows; ``python -m bench.scaleout``
prints them as a table. Figures:

- throughput of 20 small jobs (the guide's PyTorch Net at 0.5, measure=false) with one
  ``edgeai worker`` and with two, on PostgreSQL + S3 behind ``edgeai serve --api-only``;
  each run starts on a fresh database and prefix, after one untimed job per worker;
- the time to download a 100 MB artifact through the API from the local folder, from
  S3 streamed through the API, and from S3 by the presigned redirect (best of 3).

Everything runs on this one machine, so "two workers" share its cores: the figure says
what a second worker process adds here, not what a second host would.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.e2e.guide import write_guide_pytorch_files
from tests.scaleout.servers import (
    Cluster,
    PostgresServer,
    SeaweedServer,
    missing,
)

BUCKET = "edgeai-bench"
JOBS = 20
MB = 1024 * 1024
LEASES = {"EDGEAI_STALE_SECONDS": "10", "EDGEAI_HEARTBEAT_SECONDS": "1",
          "EDGEAI_POLL_SECONDS": "0.1", "EDGEAI_MAX_JOBS_PER_CLIENT": "100"}


def _submit(cluster: Cluster, headers: dict, files: dict) -> str:
    with open(files["weights"], "rb") as w, open(files["class_def"], "rb") as c:
        response = requests.post(
            f"{cluster.url}/api/pt_prune?percent=0.5&ommitted=fc2&input_size=1,28,28"
            "&measure=false", headers=headers,
            files={"weights": ("mnist_cnn.pth", w), "class_def": ("model.py", c)}, timeout=60)
    response.raise_for_status()
    return response.json()["txid"]


def _run_jobs(cluster: Cluster, headers: dict, files: dict, count: int) -> float:
    """Submit ``count`` jobs at once; seconds until the last is done (raises if one fails)."""
    started = time.perf_counter()
    txids = [_submit(cluster, headers, files) for _ in range(count)]
    for txid in txids:
        body = cluster.wait(txid, headers, timeout=900)
        if body["status"] != "0":
            raise RuntimeError(f"bench job {txid} ended {body}")
    return time.perf_counter() - started


def throughput(postgres: PostgresServer, seaweed: SeaweedServer, root: Path,
               workers: int) -> float:
    """Seconds for :data:`JOBS` jobs with ``workers`` workers of one job each."""
    name = f"w{workers}-{uuid.uuid4().hex[:6]}"
    cluster = Cluster(root / name, postgres.create_database(name.replace("-", "_")),
                      f"s3://{BUCKET}/{name}", seaweed.env, **LEASES)
    try:
        for index in range(workers):
            cluster.start_worker(f"worker-{index}")
        cluster.start_api()
        cluster.wait_for_workers()
        headers = cluster.create_key("bench")
        files = write_guide_pytorch_files(root / name / "user")
        _run_jobs(cluster, headers, files, workers)  # untimed: spares warm, caches filled
        return _run_jobs(cluster, headers, files, JOBS)
    finally:
        cluster.stop()


def _publish_done(cluster: Cluster, storage, artifact: Path) -> tuple[dict, str]:
    """A finished 100 MB job, made through the real queue functions."""
    from edgeai import queue
    from edgeai.auth import create_key
    from edgeai.db import Database, Transaction

    database = Database(cluster.database_url)
    try:
        key = create_key(database, "bench")
        headers = {"X-IBM-Client-Id": key.client_id, "X-IBM-Client-Secret": key.client_secret}
        txid = str(uuid.uuid4())
        with database.session() as session:
            session.add(Transaction(txid=txid, owner=key.client_id, framework="pytorch",
                                    params={"percent": 0.5}, input_names={}, state="queued",
                                    message="Queued.", attempts=0, created_at=time.time()))
        row = queue.claim_next_job(database, "bench", max_running=0)
        storage.publish(txid, artifact, "tmpbench0000.pt")
        queue.finish_job(database, txid, "bench", lease=row.lease_token, state="done",
                         message="bench", filename="tmpbench0000.pt",
                         report={"artifacts": {"model": "tmpbench0000.pt"}})
        return headers, txid
    finally:
        database.dispose()


def _best_download(cluster: Cluster, headers: dict, txid: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        with requests.get(f"{cluster.url}/api/download", params={"txid": txid},
                          headers=headers, stream=True, timeout=300) as response:
            response.raise_for_status()
            size = sum(len(chunk) for chunk in response.iter_content(MB))
        best = min(best, time.perf_counter() - started)
        if size != 100 * MB:
            raise RuntimeError(f"downloaded {size} bytes, not {100 * MB}")
    return best


def downloads(postgres: PostgresServer, seaweed: SeaweedServer, root: Path) -> dict[str, float]:
    """Best-of-3 seconds to download a 100 MB artifact: local, S3 streamed, S3 redirect."""
    from edgeai.storage import FileStore, LocalStorage
    from edgeai.storage.s3 import S3Storage

    artifact = root / "artifact.bin"
    with open(artifact, "wb") as out:
        for _ in range(100):
            out.write(os.urandom(MB))
    url = postgres.create_database("downloads")
    seconds = {}
    for mode, storage_url, extra in (
            ("local", "", {}),
            ("s3 stream", f"s3://{BUCKET}/downloads", {}),
            ("s3 redirect", f"s3://{BUCKET}/downloads", {"EDGEAI_S3_DOWNLOADS": "redirect"})):
        cluster = Cluster(root / mode.replace(" ", "-"), url, storage_url, seaweed.env,
                          **LEASES, **extra)
        try:
            cluster.start_api()
            produced = artifact
            if storage_url:  # uploaded, so the artifact stays for the next mode
                storage: FileStore = S3Storage(BUCKET, "downloads",
                                               LocalStorage(root / "scratch"), seaweed.client())
            else:  # moved into the API's data dir
                storage = LocalStorage(cluster.root / "api")
                produced = root / "copy.bin"
                shutil.copyfile(artifact, produced)
            headers, txid = _publish_done(cluster, storage, produced)
            seconds[mode] = _best_download(cluster, headers, txid)
        finally:
            cluster.stop()
    return seconds


def rows() -> list[tuple[str, str, str]]:
    """Start PostgreSQL and SeaweedFS, measure, stop them; return the table's rows."""
    why = missing()
    if why:
        return [("scale-out", "skipped", "; ".join(why.values()))]
    root = Path(tempfile.mkdtemp(prefix="edgeai-bench-scaleout-"))
    postgres, seaweed = PostgresServer().start(), SeaweedServer().start()
    try:
        seaweed.client().create_bucket(Bucket=BUCKET)
        one = throughput(postgres, seaweed, root, 1)
        print(f"bench.scaleout: {JOBS} jobs, 1 worker: {one:.1f} s", file=sys.stderr)
        two = throughput(postgres, seaweed, root, 2)
        print(f"bench.scaleout: {JOBS} jobs, 2 workers: {two:.1f} s", file=sys.stderr)
        fetch = downloads(postgres, seaweed, root)
    finally:
        postgres.stop()
        seaweed.stop()
        shutil.rmtree(root, ignore_errors=True)
    setup = "guide Net @0.5, PostgreSQL 15 + SeaweedFS, this host"
    table = [
        (f"{JOBS} jobs, 1 worker (edgeai worker --concurrency 1)",
         f"{one:.1f} s", f"{JOBS * 60 / one:.1f} jobs/min; {setup}"),
        (f"{JOBS} jobs, 2 workers (separate processes)",
         f"{two:.1f} s", f"{JOBS * 60 / two:.1f} jobs/min, x{one / two:.2f}; both on "
         f"{os.cpu_count()} cores, as is a job's warm spare"),
    ]
    notes = {"local": "gunicorn sends the data dir's file",
             "s3 stream": "API streams the object from S3 (EDGEAI_S3_DOWNLOADS=stream)",
             "s3 redirect": "302 to a presigned URL, fetched from the store"}
    for mode, seconds in fetch.items():
        table.append((f"100 MB download, {mode}", f"{seconds:.2f} s",
                      f"{100 / seconds:.0f} MB/s; {notes[mode]}"))
    return table


def print_table(table: list[tuple[str, str, str]]) -> None:
    """Print rows as the bench's table."""
    width = max(len(row[0]) for row in table)
    print(f"{'measure'.ljust(width)}  {'value':>10}  notes")
    print(f"{'-' * width}  {'-' * 10}  {'-' * 40}")
    for name, value, note in table:
        print(f"{name.ljust(width)}  {value:>10}  {note}")


if __name__ == "__main__":
    print_table(rows())
    sys.exit(0)
