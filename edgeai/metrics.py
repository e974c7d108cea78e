"""Operators' metrics: ``GET /metrics`` in the Prometheus text format.

One registry of ``edgeai_*`` metrics, units in their names, recorded where things
happen: the runner reports each job it ends (:func:`job_started`,
:func:`job_ended`), a thread per process samples the sandbox's zygotes
(:func:`watch_sandbox`), the app times every request, and the queue's depth is
read from the database when someone scrapes. Only :mod:`prometheus_client` is
imported, and only once a process uses a metric.

**Several processes, one answer.** gunicorn runs several worker processes, and a
scrape reaches one of them. Each process therefore writes its values to files in
one folder (prometheus_client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``)
and the process that answers sums them all. edgeai chooses the folder itself: a
gunicorn worker uses ``$EDGEAI_DATA_DIR/metrics/gunicorn-<master pid>-<its start
time>``, shared by every worker of that master, made when the first one starts,
and folders of masters that no longer run are deleted then. Counters and
histograms of a worker that died stay counted (they must never go backwards);
gauges of dead processes are dropped at every scrape. An operator's own
``PROMETHEUS_MULTIPROC_DIR`` is used as it is (and must be emptied by them between
runs, as prometheus_client says). A process outside gunicorn (``edgeai worker``,
tests, ``flask run``) keeps its values in memory: it is the only process there is.

**Who may scrape** (``EDGEAI_METRICS``): ``local`` (the default) answers loopback
and ``EDGEAI_TRUSTED_PROXIES`` only, ``public`` everyone, ``off`` nobody (404).
The figures hold no client data, but queue depths and failure counts are an
operator's business.
"""
from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeai.pruning import FRAMEWORKS

if TYPE_CHECKING:
    from flask import Flask

    from edgeai.config import Settings
    from edgeai.db import Database
    from edgeai.sandbox import Sandbox

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
# How often each process writes its zygotes' state for the gauges.
ZYGOTE_SAMPLE_SECONDS = 2.0
# The pipeline's steps (report.timings keys) that get a label; a report is the
# child's word, so anything else is not a label value.
STEPS = ("load", "evaluate", "analyse", "rewrite", "verify", "finetune", "save", "export",
         "measure")
