"""Signed, expiring report links: a token names one transaction and the client that owns it.

A token is ``URLSafeTimedSerializer.dumps([txid, client_id])`` (itsdangerous, which ships
with Flask): anyone holding the link may read that one report until it expires
(``EDGEAI_REPORT_LINK_HOURS``), and nothing else. It never carries a client secret, and
the client id in it is signed, not secret. A token that is tampered with, expired,
signed with another secret, or names a transaction its client does not own opens
nothing; the page answers all of them with the same 404.

The signing secret is ``EDGEAI_REPORT_SECRET`` when set. Otherwise it is made once, at
random, and kept in ``<data dir>/report-secret`` (mode 0600), created atomically so
that every gunicorn worker of a host reads the same one; a job's sandbox never sees the
data dir. Hosts that do not share a data dir (the S3 scale-out) must be given the same
``EDGEAI_REPORT_SECRET``, or a link opens only on the host that made it: the app warns
at start-up when that is the case.
"""
from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

from itsdangerous import BadData, URLSafeTimedSerializer

from edgeai.config import Settings

SECRET_FILE = "report-secret"
SALT = "edgeai.report-page"


def read_or_create_secret(data_dir: Path) -> str:
    """The secret in ``data_dir/report-secret``, made (0600) if there is none yet.

    Two processes that race here end with the same secret: each writes a private temp
    file and links it into place, and a link never replaces a file that exists.
    Raises OSError when the data dir cannot be written or read.
    """
    path = Path(data_dir) / SECRET_FILE
    if not path.exists():
        temp = path.with_name(f".{SECRET_FILE}.{secrets.token_hex(8)}")
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
            os.link(temp, path)
        except FileExistsError:
            pass  # another process made it first; use theirs
        finally:
            temp.unlink(missing_ok=True)
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise OSError(f"{path} holds no usable secret; delete it to make a new one")
    return secret


class ReportLinks:
    """Makes and opens report tokens with the app's secret and lifetime."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.max_age = max(1, round(settings.report_link_hours * 3600))
        self._serializer: URLSafeTimedSerializer | None = None

    @property
    def serializer(self) -> URLSafeTimedSerializer:
        """The serializer, its secret read (or made) on first use."""
        if self._serializer is None:
            secret = self.settings.report_secret or read_or_create_secret(
                self.settings.data_dir)
            self._serializer = URLSafeTimedSerializer(secret, salt=SALT)
        return self._serializer

    def token_for(self, txid: str, client_id: str) -> str:
        """A token that opens ``txid``'s report for as long as the lifetime allows."""
        return self.serializer.dumps([txid, client_id])

    def open(self, token: str) -> tuple[str, str] | None:
        """``(txid, client_id)`` from a valid, unexpired token; None for anything else."""
        try:
            payload = self.serializer.loads(token, max_age=self.max_age)
        except BadData:
            return None
        if not (isinstance(payload, list) and len(payload) == 2
                and all(isinstance(part, str) for part in payload)):
            return None
        txid, client_id = payload
        try:
            if str(uuid.UUID(txid)) != txid:
                return None
        except ValueError:
            return None
        return txid, client_id
