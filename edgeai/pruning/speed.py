"""Latency on the server's CPU: how long a forward pass takes, and how noisy that is.

Timing stops when the median is stable rather than after a fixed time: after one
warm-up run (set-up — conversion, compilation — happens before, outside the timed
function), runs go on until the median's distribution-free 90% interval (order
statistics) is within :data:`STABLE` of it, at least :data:`MIN_RUNS` and at most
:data:`MAX_RUNS` runs or :data:`MAX_SECONDS`. A forward function is set up once per
model and runtime (:class:`Meter` keeps them), so the latency target's search, the
verify step and the measure step never convert or compile the same model twice.

Comparing two models (:meth:`Meter.compare`) is done in *rounds*: each round runs
the original and the candidate alternately, a few runs each (the fastest run of each
counts: another process can only slow a run down), and gives one ratio; the ratio
reported is the median of the rounds' ratios, with its order-statistics interval;
rounds are added (up to :data:`MAX_ROUNDS`) while that interval is wide or holds the
budget being judged.
Interleaving puts both models under the same load (the machine is shared), and the
spread of the rounds is the noise the latency target is judged with
(:mod:`.latency`). Threads are the job's (``EDGEAI_JOB_THREADS``) unless the job
asks for others with ``threads=``.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgeai.pruning.base import PruneJob
from edgeai.pruning.engine import Engine
from edgeai.pruning.report import Latency, Speed
from edgeai.pruning.structure import Loaded

WARM_UP = 1
MIN_RUNS, MAX_RUNS = 5, 50
MAX_SECONDS = 0.5
STABLE = 0.02
COVERAGE = 0.9
MIN_ROUNDS, MAX_ROUNDS = 5, 11
ROUND_SECONDS = 0.05
MIN_PAIRS, MAX_PAIRS = 3, 25
# A comparison's interval wider than this share of its ratio takes more rounds.
NOISY = 0.2


def job_threads() -> int:
    """The compute threads a job may use (the sandbox sets OMP_NUM_THREADS)."""
    return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))


def available_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def median_interval(values: list[float], coverage: float = COVERAGE) -> tuple[float, float]:
    """A distribution-free interval for the median of ``values``: the order statistics
    (k-th smallest, k-th largest) that hold the median with at least ``coverage``
    probability (binomial), or (min, max) when there are too few values for that."""
    ordered = sorted(values)
    n = len(ordered)

    def below(j: int) -> float:  # P(Binomial(n, 1/2) <= j): the median lies under x_(j+1)
        return sum(math.comb(n, i) for i in range(j + 1)) / 2 ** n

    # [x_(j), x_(n+1-j)] holds the median with probability 1 - 2 * below(j - 1).
    j = 1
    while j + 1 <= n - j and 2 * below(j) <= 1 - coverage:
        j += 1
    return ordered[j - 1], ordered[n - j]


@dataclass
class Timing:
    """The median time of one forward pass and how it was measured."""

    median_ms: float
    runs: int
    low_ms: float
    high_ms: float

    @property
    def stable(self) -> bool:
        """Whether the median's interval is within :data:`STABLE` of it."""
        return self.high_ms - self.low_ms <= 2 * STABLE * self.median_ms


def median_ms(forward: Callable[[], object], max_seconds: float = MAX_SECONDS) -> Timing:
    """Time ``forward()`` until its median is stable (see the module docstring)."""
    for _ in range(WARM_UP):
        forward()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < MAX_RUNS:
        begin = time.perf_counter()
        forward()
        times.append(time.perf_counter() - begin)
        if len(times) >= MIN_RUNS:
            low, high = median_interval(times)
            middle = statistics.median(times)
            if high - low <= 2 * STABLE * middle or time.perf_counter() - started > max_seconds:
                break
    low, high = median_interval(times)
    return Timing(round(statistics.median(times) * 1000, 4), len(times),
                  round(low * 1000, 4), round(high * 1000, 4))


@dataclass
class Comparison:
    """A candidate's latency against the original's, in interleaved rounds."""

    ratio: float
    low: float
    high: float
    before_ms: float
    after_ms: float
    rounds: int

    def as_dict(self) -> dict[str, Any]:
        """The comparison for the report."""
        return {"ratio": round(self.ratio, 4), "interval": [round(self.low, 4),
                                                             round(self.high, 4)],
                "before_ms": round(self.before_ms, 4), "after_ms": round(self.after_ms, 4),
                "rounds": self.rounds}


def _once(forward: Callable[[], object]) -> float:
    begin = time.perf_counter()
    forward()
    return time.perf_counter() - begin


def _round(before: Callable[[], object], after: Callable[[], object],
           pairs: int) -> tuple[float, float]:
    """One round: ``pairs`` runs of each model, alternating, so that both meet the same
    load; the fastest run of each in milliseconds (on a shared machine a run is only
    ever slowed by others — preempted, its cache flushed —, so the fastest run of a
    short round is the model's own time, as ``timeit`` advises)."""
    fastest = [float("inf"), float("inf")]
    for _ in range(pairs):
        fastest[0] = min(fastest[0], _once(before))
        fastest[1] = min(fastest[1], _once(after))
    return fastest[0] * 1000, fastest[1] * 1000


