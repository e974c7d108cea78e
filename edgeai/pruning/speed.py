"""Latency of the original and the pruned model on the server's CPU.

For each runtime the job has (the framework's own; TFLite and ONNX Runtime when
those formats were asked for) and each batch size (1, and the user's), two
warm-up runs, then timed runs until at least 5 runs and 0.3 s (at most 30 runs
or 2 s), and the median. Threads are fixed to the job's (EDGEAI_JOB_THREADS).
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

from edgeai.pruning.base import PruneJob
from edgeai.pruning.engine import Engine
from edgeai.pruning.report import Latency, Speed
from edgeai.pruning.structure import Loaded

WARM_UP = 2
MIN_RUNS, MAX_RUNS = 5, 30
MIN_SECONDS, MAX_SECONDS = 0.3, 2.0


def job_threads() -> int:
    """The compute threads a job may use (the sandbox sets OMP_NUM_THREADS)."""
    return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))


def median_ms(forward: Callable[[], object]) -> tuple[float, int]:
    """Median milliseconds of ``forward()``, warm-up excluded, and the timed runs."""
    for _ in range(WARM_UP):
        forward()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < MAX_RUNS:
        begin = time.perf_counter()
        forward()
        times.append(time.perf_counter() - begin)
        elapsed = time.perf_counter() - started
        if (len(times) >= MIN_RUNS and elapsed >= MIN_SECONDS) or elapsed >= MAX_SECONDS:
            break
    return round(statistics.median(times) * 1000, 3), len(times)


def measure_speed(engine: Engine, loaded: Loaded, original: object, pruned: object,
                  job: PruneJob, exported: dict[str, str | None]) -> Speed:
    """Latencies of ``original`` and ``pruned`` in every runtime the job has; the pruned
    model runs from its exported file where the job made one (``exported``: format ->
    file name in ``job.output_dir``)."""
    started = time.perf_counter()
    threads = job_threads()
    batches = [1]
    user_batch = job.options.get("batch_size")
    if user_batch and user_batch != 1:
        batches.append(int(user_batch))
    rows, skipped = [], []
    for runtime in engine.runtimes(job):
        name = exported.get(engine.runtime_formats().get(runtime, ""))
        path = os.path.join(job.output_dir, name) if name else None
        for batch in batches:
            try:
                before, runs = median_ms(engine.timer(original, runtime, batch, loaded, threads))
                after, _ = median_ms(engine.timer(pruned, runtime, batch, loaded, threads, path))
            except Exception as error:  # noqa: BLE001 - timing is a measurement, not the job
                skipped.append(f"{runtime} at batch {batch}: {type(error).__name__}: "
                               f"{str(error).splitlines()[0][:200] if str(error) else ''}")
                continue
            rows.append(Latency(runtime=runtime, batch=batch, before_ms=before, after_ms=after,
                                ratio=round(after / before, 4) if before else None, runs=runs))
    detail = (f"median of {MIN_RUNS}-{MAX_RUNS} runs after {WARM_UP} warm-up runs, "
              f"{threads} thread(s)") + ("; skipped " + "; ".join(skipped) if skipped else "")
    return Speed(threads=threads, latencies=rows, detail=detail,
                 seconds=round(time.perf_counter() - started, 3))