JOB_BUCKETS = (0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
START_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# What the sandbox says when it stops a job, and the reason label each gets; the
# first match wins. Anything else a failed job says is the job's own failure
# (a model the engine refuses), not the sandbox's.
SANDBOX_REASONS = (
    # The job's memory limit (RLIMIT_DATA) refused an allocation: torch says so.
    ("memory", re.compile(r"memory limit|ran out of memory|can't allocate memory")),
    ("disk", re.compile(r"filled its \d+ MB disk")),
    ("timeout", re.compile(r"took longer than the \d+ s limit")),
    ("protocol", re.compile(r"broke the sandbox's protocol")),
    ("refused_code", re.compile(r"runs only inside the full sandbox")),
    ("no_seat", re.compile(r"^The server is busy")),
    ("report", re.compile(r"report was refused")),
    ("no_model", re.compile(r"did not produce its model file")),
    ("cpu_time", re.compile(r"CPU time limit")),
    ("file_size", re.compile(r"file size limit")),
    ("start", re.compile(r"could not start|did not start")),
    ("crash", re.compile(r"the pruning process crashed")),
)


def sandbox_failure_reason(message: str) -> str | None:
    """The reason label of a job the sandbox stopped (``memory``, ``disk``,
    ``timeout``, ``protocol``, ``refused_code``, ``no_seat``, ``report``, ``no_model``,
    ``cpu_time``, ``file_size``, ``start``, ``crash``), from its failure message; None
    when the job failed on its own (the engine refused the model, the client
    cancelled it, the server stopped)."""
    for reason, pattern in SANDBOX_REASONS:
        if pattern.search(message or ""):
            return reason
    return None


# -- the folder shared by a gunicorn master's workers ---------------------------------
def _start_ticks(pid: int) -> str | None:
    """A process's start time (clock ticks after boot), None when it does not exist:
    with the pid, it names one process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return None


def _under_gunicorn() -> bool:
    """Whether this process is a gunicorn worker (gunicorn's master sets SERVER_SOFTWARE)."""
    return os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/")


def multiprocess_dir(data_dir: Path) -> Path | None:
    """The folder this process writes its metrics to: the operator's
    ``PROMETHEUS_MULTIPROC_DIR``, one per gunicorn master under ``data_dir/metrics``
    (made now, and the folders of masters that have stopped deleted), or None outside
    gunicorn (values stay in memory)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    if not _under_gunicorn():
        return None
    master = os.getppid()
    root = Path(data_dir).resolve() / "metrics"
    folder = root / f"gunicorn-{master}-{_start_ticks(master)}"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for old in root.glob("gunicorn-*-*"):
        _, pid, ticks = old.name.split("-", 2)
        if old != folder and (not pid.isdigit() or _start_ticks(int(pid)) != ticks):
            shutil.rmtree(old, ignore_errors=True)  # another worker may be at it too
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the metrics ----------------------------------------------------------------------
class _Metrics:
    """The metric objects of this process (made once, after the folder is chosen)."""

    def __init__(self, folder: Path | None):
        if folder is not None:
            os.environ[ENV] = str(folder)  # read by prometheus_client at its import
        from prometheus_client import Counter, Gauge, Histogram

        self.folder = folder
        # In multiprocess mode the values live in files and a scrape reads those;
        # otherwise the objects are registered in each scrape's registry.
        self.jobs = Counter(
            "edgeai_jobs_total", "Job runs this service ended, by how they ended: done, "
            "failed, or released (handed back to the queue when the server stopped)",
            ["framework", "state"], registry=None)
        self.running = Gauge(
            "edgeai_jobs_running", "Jobs running now in the processes this target covers",
            ["framework"], registry=None, multiprocess_mode="livesum")
        self.duration = Histogram(
            "edgeai_job_duration_seconds", "Time from a job's claim to its end (done or "
            "failed)", ["framework", "state"], buckets=JOB_BUCKETS, registry=None)
        self.steps = Histogram(
            "edgeai_job_step_seconds", "Time of each pipeline step of done jobs (the "
            "report's timings)", ["framework", "step"], buckets=STEP_BUCKETS, registry=None)
        self.child_start = Histogram(
            "edgeai_child_start_seconds", "Time from handing a job to the sandbox until its "
            "confined child was ready (forked=true: a zygote forked it; false: a fresh "
            "interpreter)", ["framework", "forked"], buckets=START_BUCKETS, registry=None)
        self.sandbox_failures = Counter(
            "edgeai_sandbox_failures_total", "Jobs the sandbox stopped, by reason",
            ["reason"], registry=None)
        self.zygotes_ready = Gauge(
            "edgeai_zygotes_ready", "Zygotes (fork servers) ready to fork a job's child",
            ["framework"], registry=None, multiprocess_mode="livesum")
        self.zygote_memory = Gauge(
            "edgeai_zygote_resident_bytes", "Resident memory of the zygotes",
            ["framework"], registry=None, multiprocess_mode="livesum")
        self.requests = Counter(
            "edgeai_http_requests_total", "HTTP requests answered, by route, method and "
            "status code", ["route", "method", "code"], registry=None)
        self.latency = Histogram(
            "edgeai_http_request_duration_seconds", "Time to answer a request (a status "
            "long-poll is route /api/status?wait; a download until its first byte)",
            ["route", "method"], buckets=HTTP_BUCKETS, registry=None)
        self.waits_refused = Counter(
            "edgeai_status_waits_refused_total", "Status long-polls answered at once "
            "because this process already held EDGEAI_STATUS_WAITS of them", registry=None)
        self._start_at_zero()

    def _start_at_zero(self) -> None:
        """Make every series whose labels are known now, at 0: a scrape shows each
        family from the start, and a rate over a first job is not lost."""
        for framework in FRAMEWORKS:
            for state in ("done", "failed", "released"):
                self.jobs.labels(framework, state)
            for state in ("done", "failed"):
                self.duration.labels(framework, state)
            for step in STEPS:
                self.steps.labels(framework, step)
            for forked in ("true", "false"):
                self.child_start.labels(framework, forked)
            self.running.labels(framework)
        for reason, _ in SANDBOX_REASONS:
            self.sandbox_failures.labels(reason)

    def collectors(self) -> list[Any]:
        """Every metric object (for a registry without multiprocess files)."""
        return [value for value in vars(self).values() if hasattr(value, "collect")]


_lock = threading.Lock()
_metrics: _Metrics | None = None


def configure(data_dir: Path) -> None:
    """Choose this process's metrics folder (see :func:`multiprocess_dir`) and make the
    metrics; only the first call in a process counts."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = _Metrics(multiprocess_dir(data_dir))


def _get() -> _Metrics:
    """The metrics, made in memory if :func:`configure` was never called."""
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = _Metrics(Path(os.environ[ENV]) if os.environ.get(ENV) else None)
    return _metrics


# -- recording ------------------------------------------------------------------------
def _framework(value: Any) -> str:
    """A framework label: one of the engines', else ``other`` (a label is never free text)."""
    return value if value in FRAMEWORKS else "other"


def job_started(framework: str) -> None:
    """A claimed job starts running in this process."""
    _get().running.labels(_framework(framework)).inc()


_CLASSIFY: Any = object()


def job_ended(framework: str, values: Mapping[str, Any], claimed_at: float,
              stopping: bool, reason: str | None = _CLASSIFY) -> None:
    """A job this process ran is over: ``values`` are what the runner writes to its row
    (``state``, ``message``, ``report``), ``claimed_at`` the ``time.monotonic()`` of its
    claim, ``stopping`` whether the server is shutting down (then a job not done is
    handed back, not failed). ``reason`` is why the sandbox stopped a failed job, in the
    server's own word (:class:`edgeai.sandbox.JobFailed`'s ``reason``; None: it failed
    on its own); when not given, it is read from the message (which a job can shape).
    Never raises: metrics must not fail a job."""
    try:
        _record_end(_get(), _framework(framework), values, claimed_at, stopping, reason)
    except Exception:  # metrics must not fail a job
        log.exception("recording metrics of a job")


def _record_end(metrics: _Metrics, framework: str, values: Mapping[str, Any],
                claimed_at: float, stopping: bool, reason: str | None = _CLASSIFY) -> None:
    metrics.running.labels(framework).dec()
    state = values.get("state")
    if stopping and state != "done":
        metrics.jobs.labels(framework, "released").inc()
        return
    state = "done" if state == "done" else "failed"
    metrics.jobs.labels(framework, state).inc()
    metrics.duration.labels(framework, state).observe(max(0.0, time.monotonic() - claimed_at))
    if state == "failed":
        if reason is _CLASSIFY:
            reason = sandbox_failure_reason(str(values.get("message") or ""))
        if reason and reason != "stopped":
            metrics.sandbox_failures.labels(reason).inc()
        return
    report = values.get("report") or {}
    for step, seconds in (report.get("timings") or {}).items():
        if step in STEPS and _seconds(seconds) is not None:
            metrics.steps.labels(framework, step).observe(seconds)
    sandbox = report.get("sandbox") or {}
    start_ms = _seconds(sandbox.get("start_ms"))
    if start_ms is not None:
        forked = "true" if sandbox.get("forked") is True else "false"
        metrics.child_start.labels(framework, forked).observe(start_ms / 1000)


def _seconds(value: Any) -> float | None:
    """``value`` if it is a finite, non-negative number (a report is the child's word)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value) and 0 <= value < 1e9:
        return float(value)
    return None


def watch_sandbox(sandbox: Sandbox, every: float = ZYGOTE_SAMPLE_SECONDS) -> threading.Thread:
    """Write the sandbox's zygotes' state to the gauges now and every ``every`` seconds
    (a daemon thread, for the life of the process)."""

    def sample_forever() -> None:
        while True:
            try:
                sample_zygotes(sandbox)
            except Exception:  # a missed sample is not fatal
                log.exception("sampling the zygotes")
            time.sleep(every)

    thread = threading.Thread(target=sample_forever, name="edgeai-metrics-zygotes",
                              daemon=True)
    thread.start()
    return thread


def sample_zygotes(sandbox: Sandbox) -> None:
    """Set the zygote gauges from ``sandbox.zygotes()`` (every framework, 0 for none)."""
    metrics = _get()
    states = sandbox.zygotes()
    for framework in FRAMEWORKS:
        state = states.get(framework) or {}
        metrics.zygotes_ready.labels(framework).set(1 if state.get("ready") else 0)
        rss = _seconds(state.get("rss_mb")) or 0.0
        metrics.zygote_memory.labels(framework).set(rss * 1024 * 1024)


def request_done(route: str, method: str, code: int, seconds: float) -> None:
    """Count one answered request and its time."""
    metrics = _get()
    metrics.requests.labels(route, method, str(code)).inc()
    metrics.latency.labels(route, method).observe(seconds)


def wait_refused() -> None:
    """A status long-poll was answered at once: this process held its cap of them."""
    _get().waits_refused.inc()


# -- scraping -------------------------------------------------------------------------
class _QueueCollector:
    """``edgeai_queue_depth``: the queued rows, read from the database at each scrape."""

    def __init__(self, database: Database):
        self.database = database

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily
        from sqlalchemy import func, select

        from edgeai.db import Transaction

        with self.database.session() as session:
            queued = session.scalar(select(func.count()).select_from(Transaction).where(
                Transaction.state == "queued")) or 0
        yield GaugeMetricFamily("edgeai_queue_depth", "Jobs queued, service-wide (read "
                                "from the database at each scrape)", value=queued)


def _drop_dead_gauges(folder: Path) -> None:
    """Forget the gauge files of processes that are gone (a gunicorn worker killed or
    replaced): their running jobs and zygotes are no more."""
    from prometheus_client import multiprocess

    for path in folder.glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(folder))


def scrape_registry(database: Database | None) -> Any:
    """A registry holding everything a scrape answers: every process's values (from
    the multiprocess folder) or this one's, and the queue read from ``database``."""
    from prometheus_client import CollectorRegistry

    metrics = _get()
    registry = CollectorRegistry(auto_describe=False)  # describing would collect twice
    if metrics.folder is not None:
        from prometheus_client import multiprocess

        _drop_dead_gauges(metrics.folder)
        multiprocess.MultiProcessCollector(registry, path=str(metrics.folder))
    else:
        for collector in metrics.collectors():
            registry.register(collector)
    if database is not None:
        registry.register(_QueueCollector(database))
    return registry


def exposition(database: Database | None, accept: str | None = None) -> tuple[bytes, str]:
    """The metrics as the scraper asked for them (``accept``: the Accept header):
    (body, content type)."""
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept or "")
    return encoder(scrape_registry(database)), content_type


