"""The ``edgeai`` command: pruning from a terminal, the two server roles, API keys and
database maintenance.

    edgeai prune MODEL -p 0.4 [-o OUT] [--server URL] ...
                                prune a model on a server, or here without one
                                (see edgeai prune --help and edgeai.prune_command)

    edgeai serve [--host H] [--port P] [--workers N] [--api-only]
                                the API on gunicorn; jobs run in its processes unless
                                --api-only (or EDGEAI_RUN_JOBS=off)
    edgeai worker [--concurrency N] [--grace S] [--metrics-port P]
                                claim and run jobs, no API; for hosts that share the
                                database (PostgreSQL) and the store (S3) with the API
    edgeai workers              list the workers alive now (JSON)
    edgeai keys create NAME     print {"client_id": ..., "client_secret": ...} (only time shown)
    edgeai keys list            list keys (never secrets)
    edgeai keys revoke ID       revoke a key at once
    edgeai db upgrade           migrate the database to the newest schema
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from edgeai.config import ConfigError, Settings, load_settings
from edgeai.prune_command import add_prune_parser, run_prune


def _database(settings: Settings):
    from edgeai.db import Database, upgrade_database

    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.database_url, Path(settings.data_dir))
    return Database(settings.database_url)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeai", description="edgeai administration")
    groups = parser.add_subparsers(dest="group", required=True)
    add_prune_parser(groups)
    serve = groups.add_parser("serve", help="serve the API (and, unless --api-only, run jobs)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=5000)
    serve.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    serve.add_argument("--api-only", action="store_true",
                       help="run no jobs here; edgeai worker processes run them")
    worker = groups.add_parser("worker", help="claim and run jobs (no HTTP)")
    worker.add_argument("--concurrency", type=int, default=None,
                        help="jobs run at once (default EDGEAI_WORKER_THREADS)")
    worker.add_argument("--grace", type=float, default=None,
                        help="seconds running jobs get to finish on SIGTERM before they are "
                             "handed back (default EDGEAI_WORKER_GRACE_SECONDS)")
    worker.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port (GET /metrics)")
    worker.add_argument("--metrics-host", default="127.0.0.1",
                        help="address the metrics listen on (default 127.0.0.1)")
    groups.add_parser("workers", help="list the workers alive now")
    keys = groups.add_parser("keys", help="manage API keys").add_subparsers(dest="action",
                                                                           required=True)
    create = keys.add_parser("create", help="create a key and print it as JSON")
    create.add_argument("name", help="who the key is for")
    keys.add_parser("list", help="list keys")
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("client_id")
    dbgroup = groups.add_parser("db", help="database").add_subparsers(dest="action", required=True)
    dbgroup.add_parser("upgrade", help="apply migrations")
    return parser


def serve(args: argparse.Namespace) -> int:
    """Replace this process with gunicorn serving the app (the database is migrated)."""
    env = dict(os.environ)
    if args.api_only:
        env["EDGEAI_RUN_JOBS"] = "off"
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:edgeai.gunicorn_config",
            "--bind", f"{args.host}:{args.port}",
            "--workers", str(args.workers), "--worker-class", "gthread", "--threads", "4",
            "--timeout", "300", "--graceful-timeout", "30", "--no-control-socket",
            "edgeai:create_app()"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
    return 0  # not reached


def worker(settings: Settings, database, args: argparse.Namespace) -> int:
    """Run jobs until stopped (see :func:`edgeai.runner.run_worker`)."""
    from edgeai.runner import run_worker
    from edgeai.storage import StorageError, open_storage

    if args.concurrency is not None:
        if args.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        settings = settings.replace(worker_threads=args.concurrency)
    grace = settings.worker_grace_seconds if args.grace is None else max(0.0, args.grace)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    storage = open_storage(settings)
    try:
        storage.check()
    except StorageError as error:
        print(f"edgeai: {error}", file=sys.stderr)
        return 2
    from edgeai import metrics

    metrics.configure(settings.data_dir)
    if args.metrics_port is not None:
        try:
            metrics.serve(args.metrics_port, args.metrics_host, database)
        except OSError as error:
            print(f"edgeai: metrics on {args.metrics_host}:{args.metrics_port}: "
                  f"{error.strerror}", file=sys.stderr)
            return 2
    return run_worker(settings, database, storage, grace)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.group == "prune":  # a client: no database, no server settings
        return run_prune(args)
    try:
        settings = load_settings()
        database = _database(settings)
    except ConfigError as error:
        print(f"edgeai: {error}", file=sys.stderr)
        return 2
    from edgeai import auth, queue

    code = 0
    try:
        if args.group == "serve":
            database.dispose()
            return serve(args)
        if args.group == "worker":
            code = worker(settings, database, args)
        elif args.group == "workers":
            print(json.dumps(queue.live_workers(database), indent=2))
        elif args.group == "db":
            print("database is at the newest schema")
        elif args.action == "create":
            key = auth.create_key(database, args.name)
            print(json.dumps({"client_id": key.client_id, "client_secret": key.client_secret}))
        elif args.action == "list":
            print(json.dumps(auth.list_keys(database), indent=2))
        elif args.action == "revoke":
            if not auth.revoke_key(database, args.client_id):
                print(f"edgeai: no key {args.client_id!r}", file=sys.stderr)
                code = 1
            else:
                print(f"revoked {args.client_id}")
    except ConfigError as error:
        print(f"edgeai: {error}", file=sys.stderr)
        code = 2
    finally:
        database.dispose()
    return code


if __name__ == "__main__":
    sys.exit(main())
