"""edgeai: a self-hosted service that prunes trained neural networks (L1-norm filter pruning).

:func:`create_app` builds the Flask application; :class:`Client` (from
:mod:`edgeai.client`) talks to a running server. Importing this package imports
neither Flask, ``requests`` nor a deep learning framework, so the sandbox child
starts fast; ``Client`` is imported on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgeai.client import Client

__version__ = "0.1.0"


def create_app(test_config: dict[str, Any] | None = None):
    """Build the app: settings, database (migrated), storage, auth, API, and job runner.

    ``test_config`` overrides settings by field name (e.g. ``{"data_dir": tmp,
    "run_jobs": False}``). Raises ``edgeai.config.ConfigError`` on a bad setting.
    """
    from edgeai.app import build_app

    return build_app(test_config)


def __getattr__(name: str) -> Any:
    if name == "Client":  # on first use: the client imports requests
        from edgeai.client import Client

        return Client
    raise AttributeError(f"module 'edgeai' has no attribute {name!r}")


__all__ = ["Client", "create_app"]
