"""The domain's exception family, and the one mapping to the guide's JSON shapes.

Code raises an error with what went wrong (and, for a transaction, its status
code); it does not build response bodies. :func:`error_body` turns any of these
errors into the body the guide prescribes for the kind of call that failed:
submit calls answer ``{"txid": null, "message": ...}``; status and download
answer ``{"status": ..., "message": ...}``.
"""
from __future__ import annotations

from typing import Any

SUBMIT, TRANSACTION = "submit", "transaction"


class EdgeAIError(Exception):
    """Base of every error the API turns into a JSON response.

    ``status`` is the guide's status code of the transaction concerned (``"-1"``
    when there is none); ``headers`` go on the response (``Retry-After``).
    """

    code = 500

    def __init__(self, message: str, *, status: str = "-1",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = headers or {}


def error_body(error: EdgeAIError, kind: str) -> dict[str, Any]:
    """The guide's body for ``error`` raised by a call of ``kind`` (submit/transaction)."""
    if kind == SUBMIT:
        return {"txid": None, "message": error.message}
    return {"status": error.status, "message": error.message}


class BadRequest(EdgeAIError):
    """A parameter or file is missing or not allowed (400)."""

    code = 400


class Unauthorized(EdgeAIError):
    """No valid client credentials (401)."""

    code = 401


class NotFound(EdgeAIError):
    """No transaction with that txid for this client (404)."""

    code = 404


class Conflict(EdgeAIError):
    """The transaction exists but is not downloadable yet or failed (409)."""

    code = 409


class Gone(EdgeAIError):
    """The artifact existed but expired (410)."""

    code = 410


class PayloadTooLarge(EdgeAIError):
    """The upload is over ``EDGEAI_MAX_UPLOAD_MB`` (413)."""

    code = 413


class TooManyJobs(EdgeAIError):
    """The client already has its quota of queued and running jobs (429)."""

    code = 429


class InsufficientStorage(EdgeAIError):
    """The data dir's file system is below its reserve (``EDGEAI_MIN_FREE_DISK_MB``): an
    upload is refused before it is stored (507)."""

    code = 507
