"""edgeai: a self-hosted service that prunes trained neural networks (L1-norm filter pruning).

:func:`create_app` builds the Flask application. Importing this package imports
neither Flask nor a deep learning framework, so the sandbox child starts fast.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def create_app(test_config: dict[str, Any] | None = None):
    """Build the app: settings, database (migrated), storage, auth, API, and job runner.

    ``test_config`` overrides settings by field name (e.g. ``{"data_dir": tmp,
    "run_jobs": False}``). Raises ``edgeai.config.ConfigError`` on a bad setting.
    """
    from edgeai.app import build_app

    return build_app(test_config)
