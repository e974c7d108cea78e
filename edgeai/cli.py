"""The ``edgeai`` command: API keys and database maintenance.

    edgeai keys create NAME     print {"client_id": ..., "client_secret": ...} (only time shown)
    edgeai keys list            list keys (never secrets)
    edgeai keys revoke ID       revoke a key at once
    edgeai db upgrade           migrate the database to the newest schema
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgeai.config import ConfigError, load_settings


def _database():
    from edgeai.db import Database, upgrade_database

    settings = load_settings()
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.database_url, Path(settings.data_dir))
    return Database(settings.database_url)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = argparse.ArgumentParser(prog="edgeai", description="edgeai administration")
    groups = parser.add_subparsers(dest="group", required=True)
    keys = groups.add_parser("keys", help="manage API keys").add_subparsers(dest="action",
                                                                           required=True)
    create = keys.add_parser("create", help="create a key and print it as JSON")
    create.add_argument("name", help="who the key is for")
    keys.add_parser("list", help="list keys")
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("client_id")
    dbgroup = groups.add_parser("db", help="database").add_subparsers(dest="action", required=True)
    dbgroup.add_parser("upgrade", help="apply migrations")
    args = parser.parse_args(argv)

    try:
        database = _database()
    except ConfigError as error:
        print(f"edgeai: {error}", file=sys.stderr)
        return 2
    from edgeai import auth

    if args.group == "db":
        print("database is at the newest schema")
    elif args.action == "create":
        key = auth.create_key(database, args.name)
        print(json.dumps({"client_id": key.client_id, "client_secret": key.client_secret}))
    elif args.action == "list":
        print(json.dumps(auth.list_keys(database), indent=2))
    elif args.action == "revoke":
        if not auth.revoke_key(database, args.client_id):
            print(f"edgeai: no key {args.client_id!r}", file=sys.stderr)
            return 1
        print(f"revoked {args.client_id}")
    database.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
