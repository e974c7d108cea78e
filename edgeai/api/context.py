"""Per-request access to the app's services (settings, database, storage, auth, runner)."""
from __future__ import annotations

from flask import current_app, request

from edgeai.auth import Authenticator
from edgeai.config import Settings
from edgeai.db import Database
from edgeai.storage import Storage


def settings() -> Settings:
    """The app's settings."""
    return current_app.extensions["edgeai.settings"]


def database() -> Database:
    """The app's database."""
    return current_app.extensions["edgeai.db"]


def storage() -> Storage:
    """The app's file storage."""
    return current_app.extensions["edgeai.storage"]


def current_client() -> str:
    """The client id of this request; raises ``Unauthorized``."""
    authenticator: Authenticator = current_app.extensions["edgeai.auth"]
    return authenticator.client_for(request.headers, request.remote_addr)


def wake_runner() -> None:
    """Tell this process's job runner that a row was queued."""
    runner = current_app.extensions.get("edgeai.runner")
    if runner is not None:
        runner.wake()