@dataclass
class Meter:
    """Times models of one job in one runtime, at one batch size and thread count.

    Forward functions are set up once per model (``key``: a name the caller gives, so
    that a model rebuilt from the same plan reuses its set-up) and kept; ``budget``
    (a ratio) makes :meth:`compare` add rounds while the interval straddles it.
    Raises whatever the engine's set-up raises (a runtime that cannot run the model).
    """

    engine: Engine
    loaded: Loaded
    runtime: str
    batch: int
    threads: int
    forwards: dict[str, Callable[[], object]] = field(default_factory=dict)
    timings: dict[str, Timing] = field(default_factory=dict)
    setup_seconds: float = 0.0

    def forward(self, key: str, model: Any, path: str | None = None) -> Callable[[], object]:
        """The set-up forward function of ``model`` (made once per ``key``)."""
        if key not in self.forwards:
            started = time.perf_counter()
            self.forwards[key] = self.engine.timer(model, self.runtime, self.batch, self.loaded,
                                                   self.threads, path)
            self.setup_seconds += time.perf_counter() - started
        return self.forwards[key]

    def alias(self, name: str, key: str) -> None:
        """Let ``name`` stand for the model set up as ``key`` (the same architecture)."""
        if key in self.forwards:
            self.forwards[name] = self.forwards[key]
        if key in self.timings:
            self.timings[name] = self.timings[key]

    def drop(self, key: str) -> None:
        """Forget a model's forward function (a candidate the search left behind)."""
        self.forwards.pop(key, None)
        self.timings.pop(key, None)

    def time(self, key: str, model: Any, path: str | None = None) -> Timing:
        """The stable median of ``model`` (measured once per ``key``)."""
        if key not in self.timings:
            self.timings[key] = median_ms(self.forward(key, model, path))
        return self.timings[key]

    def compare(self, original: tuple[str, Any], candidate: tuple[str, Any],
                budget: float | None = None) -> Comparison:
        """The candidate's latency over the original's, in interleaved rounds (see the
        module docstring): at least :data:`MIN_ROUNDS`; more, up to :data:`MAX_ROUNDS`,
        while the interval holds ``budget``."""
        before_fn = self.forward(*original)
        after_fn = self.forward(*candidate)
        for fn in (before_fn, after_fn):
            fn()  # warm (a fresh interpreter's first run allocates)
        pair = min(_once(before_fn) + _once(after_fn) for _ in range(2))
        pairs = max(MIN_PAIRS, min(MAX_PAIRS, int(ROUND_SECONDS / max(pair, 1e-6))))
        ratios: list[float] = []
        befores: list[float] = []
        afters: list[float] = []
        while len(ratios) < MAX_ROUNDS:
            before, after = _round(before_fn, after_fn, pairs)
            ratios.append(after / max(before, 1e-9))
            befores.append(before)
            afters.append(after)
            if len(ratios) >= MIN_ROUNDS:
                low, high = median_interval(ratios)
                middle = statistics.median(ratios)
                straddles = budget is not None and low <= budget < high
                if not straddles and high - low <= NOISY * middle:
                    break
        low, high = median_interval(ratios)
        return Comparison(statistics.median(ratios), low, high, statistics.median(befores),
                          statistics.median(afters), len(ratios))


def measure_speed(engine: Engine, loaded: Loaded, original: object, pruned: object,
                  job: PruneJob, exported: dict[str, str | None],
                  meters: dict[tuple[str, int], Meter] | None = None) -> Speed:
    """Latencies of ``original`` and ``pruned`` in every runtime the job times in; the
    pruned model runs from its exported file where the job made one (``exported``:
    format -> file name in ``job.output_dir``). ``meters`` are those the job already
    set up (a latency target's), by (runtime, batch): their forward functions are
    reused (no second conversion), the timing is done again."""
    started = time.perf_counter()
    threads = timing_threads(job)
    batches = [1]
    user_batch = job.options.get("batch_size")
    if user_batch and user_batch != 1:
        batches.append(int(user_batch))
    rows, skipped = [], []
    meters = meters or {}
    for runtime in engine.runtimes(job):
        name = exported.get(engine.runtime_formats().get(runtime, ""))
        path = os.path.join(job.output_dir, name) if name else None
        for batch in batches:
            # A latency target's meter has set these models up (converted, compiled):
            # they are timed again here, on their own, as any job's are.
            meter = meters.get((runtime, batch)) or Meter(engine, loaded, runtime, batch, threads)
            try:
                before = median_ms(meter.forward("original", original))
                after = median_ms(meter.forward("pruned", pruned, path))
            except Exception as error:  # noqa: BLE001 - timing is a measurement, not the job
                skipped.append(f"{runtime} at batch {batch}: {type(error).__name__}: "
                               f"{str(error).splitlines()[0][:200] if str(error) else ''}")
                continue
            rows.append(Latency(runtime=runtime, batch=batch, before_ms=before.median_ms,
                                after_ms=after.median_ms,
                                ratio=round(after.median_ms / before.median_ms, 4)
                                if before.median_ms else None, runs=after.runs))
    detail = (f"median of {MIN_RUNS}-{MAX_RUNS} runs after {WARM_UP} warm-up run, stopped when "
              f"its 90% interval is within {STABLE:.0%}; {threads} thread(s)") + \
        ("; skipped " + "; ".join(skipped) if skipped else "") + \
        (f"; {threads_note(job)}" if threads_note(job) else "")
    return Speed(threads=threads, latencies=rows, detail=detail,
                 seconds=round(time.perf_counter() - started, 3))


def timing_threads(job: PruneJob) -> int:
    """The threads to time with: ``threads=`` if given (at most the CPUs the job may
    use), else the job's."""
    asked = job.options.get("threads")
    return min(int(asked), available_cpus()) if asked else job_threads()


def threads_note(job: PruneJob) -> str | None:
    """Why the job times with fewer threads than ``threads=`` asked, if it does."""
    asked = job.options.get("threads")
    if asked and int(asked) > available_cpus():
        return (f"threads={asked}: this server lets the job use {available_cpus()} CPU(s), "
                f"so the models were timed with {available_cpus()} thread(s)")
    return None