class _Scrape:
    """A collector that gathers a fresh :func:`scrape_registry` at each collection."""

    def __init__(self, database: Database):
        self.database = database

    def collect(self) -> Iterator[Any]:
        yield from scrape_registry(self.database).collect()


def serve(port: int, host: str, database: Database) -> None:
    """Serve the metrics over HTTP on ``host:port`` from a thread (``edgeai worker
    --metrics-port``: a process without the API). Raises OSError if the port is taken."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(database))
    start_http_server(port, addr=host, registry=registry)
    log.info("metrics: http://%s:%d/metrics", host, port)


def may_scrape(mode: str, trusted: tuple[str, ...], remote_addr: str | None) -> bool:
    """Whether a scrape from ``remote_addr`` is answered under ``EDGEAI_METRICS=mode``:
    ``public`` everyone, ``local`` loopback and the ``trusted`` networks, ``off`` none."""
    if mode == "public":
        return True
    if mode != "local":
        return False
    try:
        address = ipaddress.ip_address(remote_addr or "")
    except ValueError:
        return False
    if address.is_loopback or (getattr(address, "ipv4_mapped", None) or address).is_loopback:
        return True
    return any(address in ipaddress.ip_network(net, strict=False) for net in trusted)


def init_app(app: Flask, settings: Settings) -> None:
    """Configure this process's metrics, time every request, and serve ``GET /metrics``
    (outside ``/api`` and the Swagger spec) as ``EDGEAI_METRICS`` allows."""
    from flask import Response, g, request

    configure(settings.data_dir)

    @app.before_request
    def _start_timer() -> None:
        g.edgeai_started = time.perf_counter()

    @app.after_request
    def _count(response: Any) -> Any:
        started = g.get("edgeai_started")
        if started is not None:
            rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
            if rule == "/api/status" and request.args.get("wait") not in (None, "", "0"):
                rule += "?wait"
            request_done(rule, request.method, response.status_code,
                         time.perf_counter() - started)
        return response

    @app.get("/metrics")
    def metrics_endpoint() -> Any:
        """Prometheus metrics of this server (EDGEAI_METRICS says who may scrape)."""
        if settings.metrics == "off":
            return Response("Not found: metrics are off (EDGEAI_METRICS=off).\n", 404,
                            mimetype="text/plain")
        if not may_scrape(settings.metrics, settings.trusted_proxies, request.remote_addr):
            return Response("Forbidden: metrics answer loopback and EDGEAI_TRUSTED_PROXIES "
                            "only (EDGEAI_METRICS=local); set EDGEAI_METRICS=public to "
                            "answer every address.\n", 403, mimetype="text/plain")
        body, content_type = exposition(app.extensions.get("edgeai.db"),
                                        request.headers.get("Accept"))
        return Response(body, 200, content_type=content_type)
