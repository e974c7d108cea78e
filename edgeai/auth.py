"""API keys and request authentication.

Clients send ``X-IBM-Client-Id`` and ``X-IBM-Client-Secret`` as the guide shows.
Only a salted scrypt hash of a secret is stored. ``EDGEAI_AUTH`` chooses the mode:
``on`` checks the pair, ``gateway`` trusts the client id forwarded by the API
gateway (only from ``EDGEAI_TRUSTED_PROXIES``), ``off`` serves everyone as one
anonymous client (local trials).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from dataclasses import dataclass

from edgeai.db import ApiKey, Database
from edgeai.errors import Unauthorized

CLIENT_ID_HEADER = "X-IBM-Client-Id"
CLIENT_SECRET_HEADER = "X-IBM-Client-Secret"
ANONYMOUS = "anonymous"

# scrypt at n=2**14 costs ~50 ms: slow for guessing, tolerable once per minute.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_CACHE_SECONDS = 60.0


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    """Return ``scrypt$<salt>$<hash>`` for ``secret`` (base64 parts)."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_secret(secret: str, stored: str) -> bool:
    """Check ``secret`` against a :func:`hash_secret` value in constant time."""
    try:
        scheme, salt_b64, digest_b64 = stored.split("$")
        salt, digest = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)
    return hmac.compare_digest(candidate, digest)


_DECOY_HASH = hash_secret("decoy", b"\0" * 16)


@dataclass(frozen=True)
class IssuedKey:
    """A new key pair; the secret exists only here and is never stored."""

    client_id: str
    client_secret: str
    name: str


def create_key(database: Database, name: str) -> IssuedKey:
    """Create and store a key named ``name``; return it with its secret."""
    client_id = "edgeai-" + secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    with database.session() as session:
        session.add(ApiKey(client_id=client_id, name=name, secret_hash=hash_secret(secret),
                           created_at=time.time()))
    return IssuedKey(client_id, secret, name)


def list_keys(database: Database) -> list[dict]:
    """Every key's id, name and times (never a secret or a hash)."""
    with database.session() as session:
        rows = session.query(ApiKey).order_by(ApiKey.created_at).all()
        return [{"client_id": r.client_id, "name": r.name, "created_at": r.created_at,
                 "revoked_at": r.revoked_at} for r in rows]


def revoke_key(database: Database, client_id: str) -> bool:
    """Revoke ``client_id``; return False if no such key exists."""
    with database.session() as session:
        row = session.get(ApiKey, client_id)
        if row is None:
            return False
        if row.revoked_at is None:
            row.revoked_at = time.time()
        return True


class Authenticator:
    """Turns a request's headers into the client id that owns its transactions."""

    def __init__(self, database: Database, mode: str, trusted_proxies: tuple[str, ...] = (),
                 gateway_header: str = CLIENT_ID_HEADER):
        self.database = database
        self.mode = mode
        self.gateway_header = gateway_header
        self.trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
        # client_id -> (sha256 of a secret that passed scrypt, expiry): spares the
        # slow hash on every status poll; revocation is still read from the row.
        self._verified: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def client_for(self, headers, remote_addr: str | None) -> str:
        """Return the client id for a request; raises :class:`Unauthorized`."""
        if self.mode == "off":
            return ANONYMOUS
        if self.mode == "gateway":
            return self._from_gateway(headers, remote_addr)
        return self._from_keys(headers.get(CLIENT_ID_HEADER, ""),
                               headers.get(CLIENT_SECRET_HEADER, ""))

    def _from_gateway(self, headers, remote_addr: str | None) -> str:
        try:
            address = ipaddress.ip_address(remote_addr or "")
        except ValueError:
            address = None
        if address is None or not any(address in net for net in self.trusted):
            raise Unauthorized("Requests must come through the API gateway "
                               "(EDGEAI_AUTH=gateway and this address is not trusted).")
        client = headers.get(self.gateway_header, "").strip()
        if not client:
            raise Unauthorized(f"The gateway did not forward {self.gateway_header}.")
        return client[:128]

    def _from_keys(self, client_id: str, secret: str) -> str:
        if not client_id or not secret:
            raise Unauthorized(f"Send your API key in the {CLIENT_ID_HEADER} and "
                               f"{CLIENT_SECRET_HEADER} headers.")
        refused = Unauthorized("Invalid client id or secret.")
        with self.database.session() as session:
            row = session.get(ApiKey, client_id[:64])
            stored = None if row is None or row.revoked_at is not None else row.secret_hash
        fingerprint = hashlib.sha256(secret.encode()).digest()
        if stored is None:
            # Spend the same time as a real check so timing does not reveal ids.
            verify_secret(secret, _DECOY_HASH)
            raise refused
        now = time.monotonic()
        with self._lock:
            cached = self._verified.get(client_id)
        if cached and cached[1] > now and hmac.compare_digest(cached[0], fingerprint):
            return client_id
        if not verify_secret(secret, stored):
            raise refused
        with self._lock:
            self._verified[client_id] = (fingerprint, now + _CACHE_SECONDS)
        return client_id
