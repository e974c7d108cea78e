"""The domain's exception family; the API maps each one to a response in one place.

Each error carries the JSON body the guide prescribes for its call: refused
submissions answer ``{"txid": null, "message": ...}``; status and download
errors answer ``{"status": ..., "message": ...}``.
"""
from __future__ import annotations

from typing import Any


class EdgeAIError(Exception):
    """Base of every error the API turns into a JSON response."""

    code = 500

    def __init__(self, message: str, *, body: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.body = body if body is not None else {"message": message}
        self.headers = headers or {}


def submit_error(cls: type["EdgeAIError"], message: str, **kwargs: Any) -> "EdgeAIError":
    """Build ``cls`` with the guide's refused-upload body ``{"txid": null, ...}``."""
    return cls(message, body={"txid": None, "message": message}, **kwargs)


def status_error(cls: type["EdgeAIError"], status: str, message: str) -> "EdgeAIError":
    """Build ``cls`` with the guide's status body ``{"status": ..., "message": ...}``."""
    return cls(message, body={"status": status, "message": message})


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
