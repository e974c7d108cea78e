"""Where transactions' files live, behind one small interface (:class:`FileStore`).

``EDGEAI_STORAGE_URL`` picks the store: empty (the default) is a folder in the
data dir (:class:`LocalStorage`, one host); ``s3://bucket/prefix`` is an
S3-compatible bucket that the API and every worker host share
(:class:`edgeai.storage.s3.S3Storage`; endpoint, keys and region from the usual
``AWS_*`` variables). ``Storage`` is the folder store's older name.
"""
from __future__ import annotations

from pathlib import Path

from edgeai.config import Settings
from edgeai.storage.base import (
    Download,
    FileStore,
    StorageError,
    artifact_stem,
    check_filename,
    check_txid,
)
from edgeai.storage.local import LocalStorage

Storage = LocalStorage


def open_storage(settings: Settings) -> FileStore:
    """The store ``settings`` name; local scratch (uploads being received, jobs'
    work folders) is always in the data dir. Raises StorageError if boto3 is
    missing for an ``s3://`` store."""
    local = LocalStorage(Path(settings.data_dir))
    if not settings.storage_url:
        return local
    from edgeai.storage.s3 import S3Storage

    return S3Storage.from_settings(settings, local)


__all__ = [
    "Download",
    "FileStore",
    "LocalStorage",
    "Storage",
    "StorageError",
    "artifact_stem",
    "check_filename",
    "check_txid",
    "open_storage",
]
